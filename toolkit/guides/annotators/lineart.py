"""Line-art guides with lllyasviel's informative-drawings generator (``sk_model.pth``, ``--coarse``:
``sk_model2.pth``): dark lines on white, the convention of ``refs/cutecat_guide_lineart.png``.

Pipeline (ControlNet's, as controlnet_aux's ``LineartDetector`` runs it):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size, reflect-padded to a multiple of 4 (and at least 8) for the
   network and cropped back);
2. network on RGB / 255 (no mean/std); its output (1 = white paper) becomes
   ``(line * 255).clip(0, 255)`` truncated to uint8;
3. the guide is resized back to the input size with ``cv2.INTER_LINEAR``.

Conventions differ between tools: the raw output (dark lines on white) is what the reference guide and
the ControlNet v1.1 lineart model's training data use; controlnet_aux returns ``255 - raw`` (white
lines on black), which ``--invert`` gives here.

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU). fp16 on the CPU is refused: PyTorch has
no fast half-precision convolutions there (about 20x slower than fp32); use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import ANNOTATORS_COMMIT, ANNOTATORS_REPO, MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple

NETWORK_MULTIPLE = 4
"""Sides the generator maps to themselves (two stride-2 stages); other sizes are padded and cropped."""
NETWORK_MIN_SIDE = 8
"""Smallest side the generator accepts (its reflect padding needs 2 pixels at 1/4 resolution)."""


@dataclasses.dataclass(frozen=True)
class LineartOptions(ModelOptions):
    coarse: bool = option(False, "Coarse model (sk_model2.pth): bolder, fewer lines.")
    """Use the coarse model (``sk_model2.pth``, checkpoint ``lineart-coarse``): bolder, fewer lines."""
    invert: bool = option(False, "White lines on black (controlnet_aux's convention).")
    """White lines on black (controlnet_aux's convention) instead of dark lines on white."""


# ------------------------------------------------------------------------------------------- annotator


class LineartAnnotator(LearnedAnnotator):
    """Informative-drawings line art; one forward per batch of images with the same working size."""

    name = "lineart"
    summary = "Line art (lllyasviel's generator), dark lines on white."
    #: 16.8 Mpx: about 0.6 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 24
    Options = LineartOptions
    options: LineartOptions
    checkpoints = (
        Checkpoint(
            name="lineart",
            repo=ANNOTATORS_REPO,
            filename="sk_model.pth",
            revision=ANNOTATORS_COMMIT,
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart",
            size=17_173_511,
            description="informative-drawings generator (fine lines)",
            when=(("coarse", False),),
        ),
        Checkpoint(
            name="lineart-coarse",
            repo=ANNOTATORS_REPO,
            filename="sk_model2.pth",
            revision=ANNOTATORS_COMMIT,
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart --coarse",
            size=17_173_511,
            description="informative-drawings generator (coarse lines)",
            when=(("coarse", True),),
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thin line"),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15_lineart",
            # stated: a cache snapshot
            # models--lllyasviel--control_v11p_sd15_lineart/snapshots/8a158f547e031c5b8fbca19ead09a74767ff4db0/diffusion_pytorch_model.safetensors
            revision="8a158f547e031c5b8fbca19ead09a74767ff4db0",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            in_reference_suite=True,
        ),
    )

    def load(self) -> Any:
        """``sk_model.pth`` (``sk_model2.pth`` with ``coarse``), loaded strictly (CPU, fp32)."""
        from ..nets.informative_drawings import lineart_generator

        return self.load_checkpoint(lineart_generator)

    def to_device(self, model: Any) -> Any:
        return model.to(self.device, self.dtype).eval()

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Raw line maps (B, H, W) uint8 (255 = paper) of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        check_rgb_batch(images, "lineart")
        height, width = images.shape[1:3]
        padded = pad_to_multiple(images, NETWORK_MULTIPLE, NETWORK_MIN_SIDE)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            batch = (batch.permute(0, 3, 1, 2).float() / 255.0).to(self.dtype)
            line = self.model(batch)[:, 0, :height, :width]
            self.check_finite(line)
            line = (line.float() * 255.0).clamp_(0, 255).to(torch.uint8)
        return line.cpu().numpy()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        guide = resize_to(prediction, (item.input_size[1], item.input_size[0]))
        return 255 - guide if self.options.invert else guide
