"""PLACEHOLDER (being written): openpose."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class OpenposeAnnotator(Annotator):
    name = "openpose"
    summary = "openpose (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("openpose is being written")
