"""Colour palette: the WebUI's ``color`` preprocessor (T2I-Adapter colour), RGB at the input size.

Formula (the WebUI's ``apply_color``, step for step):

1. working image: short side to ``--resolution`` (default 512, the WebUI's) and the long side to
   ``int(round(long / short * resolution))``, always with INTER_AREA (its ``cv2_resize_shortest_edge``; no
   rounding to multiples of 64); ``--resolution 0`` keeps the input size;
2. down to ``(w // 64, h // 64)`` with INTER_CUBIC, clamped to at least 1 px (the reference fails on a
   side under 64 px; the clamp only changes those cases: a 1 x 1 image at ``--resolution 0`` is its own
   palette), and up to the working size with INTER_NEAREST: 64 x 64 blocks of flat colour;
3. back to the input size with INTER_NEAREST (colours stay those of the palette).

Bit-exact with the WebUI's output at the working size. No SD 1.5 ControlNet in diffusers format here (the
reference serves the T2I-Adapter colour model) and no union mode.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..options import option
from .degradations import ConditionAnnotator, ConditionOptions

#: The palette's block size in working pixels.
BLOCK = 64


@dataclasses.dataclass(frozen=True)
class ColorOptions(ConditionOptions):
    resolution: int = option(512, "Short side of the working image (INTER_AREA, as the WebUI; 0 keeps the size).",
                             min=0)


class ColorAnnotator(ConditionAnnotator):
    """64-pixel colour blocks: INTER_CUBIC down by 64, INTER_NEAREST up."""

    name = "color"
    summary = "Colour palette (no network): 64-pixel blocks of the image's colours, RGB (the WebUI's color)."
    Options = ColorOptions
    back_interpolation = cv2.INTER_NEAREST
    shortest_edge = True

    def formula(self, working: np.ndarray) -> np.ndarray:
        height, width = working.shape[:2]
        palette = cv2.resize(working, (max(1, width // BLOCK), max(1, height // BLOCK)), interpolation=cv2.INTER_CUBIC)
        return cv2.resize(palette, (width, height), interpolation=cv2.INTER_NEAREST)
