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
import logging
from typing import Any

import click
import numpy as np

from ..imaging import resize_to
from .base import ModelOptions
from .learned import LearnedAnnotator, check_rgb_batch, pad_to_multiple

log = logging.getLogger(__name__)

NETWORK_MULTIPLE = 4
"""Sides the generator maps to themselves (two stride-2 stages); other sizes are padded and cropped."""
NETWORK_MIN_SIDE = 8
"""Smallest side the generator accepts (its reflect padding needs 2 pixels at 1/4 resolution)."""


@dataclasses.dataclass(frozen=True)
class LineartOptions(ModelOptions):
    coarse: bool = False
    """Use the coarse model (``sk_model2.pth``, checkpoint ``lineart-coarse``): bolder, fewer lines."""
    invert: bool = False
    """White lines on black (controlnet_aux's convention) instead of dark lines on white."""


# ------------------------------------------------------------------------------------------- annotator


class LineartAnnotator(LearnedAnnotator):
    """Informative-drawings line art; one forward per batch of images with the same working size."""

    name = "lineart"
    #: 16.8 Mpx: about 0.6 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 24
    Options = LineartOptions
    options: LineartOptions
    cli_options = (
        click.option("--coarse", is_flag=True, default=False, help="Coarse model (sk_model2.pth): bolder, fewer lines."),
        click.option("--invert", is_flag=True, default=False, help="White lines on black (controlnet_aux's convention)."),
    )

    def load(self) -> Any:
        """``sk_model.pth`` (``sk_model2.pth`` with ``coarse``) through the weights contract
        (--checkpoint, models folder, hub cache, download)."""
        path = self.checkpoint_file(self.checkpoint_name())
        return load_network(self.options.coarse, self.options.models_dir, str(path))

    def checkpoint_name(self) -> str:
        return "lineart-coarse" if self.options.coarse else "lineart"

    def prepare(self, model: Any) -> Any:
        return model.to(self.device, self.dtype).eval()

    def finish(self, prediction: np.ndarray, image: np.ndarray) -> np.ndarray:
        guide = resize_to(prediction, (image.shape[1], image.shape[0]))
        return 255 - guide if self.options.invert else guide

    def predict(self, images: np.ndarray) -> np.ndarray:
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


def load_network(coarse: bool = False, models_dir: str | None = None, checkpoint: str | None = None) -> Any:
    """Find ``sk_model.pth`` (``sk_model2.pth`` when ``coarse``) and load it strictly (CPU, fp32, eval)."""
    from ..nets.informative_drawings import lineart_generator
    from ..weights.catalog import CHECKPOINTS
    from ..weights.load import load_checkpoint_into
    from ..weights.resolve import resolve_checkpoint

    name = "lineart-coarse" if coarse else "lineart"
    path = resolve_checkpoint(name, explicit=checkpoint, models_dir=models_dir)
    log.info("lineart: loading %s", path)
    return load_checkpoint_into(lineart_generator, path, container=CHECKPOINTS[name].container)
