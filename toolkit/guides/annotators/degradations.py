"""What the seven no-network union conditions share (blur, tile, gray, low-quality, shuffle, color, binary):
the working-size step around a formula, its size guard, and the down-and-up resize of tile and low-quality.

Every one of them is ``guide = back(formula(working(image)))``:

1. ``working``: the image at its working size. ``--resolution 0`` keeps the input size; ``N`` resizes as
   the condition's reference does: ControlNet's ``resize_image`` (short side to N, sides multiples of 64,
   INTER_AREA shrinking, INTER_LANCZOS4 enlarging) for all but ``color``, whose WebUI reference resizes the
   short side to N with INTER_AREA and no rounding (``shortest_edge_size``);
2. the working size is checked before anything of that size is allocated (``--max-working-pixels``; a
   3 x 700 strip at 512 becomes 512 x 119488): one failed file, not a crash;
3. ``formula``: the condition itself (each module's docstring gives it step by step);
4. ``back``: the guide is resized to the input size with the interpolation the module names (none when the
   sizes already match), so every guide has the size of its input.

The formulas use no global state: the random ones (shuffle, low-quality's jitter) draw from a
``numpy.random.RandomState`` made for each image, so thread order in a folder run changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import cv2
import numpy as np

from ..errors import InputError
from ..imaging import DEFAULT_MAX_PIXELS, resize_image, resize_to
from ..options import option
from .base import Annotator, AnnotatorOptions
from .learned import working_size

#: Working pixels allowed by default: the ``--max-pixels`` default (2**28). These formulas need at most about
#: 20 bytes a working pixel (a few uint8 copies and OpenCV's intermediate rows; shuffle sets its own limit).
DEFAULT_MAX_WORKING_PIXELS = DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class ConditionOptions(AnnotatorOptions):
    """Options common to the union conditions: the working size (``resolution``, from the base) and its limit."""

    max_working_pixels: int | None = option(
        None, "Refuse images whose working size (after --resolution) has more pixels.", min=1,
        default_text="the annotator's limit",
    )
    """Refuse an image whose working size has more pixels (None: the annotator's ``max_working_pixels``)."""


def shortest_edge_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) with the short side ``resolution`` and the long side rounded to the nearest pixel, as the
    WebUI colour preprocessor's ``cv2_resize_shortest_edge`` computes it (0: the size itself)."""
    if resolution <= 0:
        return height, width
    if height < width:
        return resolution, int(round(width / height * resolution))
    return int(round(height / width * resolution)), resolution


def refuse_oversized(name: str, height: int, width: int, working: tuple[int, int], resolution: int,
                     limit: int) -> None:
    """An InputError when the working size ``working`` (height, width) of a ``width`` x ``height`` image has
    more than ``limit`` pixels: the wording of ``learned.check_working_pixels``, for any working size."""
    pixels = working[0] * working[1]
    if pixels <= limit:
        return
    where = f"at --resolution {resolution}" if resolution > 0 else "at its own size"
    raise InputError(None, f"{width}x{height} image: working size {working[1]}x{working[0]} {where} has {pixels:,} "
                           f"pixels, over the {name} limit of {limit:,} (use a smaller --resolution or raise "
                           "--max-working-pixels)")


def down_up(image: np.ndarray, factor: float, down: int = cv2.INTER_AREA, up: int = cv2.INTER_CUBIC) -> np.ndarray:
    """``image`` shrunk by ``factor`` (each side ``int(side / factor)``, at least 1 px) with ``down`` and enlarged
    back to its own size with ``up``: tile's degradation (the WebUI's tile_resample, then the upscale)."""
    height, width = image.shape[:2]
    small = cv2.resize(image, (max(1, int(width / factor)), max(1, int(height / factor))), interpolation=down)
    return cv2.resize(small, (width, height), interpolation=up)


class ConditionAnnotator(Annotator):
    """An annotator made of one formula at the working size (see the module docstring). Subclasses set
    ``Options`` (a ``ConditionOptions``), the class attributes below, and implement ``formula``."""

    options: ConditionOptions
    #: The interpolation that brings the guide back to the input size.
    back_interpolation: ClassVar[int] = cv2.INTER_CUBIC
    #: Working pixels allowed when ``--max-working-pixels`` is not given.
    max_working_pixels: ClassVar[int] = DEFAULT_MAX_WORKING_PIXELS
    #: Resize to the working size as the WebUI colour preprocessor does (short side only, INTER_AREA).
    shortest_edge: ClassVar[bool] = False

    def formula(self, working: np.ndarray) -> np.ndarray:
        """The condition of an RGB uint8 working image, at the working size."""
        raise NotImplementedError

    def annotate(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        resolution = self.options.resolution
        size = shortest_edge_size if self.shortest_edge else working_size
        working = size(height, width, resolution)
        limit = self.options.max_working_pixels
        refuse_oversized(self.name, height, width, working, resolution,
                         self.max_working_pixels if limit is None else limit)
        if resolution <= 0:
            pixels = image
        elif self.shortest_edge:
            pixels = cv2.resize(image, (working[1], working[0]), interpolation=cv2.INTER_AREA)
        else:
            pixels = resize_image(image, resolution)
        return resize_to(self.formula(pixels), (width, height), interpolation=self.back_interpolation)

