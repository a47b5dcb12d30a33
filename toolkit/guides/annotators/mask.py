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

Stages (``guides.annotators.sam_annotator_base``): ``prepare`` checks the prompts against the input and
scales them to the working size; ``predict`` encodes a batch and finds each subject on the device;
``finish`` resizes and finishes the mask.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ..options import option
from .sam_annotator_base import SamEngineAnnotator, SamItem, SamModelOptions
from .sam_prompts import Box, Point, parse_box, parse_point, scale_prompts
from .segment_painting import resize_nearest
from .subject_masks import automatic_subject, best_of_three, finish_mask

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MaskOptions(SamModelOptions):
    resolution: int = option(0, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    """0 (default) keeps the input size, so the mask fits the image it was made from."""
    points: tuple[Point, ...] = option(
        (), "A pixel on the subject (repeatable). Without --point/--box, the subject is the automatic mask "
            "covering the image centre with the best predicted IoU.",
        flag="--point", parse=parse_point, metavar="X,Y",
    )
    """Points on the subject, (x, y) pixels of the input image (``"X,Y"`` strings are accepted too)."""
    negative_points: tuple[Point, ...] = option(
        (), "A pixel not on the subject (repeatable).", flag="--negative-point", parse=parse_point, metavar="X,Y",
    )
    """Points that are not on the subject."""
    box: Box | None = option(None, "A box around the subject.", parse=parse_box, metavar="X0,Y0,X1,Y1")
    """A box around the subject, (x0, y0, x1, y1) pixels of the input image (``"X0,Y0,X1,Y1"`` too)."""
    invert: bool = option(False, "Repaint the subject (white) and keep the rest.")
    """Repaint (white) the subject instead of keeping it."""
    dilate: int = option(0, "Grow the white area by N pixels (negative shrinks it).", min=-1024, max=1024)
    """Grow the white area by N pixels (negative: shrink it)."""
    feather: int = option(0, "Soften the edge over about N pixels (no longer binary).", min=0, max=1024)
    """Blur the edge over about N pixels (0: a hard, binary mask)."""


@dataclasses.dataclass(frozen=True)
class Prompts:
    """The prompts of one image at its working size (labels: 1 on the subject, 0 not)."""

    points: list[Point]
    labels: list[int]
    box: Box | None


class MaskAnnotator(SamEngineAnnotator):
    """Subject mask (uint8 (H, W) at the input size, 0 keep / 255 repaint) from prompts or the automatic rule."""

    name = "mask"
    summary = "Binary subject mask (Segment Anything): white = repaint."
    Options = MaskOptions
    options: MaskOptions

    @property
    def has_prompts(self) -> bool:
        return bool(self.options.points or self.options.negative_points or self.options.box is not None)

    def subject(self, image: np.ndarray) -> np.ndarray:
        """The subject of ``image`` as bool (H, W) at the working size (see the module doc for the rule)."""
        item = self.prepare(image)
        return self.predict([item])[0]

    def prepare_item(self, input_size: tuple[int, int], working_size: tuple[int, int]) -> Prompts:
        """The prompts checked against the input image (an InputError for that image) and scaled to the
        working size."""
        options = self.options
        points, box = scale_prompts(list(options.points) + list(options.negative_points), options.box, input_size, working_size)
        return Prompts(points, [1] * len(options.points) + [0] * len(options.negative_points), box)

    def predict_one(self, item: SamItem) -> np.ndarray:
        """The subject (bool, working size) once the engine's current image is ``item``'s."""
        prompts: Prompts = item.extra
        if self.has_prompts:
            return self._predict(prompts.points, prompts.labels, prompts.box)
        height, width = item.working.shape[:2]
        segments = self.automatic_segments(item.working)
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

    def finish(self, item: SamItem, output: np.ndarray) -> np.ndarray:
        """The subject resized to the input size by nearest neighbour, then finished (``--invert``,
        ``--dilate`` and ``--feather`` in pixels of the input image)."""
        options = self.options
        subject = resize_nearest(output, *item.input_size)
        return finish_mask(subject, invert=options.invert, dilate=options.dilate, feather=options.feather)
