"""Fixtures for the export and Ray tests: a photo tree with bad files, a second (fake) annotator, and
one local Ray runtime (2 CPUs) for the whole session.

The fake annotator is not registered in the real registry: tests hand it to the engines directly.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

UNLUCKY = 13  # the fake annotator fails on images whose top-left red value is this


class InvertGreen:
    """A second annotator: 255 - green channel, batches of 2, fails on 'unlucky' images."""

    batch_size = 2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def batch_key(self, image: np.ndarray):
        return image.shape

    def annotate(self, image: np.ndarray) -> np.ndarray:
        return self.annotate_batch([image])[0]

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(int(image[0, 0, 0]) == UNLUCKY for image in images):
            from guides.errors import InputError  # bad input: a failure line (any other error is a bug)

            raise InputError(None, "unlucky pixel")
        return [255 - image[:, :, 1] for image in images]

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def invert_class() -> type:
    """The fake annotator class (a fixture so that test modules need not import this conftest)."""
    return InvertGreen


@pytest.fixture
def photo_tree(tmp_path: Path, make_photo) -> Path:
    """Nested folders with photos (PNG, JPEG, a space and non-ASCII name), bad files, and one photo the
    fake annotator fails on."""
    root = tmp_path / "photos"
    names = ["a.png", "b.jpg", "sub/c.png", "sub/deep er/ünï d.png", "sub/e.jpeg", "z.png"]
    for index, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = make_photo(index, 40 + 8 * index, 56)
        if name == "z.png":
            photo[:24, :24] = (UNLUCKY, 0, 0)  # a flat block: still UNLUCKY at (0, 0) after resizing
        else:
            photo[0, 0, 0] = 200
        Image.fromarray(photo).save(path, quality=92)
    (root / "empty.png").write_bytes(b"")
    (root / "sub" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    (root / "sub" / "truncated.png").write_bytes((root / "a.png").read_bytes()[:120])
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (hidden temporaries included, so leftovers show)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def tree_reader():
    return read_tree


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray runtime with 2 CPUs for the session (the engines reuse a running runtime)."""
    ray = importlib.import_module("ray")  # in the test extra: a missing one fails
    importlib.import_module("ray.data")  # in the test extra: a missing one fails
    importlib.import_module("pyarrow")  # in the test extra: a missing one fails
    import logging

    # Test helpers (this module, the test modules) are not importable in Ray's workers: ship them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
        logging_level=logging.ERROR, log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
