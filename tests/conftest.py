"""Shared fixtures. ``refs`` is the reference data folder named by GUIDES_REFS (skip when it is not set, fail
when it names a folder without the reference images)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# No test may reach a model hub: without this, huggingface_hub retries an unreachable hub for ~20 s.
# Tests of the download path serve a loopback hub and switch this off for themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def refs() -> Path:
    """The folder of reference inputs and guides (``../shared/refs`` in CI)."""
    value = os.environ.get("GUIDES_REFS")
    if not value:
        pytest.skip("GUIDES_REFS is not set: reference images unavailable (CI sets it to ../shared/refs)")
    path = Path(value)
    if not (path / "cutecat_init.png").is_file():  # set but wrong: a broken setup must not pass as skips
        pytest.fail(f"GUIDES_REFS={value} does not hold cutecat_init.png", pytrace=False)
    return path


def synthetic_photo(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """An RGB uint8 image with smooth gradients, shapes and noise: Canny finds real edges in it."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack(
        [
            127 + 100 * np.sin(xx / (7 + seed % 5) + seed),
            127 + 100 * np.cos(yy / (9 + seed % 3)),
            (xx + yy) * 255 / (height + width),
        ],
        axis=2,
    )
    for _ in range(4):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, center, int(rng.integers(5, 30)), color, -1)
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """A folder tree of small PNG/JPEG photos, with spaces and non-ASCII names."""
    from PIL import Image

    root = tmp_path / "photos in"
    (root / "sub dir" / "déjà").mkdir(parents=True)
    names = ["a.png", "b.jpg", "sub dir/c.png", "sub dir/déjà/ünï cödé.png", "sub dir/e.JPEG"]
    for index, name in enumerate(names):
        Image.fromarray(synthetic_photo(index)).save(root / name, quality=90)
    return root


@pytest.fixture(scope="session")
def make_photo():
    """``make_photo(seed, height=96, width=128)`` -> a synthetic RGB uint8 photo (see ``synthetic_photo``)."""
    return synthetic_photo


# ------------------------------------------------------------------------- reference implementations


def _original_colorize(depth: np.ndarray) -> np.ndarray:
    """zoedepth.utils.misc.colorize with its defaults (gray_r, 2nd/85th percentiles), via matplotlib."""
    import matplotlib

    value = depth.copy()
    invalid = value == -99
    vmin = np.percentile(value[~invalid], 2)
    vmax = np.percentile(value[~invalid], 85)
    value = (value - vmin) / (vmax - vmin) if vmin != vmax else value * 0.0
    value[invalid] = np.nan
    image = matplotlib.colormaps["gray_r"](value, bytes=True)
    image[invalid] = (128, 128, 128, 255)
    return image


@pytest.fixture(scope="session")
def original_colorize():
    """``original_colorize(depth)``: the original ZoeDepth colouring, computed with matplotlib (a dependency
    of the models extra: missing, the tests fail rather than skip)."""
    import matplotlib  # noqa: F401

    return _original_colorize


def _calibrated_normalbae(calibration: list) -> object:
    """controlnet_aux's NNET (ControlNet client configuration), random weights (seed 0), its BatchNorm
    statistics those of the normalised input batches ``calibration`` (cumulative over all of them): a
    default-initialised NNET gives nearly constant normals, which would make any parity bound pass."""
    import contextlib
    import io
    import types

    import torch
    from controlnet_aux.normalbae.nets.NNET import NNET as ReferenceNNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                 sampling_ratio=0.4, importance_ratio=0.7)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints while building
        model = ReferenceNNET(args)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over every calibration batch
    model.train()
    with torch.no_grad():
        for batch in calibration:
            model(batch)
    return model.eval()


@pytest.fixture(scope="session")
def calibrated_normalbae():
    """``calibrated_normalbae([batch, ...])``: the reference NormalBae network for parity tests
    (controlnet_aux is in the test extra: missing, the tests fail rather than skip)."""
    import controlnet_aux  # noqa: F401

    return _calibrated_normalbae

