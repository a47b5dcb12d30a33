"""PLACEHOLDER (being written): shuffle."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class ShuffleAnnotator(Annotator):
    name = "shuffle"
    summary = "shuffle (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("shuffle is being written")
