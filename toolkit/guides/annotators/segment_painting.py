"""The ControlNet SAM guide's pixels: deterministic segment colours (``segment_colors``), masks painted
largest first (``paint_segments``) and the nearest-neighbour resize that brings a guide or mask from the
working size back to the input size without blending (``resize_nearest``). numpy only."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``array`` (H, W[, C], any dtype) at (height, width) by nearest neighbour: output pixel (i, j) is
    the source pixel that contains its centre (row ``floor((i + 0.5) * H / height)``, computed in
    integers). Values are copied, never blended: a segment guide
    keeps exactly its flat colours (segments smaller than a pixel of the output can vanish) and a mask
    stays binary."""
    source_h, source_w = array.shape[:2]
    if (source_h, source_w) == (height, width):
        return array
    rows = ((2 * np.arange(height, dtype=np.int64) + 1) * source_h) // (2 * height)  # exact integers
    cols = ((2 * np.arange(width, dtype=np.int64) + 1) * source_w) // (2 * width)
    return array[rows[:, None], cols[None, :]]


def segment_colors(count: int, seed: int) -> np.ndarray:
    """``count`` distinct, non-black RGB colours (uint8 (count, 3)), a pure function of ``seed``.

    Colours are drawn one at a time from ``numpy.random.default_rng(seed)`` (3 integers in [0, 256)),
    skipping black and repeats, so the first k colours do not depend on ``count``: the k-th largest
    segment gets the same colour whatever the number of segments.
    """
    if seed < 0:
        raise UsageError(f"seed must be 0 or more, got {seed}")
    rng = np.random.default_rng(seed)
    colors = np.zeros((count, 3), dtype=np.uint8)
    seen = {(0, 0, 0)}
    filled = 0
    while filled < count:
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if color in seen:
            continue
        seen.add(color)
        colors[filled] = color
        filled += 1
    return colors


def paint_segments(masks: np.ndarray, seed: int = 0, areas: np.ndarray | None = None) -> np.ndarray:
    """The ControlNet SAM guide: RGB uint8 (H, W, 3), black where no mask.

    Masks (bool (N, H, W)) are painted largest first (area descending; equal areas keep their order),
    one flat colour each, so smaller masks lie on top. The i-th largest gets ``segment_colors(N, seed)[i]``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    count, height, width = masks.shape
    if areas is None:
        areas = masks.sum(axis=(1, 2))
    order = np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")
    colors = segment_colors(count, seed)
    labels = np.full((height, width), -1, dtype=np.int64)
    for rank, index in enumerate(order):
        labels[masks[index]] = rank
    palette = np.concatenate([colors, np.zeros((1, 3), dtype=np.uint8)])  # label -1 -> black
    return palette[labels]
