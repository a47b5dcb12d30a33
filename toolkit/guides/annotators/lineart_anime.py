"""Anime line-art guides with the Anime2Sketch U-Net (``netG.pth``): dark lines on white by default,
white lines on black with ``--invert``.

Pipeline (ControlNet v1.1's, as controlnet_aux's ``LineartAnimeDetector`` runs it):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size);
2. the working image is resized with ``cv2.INTER_CUBIC`` to sides rounded *up* to multiples of 256 (what
   the eight-level U-Net takes; 512 x 512 stays as it is, 512 x 640 becomes 512 x 768), and fed as
   RGB / 127.5 - 1;
3. the network's output (tanh, 1 = paper white) becomes ``out * 127.5 + 127.5``, is resized back to the
   working size with ``cv2.INTER_CUBIC`` (on float32), clipped to [0, 255] and truncated to uint8;
4. the guide is resized to the input size with ``cv2.INTER_LINEAR``.

Polarity: the network's raw output (step 3) has dark lines on white paper; that is the default guide
here. controlnet_aux returns ``255 - raw`` (white lines on black), which ``--invert`` gives. The ControlNet
v1.1 anime line-art model (``control_v11p_sd15s2_lineart_anime``) is conditioned on **white lines on
black**: ControlNet v1.1's own demo (``gradio_lineart_anime.py``) shows the raw map and feeds the model
``control = 1 - raw / 255``. diffusers passes the control image to the ControlNet unchanged (scaled to
[0, 1]), so a guide meant for that ControlNet through diffusers is made with ``--invert`` (the map
controlnet_aux returns). (That ControlNet also expects an anime base model and CLIP skip 2.)

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU). fp16 on the CPU is refused: PyTorch has
no fast half-precision convolutions there; use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import ANNOTATORS_REPO, MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch

NETWORK_MULTIPLE = 256
"""The network runs on the working image resized (cubic) to sides rounded up to multiples of this (2 ** 8:
the U-Net's eight stride-2 levels)."""


def network_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) the network runs at for a working image of that size: each side rounded up to a
    multiple of 256, as the reference does (``256 * ceil(side / 256)``)."""
    return -(-height // NETWORK_MULTIPLE) * NETWORK_MULTIPLE, -(-width // NETWORK_MULTIPLE) * NETWORK_MULTIPLE


@dataclasses.dataclass(frozen=True)
class LineartAnimeOptions(ModelOptions):
    invert: bool = option(False, "White lines on black (controlnet_aux's convention; what the ControlNet takes).")
    """White lines on black (controlnet_aux's convention, the anime lineart ControlNet's input) instead of
    dark lines on white."""


# ------------------------------------------------------------------------------------------- annotator


class LineartAnimeAnnotator(LearnedAnnotator):
    """Anime2Sketch line art; one forward per batch of images with the same working size."""

    name = "lineart-anime"
    summary = "Anime line art (Anime2Sketch U-Net), dark lines on white."
    #: 16.8 Mpx: about 0.3 GB of activations per Mpx of network input at fp32 (peak RSS, measured at
    #: 1024 x 1024 and 2048 x 2048), so about 5-6 GB at the limit (the network input is the working image
    #: with its sides rounded up to multiples of 256).
    default_max_working_pixels = 1 << 24
    Options = LineartAnimeOptions
    options: LineartAnimeOptions
    checkpoints = (
        Checkpoint(
            name="lineart-anime",
            repo=ANNOTATORS_REPO,
            filename="netG.pth",
            # No public source found naming netG.pth at a commit of lllyasviel/Annotators: main.
            revision="main",
            container="state_dict",
            # The file is Anime2Sketch's released netG.pth (same sha256 as the file in the Anime2Sketch
            # Google Drive folder, recorded by public download manifests); Anime2Sketch is MIT licensed
            # (github.com/Mukosame/Anime2Sketch README: "released under the MIT License"). lllyasviel/Annotators
            # itself states no licence.
            licence="MIT (Anime2Sketch, Xiang et al.)",
            used_by="lineart-anime",
            may_have_module_prefix=True,
            # Stated by public download manifests (lllyasviel/Annotators LFS metadata): 217,631,959 bytes.
            size=217_631_959,
            sha256="ccabdcc3f5cf3c07cf65d58776acb21df7dfda825cdc70c9766a93fd62bfc488",
            description="Anime2Sketch U-Net generator (anime line art)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thin line"),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15s2_lineart_anime",
            # No public source found stating a commit of this repository: main.
            revision="main",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            kind="lineart-anime",
        ),
    )

    def load(self) -> Any:
        """``netG.pth`` (``module.`` prefixes stripped), loaded strictly (CPU, fp32)."""
        from ..nets.unet_generator import anime_lineart_generator

        return self.load_checkpoint(anime_lineart_generator)

    def to_device(self, model: Any) -> Any:
        import torch

        if self.device.type != "cpu":
            return model.to(self.device, self.dtype).eval()
        # CPU: channels-last weights, and every convolution's weights reordered once into oneDNN's
        # blocked layout (not on every call; see guides.nets.unet_generator.PackedWeights).
        model = model.to(self.device, self.dtype, memory_format=torch.channels_last).eval()
        pack = getattr(model, "pack_weights", None)  # absent on stand-in networks (tests)
        if callable(pack):
            pack()
        return model

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Raw line values (B, H', W') float32, 255 = paper (not clipped), at the network size
        (``network_size``) of RGB uint8 working images (B, H, W, 3) of one size."""
        import cv2
        import torch

        check_rgb_batch(images, self.name)
        height, width = network_size(*images.shape[1:3])
        if (height, width) != images.shape[1:3]:
            images = np.stack([cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC) for image in images])
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            batch = (batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0).to(self.dtype)
            line = self.model(batch)[:, 0]
            self.check_finite(line)
            line = line.float() * 127.5 + 127.5
        return line.cpu().numpy()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        import cv2

        height, width = item.pixels.shape[:2]
        if prediction.shape != (height, width):
            prediction = cv2.resize(prediction, (width, height), interpolation=cv2.INTER_CUBIC)
        line = prediction.clip(0, 255).astype(np.uint8)
        guide = resize_to(line, (item.input_size[1], item.input_size[0]))
        return 255 - guide if self.options.invert else guide
