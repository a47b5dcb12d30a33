"""The ControlNet SAM guide: Segment Anything's automatic masks, one flat colour each, over black.

Masks are exactly those of segment_anything's ``SamAutomaticMaskGenerator`` with the same settings
(its defaults unless given), computed by ``guides.nets.sam_fast`` several times faster. They are painted
largest first, so smaller masks lie on top (the convention of ``refs/cutecat_guide_sam.png`` and of
controlnet_aux's ``SamDetector``). Unlike the peers, colours are not random per run: they come from
``--seed``, so the same image and seed give the same guide, byte for byte. Masks are computed at the
working size (``--resolution``, 512 by default) and the guide is resized back to the input size by
nearest neighbour, so its colours stay flat and its regions are exactly those masks'.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import click
import numpy as np

from ..errors import UsageError
from .sam_common import SamEngineAnnotator, SamModelOptions, paint_segments, resize_nearest, sam_cli_options

if TYPE_CHECKING:
    from ..nets.sam_fast import Segments


@dataclasses.dataclass(frozen=True)
class SamOptions(SamModelOptions):
    seed: int = 0
    """Seed of the segment colours."""


class SamAnnotator(SamEngineAnnotator):
    """Automatic SAM masks painted as a segment guide (RGB uint8 at the input size)."""

    name = "sam"
    Options = SamOptions
    options: SamOptions
    cli_options = (
        *sam_cli_options(),
        click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of the segment colours."),
    )

    def check_options(self) -> None:
        if self.options.seed < 0:
            raise UsageError(f"seed must be 0 or more, got {self.options.seed}")

    def segments(self, image: np.ndarray) -> Segments:
        """The automatic masks of ``image`` at the working size, in segment_anything's order."""
        working = self.working_image(image)
        engine = self.ready_engine
        with engine.lock:
            engine.set_image(working)
            return self.automatic_segments(working)

    def annotate_working(self, image: np.ndarray, working: np.ndarray) -> np.ndarray:
        """The automatic masks of ``working`` painted (``paint_segments``), then resized to the input size
        by nearest neighbour: the guide's colours and regions are those at the working size."""
        segments = self.automatic_segments(working)
        guide = paint_segments(segments.masks, seed=self.options.seed, areas=segments.areas)
        return resize_nearest(guide, image.shape[0], image.shape[1])
