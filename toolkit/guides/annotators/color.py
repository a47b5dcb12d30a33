"""PLACEHOLDER (being written): color."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class ColorAnnotator(Annotator):
    name = "color"
    summary = "color (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("color is being written")
