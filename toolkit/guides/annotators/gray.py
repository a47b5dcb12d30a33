"""Grey: luma in three identical channels, the InstantX/Shakker union model's "gray" condition.

Formula:

1. working image as ``guides.annotators.degradations`` says (``--resolution 0``, the default, keeps the size);
2. ``y = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)``: BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in OpenCV's
   fixed-point rounding;
3. the guide is ``y`` in each of the three channels (H, W, 3) RGB uint8 (the union model takes a colour
   image); back to the input size with INTER_CUBIC when ``--resolution`` changed the size.

No SD 1.5 ControlNet of its own.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..weights.union_models import UnionMode
from .degradations import ConditionAnnotator, ConditionOptions


class GrayAnnotator(ConditionAnnotator):
    """BT.601 luma (``COLOR_RGB2GRAY``) repeated in three channels."""

    name = "gray"
    summary = "Grey (no network): BT.601 luma in three identical channels, the union models' gray condition."
    Options = ConditionOptions
    union_modes = (UnionMode("instantx", "gray"),)

    def formula(self, working: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(cv2.cvtColor(working, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
