"""PLACEHOLDER (being written): binary."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class BinaryAnnotator(Annotator):
    name = "binary"
    summary = "binary (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("binary is being written")
