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
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from ..errors import DeviceError, InputError, UsageError
from ..imaging import resize_image, resize_to
from .base import Annotator, ModelOptions

if TYPE_CHECKING:
    import torch

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


# --------------------------------------------------------------------------- shared with normals.py


def working_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) of ``resize_image(image, resolution)`` for an image of that size, without resizing."""
    if resolution <= 0:
        return height, width
    scale = float(resolution) / min(height, width)
    return int(np.round(height * scale / 64.0)) * 64, int(np.round(width * scale / 64.0)) * 64


def pad_to_multiple(images: np.ndarray, multiple: int, minimum: int = 0) -> np.ndarray:
    """Pad (B, H, W, C) images at the bottom and right to sides that are multiples of ``multiple`` and
    at least ``minimum`` (reflected where the image is large enough, else repeated edge pixels)."""
    height, width = images.shape[1:3]
    pad_h = max(minimum - height, 0) + (-max(height, minimum)) % multiple
    pad_w = max(minimum - width, 0) + (-max(width, minimum)) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    mode = "reflect" if min(height, width) > 1 else "edge"
    return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def check_rgb_batch(images: np.ndarray, name: str) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise InputError(None, f"{name} needs RGB uint8 images, got {images.dtype} of shape {images.shape[1:]}")


def check_model_options(name: str, options: ModelOptions) -> None:
    """Refuse option values no model run can use, with the one-line message users see."""
    if options.resolution < 0:
        raise UsageError(f"{name}: resolution must be 0 or more, got {options.resolution}")
    if options.batch_size < 1:
        raise UsageError(f"{name}: batch size must be 1 or more, got {options.batch_size}")


def refuse_cpu_fp16(name: str, device: torch.device, dtype: torch.dtype) -> None:
    import torch

    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError(
            f"{name}: fp16 on the CPU has no fast convolution kernels (about 20x slower than fp32); "
            "use --precision bf16 or fp32"
        )


def group_by_working_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of images in chunks of at most ``batch_size`` that share a working size (input order kept)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(size, []).append(index)
    return [indices[start : start + batch_size] for indices in groups.values() for start in range(0, len(indices), batch_size)]


# ------------------------------------------------------------------------------------------- annotator


class LineartAnnotator(Annotator):
    """Informative-drawings line art; one forward per batch of images with the same working size."""

    Options = LineartOptions
    options: LineartOptions
    cli_options = (
        click.option("--coarse", is_flag=True, default=False, help="Coarse model (sk_model2.pth): bolder, fewer lines."),
        click.option("--invert", is_flag=True, default=False, help="White lines on black (controlnet_aux's convention)."),
    )

    def __init__(self, options: LineartOptions, model: Any = None) -> None:
        """Load ``sk_model.pth`` (``sk_model2.pth`` with ``coarse``) through the weights contract
        (--checkpoint, models folder, hub cache, download) onto ``options.device`` at
        ``options.precision``, or use ``model``: a built ``Generator`` (tests)."""
        super().__init__(options)
        check_model_options("lineart", options)
        from ..devices import resolve_device, resolve_dtype

        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.precision, self.device)
        refuse_cpu_fp16("lineart", self.device, self.dtype)
        if model is None:
            model = load_network(options.coarse, options.models_dir, options.checkpoint)
        self.model = model.to(self.device, self.dtype).eval()

    def batch_key(self, image: np.ndarray) -> Hashable:
        return working_size(image.shape[0], image.shape[1], self.options.resolution)

    def annotate(self, image: np.ndarray) -> np.ndarray:
        return self.annotate_batch([image])[0]

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        working = [resize_image(image, self.options.resolution) for image in images]
        results: list[np.ndarray] = [np.empty(0, np.uint8)] * len(images)
        for chunk in group_by_working_size([w.shape[:2] for w in working], self.batch_size):
            lines = self.predict(np.stack([working[i] for i in chunk]))
            for i, line in zip(chunk, lines):
                guide = resize_to(line, (images[i].shape[1], images[i].shape[0]))
                results[i] = 255 - guide if self.options.invert else guide
        return results

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
            if not bool(torch.isfinite(line).all()):
                raise DeviceError(
                    f"lineart: the network produced non-finite values at {self.options.precision}"
                    + ("; use --precision fp32" if self.options.precision != "fp32" else "")
                )
            line = (line.float() * 255.0).clamp_(0, 255).to(torch.uint8)
        return line.cpu().numpy()

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


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
