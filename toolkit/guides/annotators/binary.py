"""Binary: the WebUI's ``binary`` preprocessor, dark content as white on black, single channel 0/255.

Formula (the WebUI's ``binary`` / ``apply_binary``):

1. working image as ``guides.annotators.degradations`` says (``--resolution 0``, the default, keeps the
   input size; the WebUI works at 512 with ControlNet's ``resize_image``, which ``--resolution 512`` is);
2. ``y = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)`` (BT.601 luma);
3. ``--threshold 0`` (the default) or 255: Otsu's threshold on ``y`` (``THRESH_BINARY_INV + THRESH_OTSU``,
   as the reference, which also takes 255 as Otsu); otherwise ``cv2.threshold(y, t, 255,
   THRESH_BINARY_INV)``. Polarity: **pixels with luma <= t are 255 (white), brighter ones 0 (black)**: dark
   strokes on light paper become white lines on black, the scribble/line convention. A flat image (a
   1 x 1 one too) is all black: OpenCV's Otsu returns 0 when there is no split;
4. back to the input size with INTER_NEAREST, so the guide stays 0/255.

The guide is (H, W) uint8 (an L PNG; the reference repeats it in three channels, which a ControlNet pipeline
does when it loads the PNG). No ControlNet and no union mode of its own.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..options import option
from .degradations import ConditionAnnotator, ConditionOptions


@dataclasses.dataclass(frozen=True)
class BinaryOptions(ConditionOptions):
    threshold: int = option(0, "Luma at or below which a pixel is white (0 or 255: Otsu's threshold).",
                            min=0, max=255)


class BinaryAnnotator(ConditionAnnotator):
    """``THRESH_BINARY_INV`` of the luma at ``threshold`` (Otsu at 0): dark content white on black."""

    name = "binary"
    summary = "Binary (no network): dark content white on black, 0/255, Otsu or a fixed luma threshold."
    Options = BinaryOptions
    options: BinaryOptions
    back_interpolation = cv2.INTER_NEAREST

    def formula(self, working: np.ndarray) -> np.ndarray:
        luma = cv2.cvtColor(working, cv2.COLOR_RGB2GRAY)
        threshold = self.options.threshold
        if threshold in (0, 255):
            return cv2.threshold(luma, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)[1]
        return cv2.threshold(luma, threshold, 255, cv2.THRESH_BINARY_INV)[1]
