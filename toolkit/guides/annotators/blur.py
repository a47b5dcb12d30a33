"""PLACEHOLDER (being written): blur."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class BlurAnnotator(Annotator):
    name = "blur"
    summary = "blur (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("blur is being written")
