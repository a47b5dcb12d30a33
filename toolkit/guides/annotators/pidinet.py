"""Soft-edge guides with PiDiNet (``table5_pidinet.pth``): white edges on black, the guide of ControlNet
v1.1's softedge model (``--scribble``: its scribble model).

Pipeline (ControlNet's, as controlnet_aux's ``PidiNetDetector`` runs it):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size, padded to sides of at least 8 and cropped back);
2. network on the image in BGR order (the reference flips the RGB image) / 255, no mean/std; the fused
   edge probability ``edge`` in [0, 1];
3. ``--apply-filter``: ``edge > 0.5`` (a binary map); ``--safe``: ``safe_step(edge)`` (2 levels), after the
   filter when both are given; then ``(edge * 255).clip(0, 255)`` truncated to uint8;
4. ``--scribble``: the binary scribble of that map at the working size (non-maximum suppression, blur,
   threshold: ``guides.annotators.soft_edges.scribble``);
5. the guide is resized to the input size: ``cv2.INTER_LINEAR``, or ``cv2.INTER_NEAREST`` for a scribble
   (it stays 0/255).

The network's pixel-difference convolutions are folded into plain convolutions once at load
(``guides.nets.pidinet``), so inference runs plain 3x3/5x5 depthwise and 1x1 convolutions.

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU). fp16 on the CPU is refused (no fast
half-precision convolutions there); use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import ANNOTATORS_REPO, MB, Checkpoint
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple
from .soft_edges import SCRIBBLE_CONTROLNET, SOFTEDGE_CONTROLNET, safe_step, scribble

NETWORK_MIN_SIDE = 8
"""Smallest side the network accepts (three 2x2 max-pools); smaller images (``--resolution 0``) are padded
and the guide cropped back."""
FILTER_THRESHOLD = 0.5
"""``--apply-filter`` keeps the pixels whose edge probability is above this."""


@dataclasses.dataclass(frozen=True)
class PidinetOptions(ModelOptions):
    safe: bool = option(False, "Quantise the edges to 2 levels (ControlNet's safe mode).")
    """Quantise the edge map to 2 levels (``safe_step``): drops the faint texture a ControlNet would copy."""
    scribble: bool = option(False, "Binary scribble (0/255) of the edges, for the scribble ControlNet.")
    """Turn the soft edges into a binary scribble (non-maximum suppression, blur, threshold)."""
    apply_filter: bool = option(False, "Keep only edges above probability 0.5 (binary map).")
    """Threshold the edge probabilities at 0.5 before anything else (a binary map)."""


class PidinetAnnotator(LearnedAnnotator):
    """PiDiNet soft edges; one forward per batch of images with the same working size."""

    name = "pidinet"
    summary = "Soft edges (PiDiNet), white on black."
    #: 8.4 Mpx: about 0.85 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 23
    Options = PidinetOptions
    options: PidinetOptions
    checkpoints = (
        Checkpoint(
            name="pidinet",
            repo=ANNOTATORS_REPO,
            filename="table5_pidinet.pth",
            # No public source names this file at ANNOTATORS_COMMIT; the sha256 is stated by several
            # download manifests for https://huggingface.co/lllyasviel/Annotators/resolve/main/table5_pidinet.pth
            # (and for the same file in github.com/hellozhuo/pidinet trained_models/).
            revision="main",
            container="state_dict_entry",
            may_have_module_prefix=True,
            licence="MIT (PiDiNet, Su et al.)",
            used_by="pidinet",
            approx_size=3 * MB,
            sha256="80860ac267258b5f27486e0ef152a211d0b08120f62aeb185a050acc30da486c",
            description="PiDiNet edge detector (table 5 model: carv4, attention, dilation)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thick line"),
    )
    controlnets = (SCRIBBLE_CONTROLNET, SOFTEDGE_CONTROLNET)

    def load(self) -> Any:
        """``table5_pidinet.pth`` loaded strictly (CPU, fp32), its pixel-difference convolutions folded."""
        from ..nets.pidinet import pidinet

        return self.load_checkpoint(pidinet).fold_pixel_differences()

    def to_device(self, model: Any) -> Any:
        return model.to(self.device, self.dtype).eval()

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Edge probabilities (B, H, W) float32 of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        check_rgb_batch(images, "pidinet")
        height, width = images.shape[1:3]
        padded = pad_to_multiple(images, 1, NETWORK_MIN_SIDE)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            batch = (batch.flip(3).permute(0, 3, 1, 2).float() / 255.0).to(self.dtype)
            edge = self.model(batch)[:, 0, :height, :width]
            self.check_finite(edge)
            edge = edge.float()
        return edge.cpu().numpy()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        edge: np.ndarray = prediction
        if self.options.apply_filter:
            edge = (edge > FILTER_THRESHOLD).astype(np.float32)
        if self.options.safe:
            edge = safe_step(edge)
        guide = (edge * np.float32(255.0)).clip(0, 255).astype(np.uint8)
        size = (item.input_size[1], item.input_size[0])
        if self.options.scribble:
            return resize_to(scribble(guide), size, interpolation=cv2.INTER_NEAREST)
        return resize_to(guide, size)
