"""Helpers of the engine tests: tiny photos and fake stages (not registered annotators)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
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


class DeviceShapedStages(Annotator):
    """A staged annotator shaped like a learned one on a GPU (issue: GPU-shaped engine): ``prepare`` and
    ``finish`` each do ``seconds`` of OpenCV work (Gaussian blurs, which release the GIL: a fixed count,
    calibrated once on this machine, so a busy CPU makes them slower, as real work; run it with
    ``cv2.setNumThreads(1)``, ``single_threaded_opencv``, so that each stage holds one core, as the issue's
    model of 40 ms per stage and its ideal of 0.33x assume), and ``predict`` waits
    ``seconds`` per image without holding the GIL, as a device call does. The guide is half of the red
    channel."""

    name = "device-shaped"
    summary = "Fixed CPU work before and after a GIL-free wait (a test fake)."

    def __init__(self, seconds: float = 0.04, size: int = 256) -> None:
        super().__init__()
        self.seconds = seconds
        sample = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
        self.blur(sample, 3)  # warm-up
        started = time.perf_counter()
        self.blur(sample, 20)
        self.blurs = max(1, round(20 * seconds / (time.perf_counter() - started)))

    @staticmethod
    def blur(image: np.ndarray, count: int) -> np.ndarray:
        import cv2

        for _ in range(count):
            out = cv2.GaussianBlur(image, (31, 31), 5)
        return out

    def prepare(self, image: np.ndarray) -> np.ndarray:
        self.blur(image, self.blurs)
        return image[:, :, 0].copy()

    def predict(self, items: list) -> list:
        time.sleep(self.seconds * len(items))
        return [item // 2 for item in items]

    def finish(self, item: np.ndarray, output: np.ndarray) -> np.ndarray:
        self.blur(np.dstack([item] * 3), self.blurs)
        return output

    def serial_seconds(self, images: list[np.ndarray]) -> float:
        """The time of the three stages one after another over ``images`` (the baseline of the pipeline)."""
        started = time.perf_counter()
        for image in images:
            item = self.prepare(image)
            self.finish(item, self.predict([item])[0])
        return time.perf_counter() - started


@contextlib.contextmanager
def single_threaded_opencv() -> Iterator[None]:
    """OpenCV's own thread pool off for the block (``cv2.setNumThreads(1)``), restored after."""
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)
