"""Prompts of ``guides mask`` (and ``guides inpaint-target``): points ``X,Y`` and boxes ``X0,Y0,X1,Y1`` in
pixels of the input image (x to the right, y down), parsed from text or numbers (``parse_point``,
``parse_box``: the ``parse`` functions of the mask options), and mapped to the working size
(``scale_prompts``). numpy-free, click-free."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import InputError, UsageError

Point = tuple[float, float]
Box = tuple[float, float, float, float]


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != count:
        raise ValueError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {text!r}")
    return values


def parse_point(value: str | Sequence[float]) -> Point:
    """``"X,Y"`` (pixels, x to the right, y down) or a pair of numbers -> (x, y)."""
    if isinstance(value, str):
        x, y = _numbers(value, 2, "a point")
    else:
        values = tuple(value)
        if len(values) != 2:
            raise ValueError(f"a point must be (x, y), got {value!r}")
        x, y = _numbers(",".join(str(v) for v in values), 2, "a point")
    return (x, y)


def parse_box(value: str | Sequence[float]) -> Box:
    """``"X0,Y0,X1,Y1"`` or four numbers -> (x0, y0, x1, y1) with x0 < x1 and y0 < y1."""
    text = value if isinstance(value, str) else ",".join(str(v) for v in tuple(value))
    x0, y0, x1, y1 = _numbers(text, 4, "a box")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"a box must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1, got {text!r}")
    return (x0, y0, x1, y1)


def normalize_points(values: Iterable[Any] | None, what: str) -> tuple[Point, ...]:
    """A sequence of points in any accepted form -> tuple of (x, y); a UsageError names the bad one."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    points = []
    for value in values:
        try:
            points.append(parse_point(value))
        except (ValueError, TypeError) as error:
            raise UsageError(f"{what}: {error}") from None
    return tuple(points)


def normalize_box(value: Any) -> Box | None:
    if value is None:
        return None
    try:
        return parse_box(value)
    except (ValueError, TypeError) as error:
        raise UsageError(f"box: {error}") from None


def scale_prompts(points: Sequence[Point], box: Box | None, source_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[list[Point], Box | None]:
    """Check prompts against the input image ((height, width)) and map them to the working size."""
    height, width = source_size
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(None, f"point {x:g},{y:g} is outside the {width}x{height} image")
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < width and 0 <= y0 < height and 0 < x1 <= width and 0 < y1 <= height):
            raise InputError(None, f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside the {width}x{height} image")
    sy, sx = target_size[0] / height, target_size[1] / width
    scaled = [(x * sx, y * sy) for x, y in points]
    scaled_box = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return scaled, scaled_box
