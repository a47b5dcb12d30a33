"""The ControlNet SAM guide: Segment Anything's automatic masks, one flat colour each, over black.

Masks are exactly those of segment_anything's ``SamAutomaticMaskGenerator`` with the same settings
(its defaults unless given), computed by ``guides.nets.sam_mask_generator`` several times faster. They
are painted largest first, so smaller masks lie on top (the convention of ``refs/cutecat_guide_sam.png``
and of controlnet_aux's ``SamDetector``). Unlike the peers, colours are not random per run: they come
from ``--seed``, so the same image and seed give the same guide, byte for byte. Masks are computed at the
working size (``--resolution``, 512 by default) and the guide is resized back to the input size by
nearest neighbour, so its colours stay flat and its regions are exactly those masks'.

Stages (``guides.annotators.sam_annotator_base``): ``predict`` encodes a batch and generates each image's
automatic masks on the device; ``finish`` paints them and resizes the guide.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from ..options import option
from ..weights.declarations import MB, ControlNet
from ..weights.union_models import UnionMode
from .sam_annotator_base import SamEngineAnnotator, SamItem, SamModelOptions
from .segment_painting import paint_segments, resize_nearest

if TYPE_CHECKING:
    from ..nets.sam_mask_generator import Segments


@dataclasses.dataclass(frozen=True)
class SamOptions(SamModelOptions):
    seed: int = option(0, "Seed of the segment colours.", min=0)
    """Seed of the segment colours."""


class SamAnnotator(SamEngineAnnotator):
    """Automatic SAM masks painted as a segment guide (RGB uint8 at the input size)."""

    name = "sam"
    summary = "Segment Anything segments, one flat colour each."
    Options = SamOptions
    options: SamOptions
    union_modes = (
        UnionMode("xinsir", "segment"),
    )
    controlnets = (
        ControlNet(
            repo="mfidabel/controlnet-segment-anything",
            # no commit of mfidabel/controlnet-segment-anything found stated anywhere: main (not pinned)
            licence="unverified: see the model card",
            approx_size=1_450 * MB,
            in_reference_suite=True,
            scale=0.5,
            allow_patterns=("*.json", "*.safetensors", "*.bin"),
        ),
    )

    def segments(self, image: np.ndarray) -> Segments:
        """The automatic masks of ``image`` at the working size, in segment_anything's order."""
        item = self.prepare(image)
        return self.predict([item])[0]

    def predict_one(self, item: SamItem) -> Segments:
        """The automatic masks at the working size (the engine's current image is ``item``'s)."""
        return self.automatic_segments(item.working)

    def finish(self, item: SamItem, output: Segments) -> np.ndarray:
        """The masks painted (``paint_segments``), then resized to the input size by nearest neighbour:
        the guide's colours and regions are those at the working size."""
        guide = paint_segments(output.masks, seed=self.options.seed, areas=output.areas)
        return resize_nearest(guide, *item.input_size)
