"""Surface-normal guides with NormalBae (``scannet.pt``): RGB = ``((n + 1) / 2) * 255``, the convention
of ``refs/cutecat_guide_normals.png`` and of ControlNet v1.1's normalbae model.

Pipeline (ControlNet's, as controlnet_aux's ``NormalBaeDetector`` runs it):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size, reflect-padded to a multiple of 32 for the network and
   cropped back);
2. RGB / 255, ImageNet mean/std normalisation, NNET; the full-resolution prediction's unit normal
   (channels 0..2) becomes ``((n + 1) * 0.5).clip(0, 1) * 255`` truncated to uint8;
3. the guide is resized back to the input size with ``cv2.INTER_LINEAR``.

Precision: ``fp16``/``bf16`` apply to the decoder (about 90% of the work); the EfficientNet encoder
always runs in fp32. Measured with random (calibrated) weights, a bf16 encoder moves the normals by up
to 0.8 (mean 0.12) -- the same drift controlnet_aux's own network shows in bf16 -- while a bf16 decoder
stays within about 0.04. Whether trained weights drift less was not verified (no real weights here).
fp16 on the CPU is refused (no fast half-precision convolutions there); use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..imaging import resize_to
from ..weights.declarations import ANNOTATORS_COMMIT, ANNOTATORS_REPO, MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple

NETWORK_MULTIPLE = 32
"""The encoder halves the size five times and the decoder's skips must line up: sides are padded to this."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class NormalsOptions(ModelOptions):
    """NormalBae has no options of its own beyond the learned annotators' common ones."""


class NormalsAnnotator(LearnedAnnotator):
    """NormalBae surface normals; one forward per batch of images with the same working size."""

    name = "normals"
    summary = "Surface normals (NormalBae), RGB = (n + 1) / 2."
    #: 8.4 Mpx (4K UHD fits): about 1.5 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 23
    Options = NormalsOptions
    options: NormalsOptions
    checkpoints = (
        Checkpoint(
            name="normals",
            repo=ANNOTATORS_REPO,
            filename="scannet.pt",
            revision=ANNOTATORS_COMMIT,
            container="model_dict",
            # saved from nn.DataParallel: a ``module.`` prefix on every key is the one transformation allowed
            may_have_module_prefix=True,
            licence="MIT (surface_normal_uncertainty, Bae et al.)",
            used_by="normals",
            approx_size=291 * MB,
            description="NormalBae NNET (EfficientNet-B5 encoder), ScanNet",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "normal"),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15_normalbae",
            # stated: https://huggingface.co/lllyasviel/control_v11p_sd15_normalbae/resolve/cb7296e6587a219068e9d65864e38729cd862aa8/diffusion_pytorch_model.fp16.safetensors
            revision="cb7296e6587a219068e9d65864e38729cd862aa8",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            in_reference_suite=True,
        ),
    )

    def load(self) -> Any:
        """``scannet.pt``, loaded strictly into our NNET (CPU, fp32)."""
        from ..nets.normalbae import normalbae_network

        return self.load_checkpoint(normalbae_network)

    def to_device(self, model: Any) -> Any:
        """Fold/split the decoder for inference, move to the device: encoder fp32, decoder ``dtype``.

        The weights keep their layout: a channels-last *input* (what ``forward`` feeds) makes every
        convolution run channels-last (oneDNN's and cuDNN's fast path) -- measured as fast as converting
        the weights too, without a second copy of them in memory.
        """
        import torch

        model = model.prepare_for_inference()
        model.encoder.to(self.device, torch.float32)
        model.decoder.to(self.device, self.dtype)
        return model

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Normal maps (B, H, W, 3) uint8 of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        check_rgb_batch(images, "normals")
        height, width = images.shape[1:3]
        padded = pad_to_multiple(images, NETWORK_MULTIPLE)
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            batch = batch.permute(0, 3, 1, 2).float() / 255.0  # channels-last strides, kept by every layer
            mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
            features = self.model.encoder((batch - mean) / std)
            normal = self.model.decoder([f.to(self.dtype) for f in features])[-1][:, :3, :height, :width]
            self.check_finite(normal)
            rgb = ((normal.float() + 1) * 0.5).clamp_(0, 1)
            rgb = (rgb * 255.0).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        return rgb.cpu().numpy()

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        return resize_to(prediction, (item.input_size[1], item.input_size[0]))
