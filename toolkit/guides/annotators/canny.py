"""Canny edges with OpenCV: white edges on black, single channel, values 0/255.

Bit-exact with ``cv2.Canny(cv2.imread(path), low, high)``: OpenCV's Canny on a colour image takes the
strongest gradient over the channels, and ties resolve by channel order, so we feed BGR exactly as
``cv2.imread`` gives it (the reference guide was made that way; RGB order differs in a few pixels).
"""

from __future__ import annotations

import dataclasses

import click
import cv2
import numpy as np

from ..imaging import resize_image
from .base import Annotator, AnnotatorOptions


@dataclasses.dataclass(frozen=True)
class CannyOptions(AnnotatorOptions):
    low: int = 100
    """Lower hysteresis threshold."""
    high: int = 200
    """Upper hysteresis threshold."""


class CannyAnnotator(Annotator):
    """``cv2.Canny`` on the BGR image (optionally resized first as ControlNet does)."""

    Options = CannyOptions
    options: CannyOptions
    cli_options = (
        click.option("--low", type=click.IntRange(0, 10_000), default=100, show_default=True, help="Lower hysteresis threshold."),
        click.option("--high", type=click.IntRange(0, 10_000), default=200, show_default=True, help="Upper hysteresis threshold."),
    )

    def annotate(self, image: np.ndarray) -> np.ndarray:
        image = resize_image(image, self.options.resolution)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        return cv2.Canny(bgr, self.options.low, self.options.high)
