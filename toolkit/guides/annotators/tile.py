"""Tile: the image shrunk and enlarged again, the tile ControlNet's training degradation, at the input size.

Formula:

1. working image as ``guides.annotators.degradations`` says (``--resolution 0``, the default, keeps the size);
2. down by ``--factor`` (default 8): each side ``max(1, int(side / factor))`` with INTER_AREA (the WebUI's
   ``tile_resample`` shrink, its ``int(side / rate)``; clamped to 1 px so a 1 x 1 image works);
3. up again to the working size with INTER_CUBIC; back to the input size with INTER_CUBIC when
   ``--resolution`` changed the size. RGB (H, W, 3) uint8.

ControlNet: ``lllyasviel/control_v11f1e_sd15_tile``; union modes: xinsir "tile", instantx "tile".
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..options import option
from ..weights.declarations import MB, ControlNet
from ..weights.union_models import UnionMode
from .degradations import ConditionAnnotator, ConditionOptions, down_up


@dataclasses.dataclass(frozen=True)
class TileOptions(ConditionOptions):
    factor: float = option(8.0, "Shrink each side by this factor (INTER_AREA), then enlarge back (INTER_CUBIC).",
                           min=1.0, max=1024.0)


class TileAnnotator(ConditionAnnotator):
    """Down by ``factor`` with INTER_AREA, back up with INTER_CUBIC."""

    name = "tile"
    summary = "Tile (no network): shrunk by --factor and enlarged back, RGB, for the tile ControlNet."
    Options = TileOptions
    options: TileOptions
    union_modes = (UnionMode("xinsir", "tile"), UnionMode("instantx", "tile"))
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11f1e_sd15_tile",
            # The one public pin seen (imaginAIry's configs) names commit 3f877705c37010b7221c3d10743307d6b5b6efac
            # for diffusion_pytorch_model.bin only, not the safetensors file fetched here: main.
            revision="main",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
        ),
    )

    def formula(self, working: np.ndarray) -> np.ndarray:
        return down_up(working, self.options.factor)
