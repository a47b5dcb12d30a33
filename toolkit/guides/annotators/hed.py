"""Soft-edge guides with lllyasviel's HED network (``ControlNetHED.pth``): white edges on black, the
guide of ControlNet 1.1's softedge model (``--scribble``: a binary scribble for the scribble model).

Pipeline (ControlNet's, as controlnet_aux's ``HEDdetector`` runs it with detect and image resolution
equal):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size; a side under 16 is padded for the network's four poolings
   and cropped back);
2. network on RGB 0..255 floats (no /255: the network subtracts its own learned offset); its five side
   outputs are resized bilinearly to the working size, averaged, through a sigmoid;
3. ``--safe``: ``safe_step`` (2 steps) on those probabilities; then ``(edge * 255).clip(0, 255)``
   truncated to uint8;
4. ``--scribble``: the scribble post-processing (non-maximum suppression, blur, threshold) on that
   working-size guide, then ``cv2.INTER_NEAREST`` to the input size (it stays 0/255); otherwise the guide
   is resized to the input size with ``cv2.INTER_LINEAR``.

Steps 1-2 run on the device (batched), 3-4 in ``render`` (the engine's worker threads).

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU). fp16 on the CPU is refused: PyTorch has
no fast half-precision convolutions there; use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import ANNOTATORS_COMMIT, ANNOTATORS_REPO, Checkpoint
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple
from .soft_edges import SCRIBBLE_CONTROLNET, SOFTEDGE_CONTROLNET, safe_step, scribble

NETWORK_MIN_SIDE = 16
"""Smallest side the network maps to side outputs of at least one pixel (four 2x2 poolings)."""


@dataclasses.dataclass(frozen=True)
class HedOptions(ModelOptions):
    safe: bool = option(False, "Quantise the edges to 2 steps before uint8 (safe_step): less faint texture.")
    """ControlNet's ``safe_step``: the edge probabilities quantised to 2 steps (0, 0.5, 1) before the guide
    is made uint8, which removes the faint texture a ControlNet would otherwise copy."""
    scribble: bool = option(False, "Binary scribble (for the scribble ControlNet) instead of soft edges.")
    """ControlNet's scribble post-processing of the working-size guide (non-maximum suppression, blur,
    threshold): a 0/255 guide for ``control_v11p_sd15_scribble``."""


class HedAnnotator(LearnedAnnotator):
    """HED soft edges; one forward per batch of images with the same working size."""

    name = "hed"
    summary = "Soft edges (lllyasviel's HED), white on black; --scribble for a binary scribble."
    #: 16.8 Mpx: about 0.5 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 24
    Options = HedOptions
    options: HedOptions
    checkpoints = (
        Checkpoint(
            name="hed",
            repo=ANNOTATORS_REPO,
            filename="ControlNetHED.pth",
            # stated: a model registry pins lllyasviel/Annotators at 982e7edaec38759d914a963c48c4726685de7d96
            # for ControlNetHED.pth with the expected download size 29_444_406; three model lists/downloaders
            # give its sha256 5ca93762ffd68a29fee1af9d495bf6aab80ae86f08905fb35472a083a4c7a8fa.
            revision=ANNOTATORS_COMMIT,
            container="state_dict",
            licence="Apache-2.0 (lllyasviel's ControlNetHED_Apache2)",
            size=29_444_406,
            sha256="5ca93762ffd68a29fee1af9d495bf6aab80ae86f08905fb35472a083a4c7a8fa",
            description="HED soft-edge network (lllyasviel's Apache-2.0 re-implementation, ControlNet 1.1)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thick line"),
    )
    controlnets = (SCRIBBLE_CONTROLNET, SOFTEDGE_CONTROLNET)

    def load(self) -> Any:
        """``ControlNetHED.pth``, loaded strictly (CPU, fp32)."""
        from ..nets.hed import hed_network

        return self.load_checkpoint(hed_network)

    def to_device(self, model: Any) -> Any:
        from ..nets.hed import to_channels_last

        model = model.to(self.device, self.dtype).eval()
        return to_channels_last(model) if self.device.type in ("cpu", "cuda") else model

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Edge probabilities (B, H, W) float32 in [0, 1] of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        check_rgb_batch(images, "hed")
        height, width = images.shape[1:3]
        padded = pad_to_multiple(images, 1, NETWORK_MIN_SIDE)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            # (B, H, W, 3) -> (B, 3, H, W) is already channels-last in memory: no copy before the network.
            edge = self.model(batch.permute(0, 3, 1, 2).to(self.dtype))[:, :height, :width]
            self.check_finite(edge)
        return edge.cpu().numpy()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        edge = safe_step(prediction) if self.options.safe else prediction
        guide = (edge * np.float32(255.0)).clip(0, 255).astype(np.uint8)
        size = (item.input_size[1], item.input_size[0])
        if self.options.scribble:
            return resize_to(scribble(guide), size, interpolation=cv2.INTER_NEAREST)
        return resize_to(guide, size)
