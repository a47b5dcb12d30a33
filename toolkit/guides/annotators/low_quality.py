"""PLACEHOLDER (being written): low-quality."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class LowQualityAnnotator(Annotator):
    name = "low-quality"
    summary = "low-quality (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("low-quality is being written")
