"""The ControlNet SAM guide: Segment Anything's automatic masks, one flat colour each, over black.

Masks are exactly those of segment_anything's ``SamAutomaticMaskGenerator`` with the same settings
(its defaults unless given), computed by ``guides.nets.sam_fast`` several times faster. They are painted
largest first, so smaller masks lie on top (the convention of ``refs/cutecat_guide_sam.png`` and of
controlnet_aux's ``SamDetector``). Unlike the peers, colours are not random per run: they come from
``--seed``, so the same image and seed give the same guide, byte for byte.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from ..errors import UsageError
from ..imaging import resize_image
from . import sam_common
from .base import Annotator, ModelOptions
from .sam_common import (
    MODEL_TYPES,
    check_generator_options,
    check_model,
    engine_for,
    generator_cli_options,
    generator_settings,
    paint_segments,
)

if TYPE_CHECKING:
    from ..nets.sam_fast import Segments


@dataclasses.dataclass(frozen=True)
class SamOptions(ModelOptions):
    model: str = "vit_h"
    """SAM backbone: vit_h (default, as the ControlNet SAM guides), vit_l or vit_b."""
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_region_area: int = 0
    """segment_anything's ``min_mask_region_area``: holes and islands smaller than this are removed."""
    seed: int = 0
    """Seed of the segment colours."""


class SamAnnotator(Annotator):
    """Automatic SAM masks painted as a segment guide (RGB uint8 at the working size)."""

    Options = SamOptions
    options: SamOptions
    cli_options = (
        click.option("--model", type=click.Choice(MODEL_TYPES), default="vit_h", show_default=True, help="SAM backbone."),
        *generator_cli_options(),
        click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the segment colours."),
    )

    def __init__(self, options: SamOptions, model: Any = None) -> None:
        """Load the checkpoint of ``options.model`` (weights contract), or use ``model``: a built
        segment_anything ``Sam`` or a ``SamEngine`` shared with another annotator."""
        super().__init__(options)
        check_model(options.model)
        check_generator_options(options.points_per_side, options.pred_iou_thresh, options.stability_score_thresh, options.min_region_area)
        if options.seed < 0:
            raise UsageError(f"seed must be 0 or more, got {options.seed}")
        if model is None:
            self.engine = sam_common.load_engine(options.model, options.device, options.precision, options.models_dir, options.checkpoint)
        else:
            self.engine = engine_for(model, options.precision)

    def segments(self, image: np.ndarray) -> Segments:
        """The automatic masks of ``image`` at the working size, in segment_anything's order."""
        working = resize_image(image, self.options.resolution)
        self.engine.set_image(working)
        settings = generator_settings(
            self.engine, working.shape[:2], self.options.points_per_side, self.options.pred_iou_thresh,
            self.options.stability_score_thresh, self.options.min_region_area,
        )
        return self.engine.generate(settings)

    def annotate(self, image: np.ndarray) -> np.ndarray:
        segments = self.segments(image)
        return paint_segments(segments.masks, seed=self.options.seed, areas=segments.areas)

    def close(self) -> None:
        self.engine.reset()
