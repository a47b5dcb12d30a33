"""Anyline (TheMistoAI): thin white lines on black, for the MistoLine SDXL ControlNet; the pipeline of
controlnet_aux's ``AnylineDetector``.

1. working image = ``resize_image(image, resolution)`` (default 1280, the reference's detect resolution);
2. TEED with MistoLine's weights (``Anyline/MTEED.pth``), as ``teed`` runs it with ``safe_step`` 2: the
   edge layer, uint8;
3. standard line art of the working image (``lineart_standard.intensity_map``, ``--sigma`` 2 and
   ``--intensity-threshold`` 3 by default), from which connected line objects of at most 12 pixels are
   removed (4-connectivity). The reference calls ``skimage.morphology.remove_small_objects(min_size=36)``
   on the three identical channels of its line-art image stacked as a volume, where a 12-pixel object is
   36 voxels; scikit-image 0.26 takes the deprecated ``min_size`` as the new inclusive ``max_size``, so
   36-voxel objects go too (older scikit-image kept them: objects of 12 pixels are the only difference);
4. the layers merged where the line-art layer is non-zero as ``1 - (1 - line) * (1 - edge)`` in uint8
   arithmetic (modulo 256, as the reference computes it), the edge layer elsewhere;
5. the guide resized back to the input size with ``cv2.INTER_LINEAR``.

The network and the line-art code are those of ``teed`` and ``lineart-standard``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import WorkingImage
from .lineart_standard import intensity_map
from .teed import TeedAnnotator

#: The reference's ``safe_step`` levels of the TEED layer (fixed: the detector exposes no option).
EDGE_SAFE_STEPS = 2
#: Line-art objects of at most this many pixels are removed (the reference's 36 voxels over 3 identical
#: channels, inclusive as scikit-image >= 0.26 counts them).
MAX_REMOVED_PIXELS = 12


@dataclasses.dataclass(frozen=True)
class AnylineOptions(ModelOptions):
    resolution: int = option(1280, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    sigma: float = option(2.0, "Gaussian blur sigma of the line-art layer.", min=0.01, max=1000.0)
    intensity_threshold: float = option(3.0, "Darkness (grey levels) above which pixels count for the line-art median.",
                                        min=0.0, max=255.0)


def remove_small_objects(lines: np.ndarray, max_pixels: int) -> np.ndarray:
    """``lines`` (H, W) uint8 with its 4-connected non-zero objects of at most ``max_pixels`` pixels set to 0."""
    mask = (lines != 0).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4, ltype=cv2.CV_32S)
    small = stats[:, cv2.CC_STAT_AREA] <= max_pixels
    small[0] = False  # the background
    if not small.any():
        return lines
    return np.where(small[labels], np.uint8(0), lines)


def merge_layers(edge: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """``1 - (1 - lines) * (1 - edge)`` (uint8, modulo 256) where ``lines`` is non-zero, ``edge`` elsewhere."""
    one = np.uint8(1)
    merged = one - (one - lines) * (one - edge)
    return np.where(lines != 0, merged, edge)


class AnylineAnnotator(TeedAnnotator):
    """MTEED edges merged with standard line art (TheMistoAI's Anyline)."""

    name = "anyline"
    summary = "Anyline thin lines (MTEED edges + standard line art), white on black, for MistoLine (SDXL)."
    #: 16.8 Mpx, as teed (the network dominates; at the default 1280 a 1:13 panorama is refused).
    default_max_working_pixels = 1 << 24
    Options = AnylineOptions  # type: ignore[assignment]
    options: AnylineOptions  # type: ignore[assignment]
    checkpoints = (
        Checkpoint(
            name="anyline",
            repo="TheMistoAI/MistoLine",
            filename="Anyline/MTEED.pth",
            # stated: the hub tree of TheMistoAI/MistoLine at 344915650d49be75168c2c20e67bb18cb4341ae3
            # ("Upload MTEED.pth", the head of main) lists Anyline/MTEED.pth (248 kB; an earlier upload of
            # 249 kB was deleted); size and sha256 as a golden-file generator pins them (and a mirror's
            # LFS object id agrees)
            revision="344915650d49be75168c2c20e67bb18cb4341ae3",
            container="state_dict",
            licence="OpenRAIL++-M (MistoLine)",
            size=248_298,
            sha256="a3c2d8a8ce9422555c787160bd46362d761325a565333c0e3f6a53e0bae2abdb",
            description="TEED retrained by TheMistoAI for Anyline (MTEED)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thin line"),
    )
    controlnets = (
        ControlNet(
            kind="anyline",
            repo="TheMistoAI/MistoLine",
            # stated: the hub tree at 3449156... lists config.json and diffusion_pytorch_model.fp16.safetensors
            revision="344915650d49be75168c2c20e67bb18cb4341ae3",
            licence="OpenRAIL++-M (MistoLine model card: openrail++)",
            approx_size=2_500 * MB,  # approximate: diffusion_pytorch_model.fp16.safetensors, 2.5 GB on the hub
            allow_patterns=("*.json", "diffusion_pytorch_model.fp16.safetensors"),
            base="sdxl",
        ),
    )

    def load(self) -> Any:
        """``Anyline/MTEED.pth`` loaded strictly (CPU, fp32)."""
        return super().load()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        edge = self.edge_guide(prediction, EDGE_SAFE_STEPS)
        lines = intensity_map(item.pixels, self.options.sigma, self.options.intensity_threshold)
        lines = remove_small_objects(lines, MAX_REMOVED_PIXELS)
        guide = merge_layers(edge, lines)
        return resize_to(guide, (item.input_size[1], item.input_size[0]))
