"""Helpers of the engine tests: tiny photos and fake stages (not registered annotators)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from guides.annotators.base import Annotator
from guides.errors import InputError


def kill_mid_run(process: subprocess.Popen, out: Path, total: int, shape: tuple[int, ...]) -> list[str]:
    """SIGKILL ``process`` once ``out`` holds 10 entries; the names of the guides it left, each checked to be a
    complete image of ``shape`` (the kill must land mid-run: some, not all ``total``, written)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(os.listdir(out)) >= 10:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in out.glob("*.png"))
    assert 0 < len(done_before) < total, "the kill must land mid-batch"
    for name in done_before:  # every visible guide is complete
        with Image.open(out / name) as image:
            assert np.asarray(image).shape == shape
    return done_before


def save_photo(path: Path, seed: int, make_photo, size=(48, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo(seed, *size)).save(path)


class RecordingStage:
    """Halves the first channel; refuses (bad input) images whose first pixel is 13; records batch sizes."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []

    def batch_key(self, image):
        return image.shape

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 13 for image in images):
            raise InputError(None, "unlucky pixel")
        return [(image[:, :, 0] // 2) for image in images]


def red_squares(folder: Path, values) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, value in enumerate(values):
        path = folder / f"{index:02d}.png"
        Image.new("RGB", (8, 8), (value, 0, 0)).save(path)
        paths.append(path)
    return paths


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.cuda.OutOfMemoryError`` (recognised by its class name)."""


class StagedHalves(Annotator):
    """A staged annotator (``prepare``/``predict``/``finish``): half of the red channel. It records the
    thread of every call and each ``predict`` batch's keys; a red value of 13 is bad input in ``prepare``,
    77 in ``predict``, 99 in ``finish``; ``delay`` seconds per ``predict`` call slow it down."""

    name = "halves"
    summary = "Half of the red channel, in three stages (a test fake)."

    def __init__(self, batch_size: int = 2, delay: float = 0.0) -> None:
        super().__init__()
        self._batch_size = batch_size
        self.delay = delay
        self.threads: dict[str, list[int]] = {"prepare": [], "predict": [], "finish": []}
        self.thread_names: dict[str, list[str]] = {"prepare": [], "predict": [], "finish": []}
        self.batches: list[list[tuple]] = []

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def _record(self, stage: str) -> None:
        self.threads[stage].append(threading.get_ident())
        self.thread_names[stage].append(threading.current_thread().name)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        self._record("prepare")
        if image[0, 0, 0] == 13:
            raise InputError(None, "unlucky pixel")
        return image[:, :, 0].astype(np.int16)

    def predict(self, items: list) -> list:
        self._record("predict")
        self.batches.append([self.item_key(item) for item in items])
        if self.delay:
            time.sleep(self.delay)
        if any(item[0, 0] == 77 for item in items):
            raise InputError(None, "predict refused")
        return [item // 2 for item in items]

    def finish(self, item: np.ndarray, output: np.ndarray) -> np.ndarray:
        self._record("finish")
        if item[0, 0] == 99:
            raise InputError(None, "finish refused")
        return output.astype(np.uint8)


class Unstaged:
    """A plain stage (not an ``Annotator``) calling a staged annotator's ``annotate_batch``: the unstaged
    path through the engine, for comparison."""

    def __init__(self, annotator: Annotator) -> None:
        self.annotator = annotator
        self.batch_size = annotator.batch_size

    def batch_key(self, image):
        return self.annotator.batch_key(image)

    def annotate_batch(self, images):
        return self.annotator.annotate_batch(images)
