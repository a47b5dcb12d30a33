"""PLACEHOLDER (being written): depth-anything."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class DepthAnythingAnnotator(Annotator):
    name = "depth-anything"
    summary = "depth-anything (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("depth-anything is being written")
