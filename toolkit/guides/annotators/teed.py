"""Soft edges with TEED (``fal-ai/teed`` ``5_model.pth``): white edges on black, the pipeline of
controlnet_aux's ``TEEDdetector``.

1. working image = ``resize_image(image, resolution)`` (default 512; ``--resolution 0`` keeps the input
   size, reflect-padded to multiples of 8 for the network and cropped back);
2. the network on RGB in 0..255 (no normalisation); the edge map is ``sigmoid(mean of its four logit
   maps)`` (three heads and their fusion), computed on the device;
3. ``--safe-steps N`` (default 2, 0 = off) quantises it to N levels (``soft_edges.safe_step``), which
   removes the faint texture a ControlNet would copy; the guide is ``(edge * 255)`` clipped and truncated
   to uint8, resized back to the input size with ``cv2.INTER_LINEAR``.

The reference computes the sigmoid in float64 in numpy; here it is float32 on the device. Guides agree to
within one grey level except where an edge value lies within float rounding of a safe-step boundary
(measured: none on the test images).

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU); fp16 on the CPU is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import Checkpoint
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple
from .soft_edges import SOFTEDGE_CONTROLNET, safe_step

NETWORK_MULTIPLE = 8
"""Sides the network is run at (it needs multiples of 4; the reference's own padding helper uses 8)."""

@dataclasses.dataclass(frozen=True)
class TeedOptions(ModelOptions):
    safe_steps: int = option(2, "Quantise the edge map to N levels (0 = off): removes faint texture.", min=0, max=255)
    """``safe_step`` levels of the edge map (the reference's default 2); 0 keeps it continuous."""


class TeedAnnotator(LearnedAnnotator):
    """TEED soft edges; one forward per batch of images with the same working size."""

    name = "teed"
    summary = "Soft edges (TEED, tiny edge network), white on black."
    #: 16.8 Mpx: about 0.4 GB of activations per Mpx at fp32 (the fusion's 24 full-resolution channels).
    default_max_working_pixels = 1 << 24
    Options = TeedOptions
    options: TeedOptions
    checkpoints = (
        Checkpoint(
            name="teed",
            repo="fal-ai/teed",  # shown as fal/teed on the hub now; the old name redirects
            filename="5_model.pth",
            # stated: the hub's commit list of fal-ai/teed: 5fd20d8c36... "Initial model add" (the commit
            # adding 5_model.pth, the head of main); no source states its size to the byte or its sha256
            revision="5fd20d8c3641d666b3f6d1d00b977f2f83bc54d4",
            container="state_dict",
            licence="MIT (TEED, Soria et al.)",
            approx_size=249_000,
            description="TEED edge detector trained on BIPED (checkpoint 5)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thick line", when=(("resolution", 512),), note="at 512"),
        UnionMode("xinsir", "thin line", when=(("resolution", 1280),), note="at 1280"),
    )
    controlnets = (SOFTEDGE_CONTROLNET,)

    def load(self) -> Any:
        """``5_model.pth`` loaded strictly (CPU, fp32)."""
        from ..nets.teed import teed_network

        return self.load_checkpoint(teed_network)

    def to_device(self, model: Any) -> Any:
        import torch

        # channels-last: about 0.75x the time of the default layout on the CPU (measured at 512 x 512)
        return model.to(self.device, self.dtype).to(memory_format=torch.channels_last).eval()

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Edge probabilities (B, H, W) float32 in [0, 1] of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        check_rgb_batch(images, self.name)
        height, width = images.shape[1:3]
        padded = pad_to_multiple(images, NETWORK_MULTIPLE, NETWORK_MULTIPLE)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            batch = batch.permute(0, 3, 1, 2).to(self.dtype).contiguous(memory_format=torch.channels_last)
            logits = self.model.edge_logits(batch)[:, :height, :width]
            self.check_finite(logits)
            edge = torch.sigmoid(logits.float())
        return edge.cpu().numpy()

    def edge_guide(self, edge: np.ndarray, steps: int) -> np.ndarray:
        """The working-size guide (H, W) uint8 of an edge map: ``safe_step`` (when ``steps``), * 255, clipped."""
        if steps:
            edge = safe_step(edge, steps)
        scaled = edge * np.float32(255.0)
        np.clip(scaled, 0, 255, out=scaled)
        return scaled.astype(np.uint8)

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        guide = self.edge_guide(prediction, self.options.safe_steps)
        return resize_to(guide, (item.input_size[1], item.input_size[0]))
