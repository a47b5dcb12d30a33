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
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..imaging import resize_to
from .base import ModelOptions
from .learned import LearnedAnnotator, check_rgb_batch, pad_to_multiple

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

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
    #: 8.4 Mpx (4K UHD fits): about 1.5 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 23
    Options = NormalsOptions
    options: NormalsOptions

    def load(self) -> Any:
        """``scannet.pt`` through the weights contract (--checkpoint, models folder, hub cache, download)."""
        return load_network(self.options.models_dir, str(self.checkpoint_file("normals")))

    def checkpoint_name(self) -> str:
        return "normals"

    def prepare(self, model: Any) -> Any:
        return prepare_network(model, self.device, self.dtype)

    def finish(self, prediction: np.ndarray, image: np.ndarray) -> np.ndarray:
        return resize_to(prediction, (image.shape[1], image.shape[0]))

    def predict(self, images: np.ndarray) -> np.ndarray:
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


def load_network(models_dir: str | None = None, checkpoint: str | None = None) -> Any:
    """Find ``scannet.pt`` and load it strictly into our NNET (CPU, fp32, eval mode); a ``module.``
    prefix on every key (DataParallel copies) is the one transformation allowed."""
    from ..nets.normalbae import normalbae_network
    from ..weights.catalog import CHECKPOINTS
    from ..weights.load import load_checkpoint_into
    from ..weights.resolve import resolve_checkpoint

    path = resolve_checkpoint("normals", explicit=checkpoint, models_dir=models_dir)
    log.info("normals: loading %s", path)
    return load_checkpoint_into(normalbae_network, path, container=CHECKPOINTS["normals"].container,
                                key_filters=("strip_module_prefix",))


def prepare_network(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Fold/split the decoder for inference, move to ``device``: encoder fp32, decoder ``dtype``.

    The weights keep their layout: a channels-last *input* (what ``predict`` feeds) makes every
    convolution run channels-last (oneDNN's and cuDNN's fast path) -- measured as fast as converting
    the weights too, without a second copy of them in memory.
    """
    import torch

    model = model.prepare_for_inference()
    model.encoder.to(device, torch.float32)
    model.decoder.to(device, dtype)
    return model
