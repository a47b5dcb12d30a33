"""A binary subject mask for inpainting, in the convention of ``refs/inpainting-mask.png``: white (255) =
repaint, black (0) = keep. By default the subject is kept and everything else is repainted.

How the subject is chosen:

* **Prompts** (``--point X,Y``, repeatable; ``--negative-point X,Y``; ``--box X0,Y0,X1,Y1``; in pixels of
  the input image, x to the right, y down): the subject is what ``SamPredictor.predict`` returns for those
  prompts with ``multimask_output=True``: of its three masks, the one with the highest predicted score.
* **Automatic** (no prompt): segment_anything's automatic masks (``guides sam`` settings) are computed,
  and the subject is the mask covering the centre pixel (row H // 2, column W // 2) with the highest
  predicted IoU (ties: higher stability score, then larger area). If no automatic mask covers the
  centre, the centre pixel is used as a point prompt (as above).

The subject is found at the working size (``--resolution``; by default the input size) and resized to
the input size by nearest neighbour. Then ``--invert`` (repaint the subject instead), ``--dilate N``
(grow the white area by N pixels of the input; negative shrinks it) and ``--feather N`` (soft edge; the
mask is then no longer binary). The mask always has the size of the input image.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import click
import numpy as np

from ..errors import UsageError
from .sam_common import (
    Box,
    BoxType,
    Point,
    PointType,
    SamEngineAnnotator,
    SamEngineCache,
    SamModelOptions,
    automatic_subject,
    best_of_three,
    finish_mask,
    normalize_box,
    normalize_points,
    resize_nearest,
    sam_cli_options,
    scale_prompts,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaskOptions(SamModelOptions):
    resolution: int = 0
    """0 (default) keeps the input size, so the mask fits the image it was made from."""
    points: tuple[Point, ...] = ()
    """Points on the subject, (x, y) pixels of the input image (``"X,Y"`` strings are accepted too)."""
    negative_points: tuple[Point, ...] = ()
    """Points that are not on the subject."""
    box: Box | None = None
    """A box around the subject, (x0, y0, x1, y1) pixels of the input image."""
    invert: bool = False
    """Repaint (white) the subject instead of keeping it."""
    dilate: int = 0
    """Grow the white area by N pixels (negative: shrink it)."""
    feather: int = 0
    """Blur the edge over about N pixels (0: a hard, binary mask)."""


class MaskAnnotator(SamEngineAnnotator):
    """Subject mask (uint8 (H, W) at the input size, 0 keep / 255 repaint) from prompts or the automatic rule."""

    name = "mask"
    Options = MaskOptions
    options: MaskOptions
    cli_options = (
        click.option("--point", "points", type=PointType(), multiple=True, help="A pixel on the subject (repeatable). Without --point/--box, the subject is the automatic mask covering the image centre with the best predicted IoU."),
        click.option("--negative-point", "negative_points", type=PointType(), multiple=True, help="A pixel not on the subject (repeatable)."),
        click.option("--box", type=BoxType(), default=None, help="A box around the subject."),
        click.option("--invert", is_flag=True, help="Repaint the subject (white) and keep the rest."),
        click.option("--dilate", type=click.IntRange(-1024, 1024), default=0, show_default=True, help="Grow the white area by N pixels (negative shrinks it)."),
        click.option("--feather", type=click.IntRange(0, 1024), default=0, show_default=True, help="Soften the edge over about N pixels (no longer binary)."),
        *sam_cli_options(),
    )

    def __init__(self, options: MaskOptions, model: Any = None, engines: SamEngineCache | None = None) -> None:
        """Load the checkpoint of ``options.model`` through ``engines`` (see ``SamEngineAnnotator``), or use
        ``model`` (a ``Sam`` or a shared ``SamEngine``)."""
        options = dataclasses.replace(
            options,
            points=normalize_points(options.points, "points"),
            negative_points=normalize_points(options.negative_points, "negative_points"),
            box=normalize_box(options.box),
        )
        super().__init__(options, model, engines)

    def check_options(self) -> None:
        if self.options.feather < 0:
            raise UsageError(f"feather must be 0 or more, got {self.options.feather}")

    @property
    def has_prompts(self) -> bool:
        return bool(self.options.points or self.options.negative_points or self.options.box is not None)

    def subject(self, image: np.ndarray) -> np.ndarray:
        """The subject of ``image`` as bool (H, W) at the working size (see the module doc for the rule)."""
        working = self.working_image(image)
        engine = self.ready_engine
        with engine.lock:
            engine.set_image(working)
            return self.working_subject(image, working)

    def working_subject(self, image: np.ndarray, working: np.ndarray) -> np.ndarray:
        """``subject`` once the engine's current image is ``working`` (``image`` at the working size)."""
        options = self.options
        height, width = working.shape[:2]
        points, box = scale_prompts(
            list(options.points) + list(options.negative_points), options.box, image.shape[:2], (height, width)
        )
        if self.has_prompts:
            labels = [1] * len(options.points) + [0] * len(options.negative_points)
            return self._predict(points, labels, box)
        segments = self.automatic_segments(working)
        chosen = automatic_subject(segments, height, width)
        if chosen is not None:
            log.debug("automatic subject: mask %d of %d", chosen, len(segments))
            return segments.masks[chosen]
        log.info("no automatic mask covers the centre; using the centre pixel as a point prompt")
        return self._predict([(float(width // 2), float(height // 2))], [1], None)

    def _predict(self, points: list[Point], labels: list[int], box: Box | None) -> np.ndarray:
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) if points else None
        label_array = np.asarray(labels, dtype=np.int64) if points else None
        box_array = None if box is None else np.asarray(box, dtype=np.float64)
        masks, scores = self.ready_engine.predict(coords, label_array, box_array)
        return best_of_three(masks, scores)

    def annotate_working(self, image: np.ndarray, working: np.ndarray) -> np.ndarray:
        """The subject at the working size, resized to the input size by nearest neighbour, then finished
        (``--dilate`` and ``--feather`` in pixels of the input image)."""
        options = self.options
        subject = resize_nearest(self.working_subject(image, working), image.shape[0], image.shape[1])
        return finish_mask(subject, invert=options.invert, dilate=options.dilate, feather=options.feather)
