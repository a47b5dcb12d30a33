"""PLACEHOLDER (being written): gray."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class GrayAnnotator(Annotator):
    name = "gray"
    summary = "gray (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("gray is being written")
