"""PSNR and SSIM of two images, computed as the reference suite computes them.

The reference suite turns each image into a float tensor in [0, 1] of shape (1, 3, H, W) and calls
``piq.psnr(x, y)`` and ``piq.ssim(x, y)`` with their defaults (``data_range=1``); we do the same, through
the same library, so the numbers are directly comparable with its thresholds (PSNR >= 35 dB,
SSIM >= 0.98). Images are read with ``guides.imaging.load_image`` (RGB; alpha composited on white,
which leaves the opaque reference PNGs unchanged).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from ..errors import UsageError
from ..imaging import load_image
from .settings import PASS_PSNR, PASS_SSIM


@dataclasses.dataclass(frozen=True)
class Metrics:
    """PSNR (dB; piq gives 80 dB for identical images) and SSIM of two images, plus pixel counts."""

    psnr: float
    ssim: float
    differing_pixels: int
    """Pixels whose RGB values differ at all."""
    max_abs_difference: int
    """Largest per-channel difference (0..255)."""

    def passes(self, min_psnr: float = PASS_PSNR, min_ssim: float = PASS_SSIM) -> bool:
        """Whether both metrics reach the thresholds (the reference suite's by default)."""
        return self.psnr >= min_psnr and self.ssim >= min_ssim

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _to_tensor(image: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0) / 255.0


def compare_arrays(first: np.ndarray, second: np.ndarray) -> Metrics:
    """Metrics of two RGB uint8 (H, W, 3) arrays of the same size."""
    if first.shape != second.shape:
        raise UsageError(
            f"images differ in size: {first.shape[1]}x{first.shape[0]} and {second.shape[1]}x{second.shape[0]}"
        )
    if first.ndim != 3 or first.shape[2] != 3:
        raise UsageError(f"expected RGB (H, W, 3) arrays, got shape {first.shape}")
    import piq
    import torch

    with torch.no_grad():
        x, y = _to_tensor(first), _to_tensor(second)
        psnr = float(piq.psnr(x, y, data_range=1.0))
        ssim = float(piq.ssim(x, y, data_range=1.0))
    difference = np.abs(first.astype(np.int16) - second.astype(np.int16))
    return Metrics(
        psnr=psnr,
        ssim=ssim,
        differing_pixels=int(np.count_nonzero(difference.any(axis=2))),
        max_abs_difference=int(difference.max()),
    )


def compare_files(first: str | os.PathLike, second: str | os.PathLike) -> Metrics:
    """Metrics of two image files (read as RGB uint8)."""
    a, b = load_image(first), load_image(second)
    if a.shape != b.shape:
        raise UsageError(
            f"{first} is {a.shape[1]}x{a.shape[0]} but {second} is {b.shape[1]}x{b.shape[0]}: "
            "PSNR and SSIM need images of the same size"
        )
    return compare_arrays(a, b)


def difference_image(first: np.ndarray, second: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """``|first - second| * gain`` per channel, clipped to 0..255: where two images differ, brightly."""
    difference = np.abs(first.astype(np.float32) - second.astype(np.float32)) * gain
    return difference.clip(0, 255).astype(np.uint8)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN/inf: such values are written as null."""
    return value if math.isfinite(value) else None
