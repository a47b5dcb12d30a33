"""PLACEHOLDER (being written): tile."""

from __future__ import annotations

import numpy as np

from .base import Annotator


class TileAnnotator(Annotator):
    name = "tile"
    summary = "tile (being written)."

    def annotate(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError("tile is being written")
