"""Gaussian blur: the InstantX/Shakker union model's "blur" condition, RGB at the input size.

Formula (the WebUI's ``blur_gaussian`` preprocessor, default sigma 9.0):

1. working image as ``guides.annotators.degradations`` says (``--resolution 0``, the default, keeps the
   input size);
2. ``cv2.GaussianBlur(rgb, (0, 0), sigma)``: kernel size derived from sigma by OpenCV (ksize 0), default
   border (BORDER_REFLECT_101), each channel alone (so RGB and BGR order give the same result);
3. back to the input size with INTER_CUBIC when ``--resolution`` changed the size.

No SD 1.5 ControlNet of its own (the tile model takes blurred images too: see ``tile``).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..options import option
from ..weights.union_models import UnionMode
from .degradations import ConditionAnnotator, ConditionOptions


@dataclasses.dataclass(frozen=True)
class BlurOptions(ConditionOptions):
    sigma: float = option(9.0, "Gaussian sigma in working pixels (the kernel size follows from it, as OpenCV's 0).",
                          min=0.01, max=1000.0)


class BlurAnnotator(ConditionAnnotator):
    """``cv2.GaussianBlur(image, (0, 0), sigma)`` at the working size."""

    name = "blur"
    summary = "Gaussian blur (no network), RGB: the union models' blur condition."
    Options = BlurOptions
    options: BlurOptions
    union_modes = (UnionMode("instantx", "blur"),)

    def formula(self, working: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(working, (0, 0), self.options.sigma)
