"""What the annotators that run one network per batch (lineart, normals, depth) share.

ControlNet's working size, padding to the sides a network accepts, precision checks, and the engine
contract of ``guides.annotators.base`` (``prepare``/``predict``/``finish``): ``prepare`` makes the working
image (``WorkingImage``: resized, size-checked), ``predict`` stacks a batch of equal working sizes and runs
``forward``, ``finish`` calls ``render``. A subclass says how to load its network (``load``), how to put it
on the device (``to_device``), how to run it on a batch of working images of one size (``forward``) and
how to turn one prediction into the guide (``render``).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import abstractmethod
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import DeviceError, InputError
from ..imaging import resize_image
from .base import Annotator, ModelOptions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


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
    """Refuse anything but a (B, H, W, 3) uint8 batch (the one-line error the batch engine reports)."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise InputError(None, f"{name} needs RGB uint8 images, got {images.dtype} of shape {images.shape[1:]}")


def refuse_cpu_fp16(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """fp16 convolutions on the CPU are about 20x slower than fp32 in PyTorch: refuse, suggest bf16."""
    import torch

    if device.type == "cpu" and dtype == torch.float16:
        raise DeviceError(
            f"{name}: fp16 on the CPU has no fast convolution kernels (about 20x slower than fp32); "
            "use --precision bf16 or fp32"
        )


def check_working_pixels(name: str, height: int, width: int, resolution: int, limit: int,
                         option: str = "--max-working-pixels") -> None:
    """Refuse an image whose working size has more than ``limit`` pixels (an InputError: the batch
    reports that file and goes on), before anything of that size is allocated; the message suggests
    raising ``option``."""
    working_h, working_w = working_size(height, width, resolution)
    if working_h * working_w > limit:
        how = f"at --resolution {resolution}" if resolution > 0 else "at its own size"
        raise InputError(
            None,
            f"{width}x{height} image: working size {working_w}x{working_h} {how} has "
            f"{working_h * working_w:,} pixels, over the {name} limit of {limit:,} "
            f"(use a smaller --resolution or raise {option})",
        )


def working_image(name: str, image: np.ndarray, options: ModelOptions, default_limit: int) -> np.ndarray:
    """``image`` resized to its working size (``options.resolution``), after refusing it when that size has
    more pixels than ``options.max_working_pixels`` (else ``default_limit``): the one place every
    annotator that runs a network gets its working image."""
    limit = default_limit if options.max_working_pixels is None else options.max_working_pixels
    check_working_pixels(name, image.shape[0], image.shape[1], options.resolution, limit)
    return resize_image(image, options.resolution)


@dataclasses.dataclass(frozen=True)
class WorkingImage:
    """A prepared item of a learned annotator: the working image (``pixels``, RGB uint8 at the working size)
    and the size of the input it came from."""

    pixels: np.ndarray
    input_size: tuple[int, int]
    """(height, width) of the input image."""

    @property
    def shape(self) -> tuple[int, ...]:
        """The working image's shape: items of equal shape share a ``predict`` batch."""
        return self.pixels.shape


class LearnedAnnotator(Annotator):
    """A network run once per batch of images that share a working size, on ``options.device`` at
    ``options.precision``; the network is loaded once, when the annotator is built."""

    #: The annotator's name in messages (``lineart: ...``).
    name: ClassVar[str]
    #: Whether ``--precision fp16`` on the CPU is refused (convolutional networks: no fast kernels).
    refuses_cpu_fp16: ClassVar[bool] = True
    #: Working pixels allowed unless ``options.max_working_pixels`` says otherwise (about 10 GB at fp32).
    default_max_working_pixels: ClassVar[int]
    options: ModelOptions

    def __init__(self, options: ModelOptions | None = None, model: Any = None) -> None:
        """Load the network through the weights contract (``load``), or use ``model`` (tests), and put it
        on ``options.device`` at ``options.precision`` (``to_device``)."""
        super().__init__(options)
        options = self.options
        self._checkpoints: dict[str, Path] = {}
        if model is None:  # before torch is imported: a missing checkpoint fails at once
            for name in type(self).checkpoint_names(options):
                self.checkpoint_file(name)
        from ..devices import resolve_device, resolve_dtype

        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.precision, self.device)
        if self.refuses_cpu_fp16:
            refuse_cpu_fp16(self.name, self.device, self.dtype)
        self.model = self.to_device(self.load() if model is None else model)

    def checkpoint_file(self, name: str) -> Path:
        """The file of catalog checkpoint ``name`` for these options, recorded in ``loaded_files``.

        Explicit ``options.checkpoint`` > ``options.models_dir`` (else GUIDES_MODELS_DIR) > hub cache >
        download, only when ``options.download`` (else, or offline, a WeightsError at once saying how to
        get it). Resolved once per name; ``load`` loads exactly the file this returns.
        """
        path = self._checkpoints.get(name)
        if path is None:
            from ..weights.resolve import resolve_checkpoint

            path = Path(resolve_checkpoint(name, explicit=self.options.checkpoint, models_dir=self.options.models_dir,
                                           download=self.options.download))
            self._checkpoints[name] = path
        self.loaded_files = (path,)
        return path

    def load_checkpoint(self, build: Any) -> Any:
        """The network ``build()`` makes, loaded strictly from this annotator's (one) selected checkpoint
        with that checkpoint's declared container and key filters (CPU, fp32)."""
        from ..weights.load import load_checkpoint_into

        (name,) = type(self).checkpoint_names(self.options)
        declared = {checkpoint.name: checkpoint for checkpoint in type(self).checkpoints}[name]
        path = self.checkpoint_file(name)
        log.info("%s: loading %s", self.name, path)
        return load_checkpoint_into(build, path, container=declared.container, key_filters=declared.key_filters)

    @abstractmethod
    def load(self) -> Any:
        """The network, loaded strictly from its checkpoint (CPU, fp32): usually ``load_checkpoint(build)``."""

    @abstractmethod
    def to_device(self, model: Any) -> Any:
        """``model`` ready for inference on ``self.device`` at ``self.dtype``."""

    @abstractmethod
    def forward(self, images: np.ndarray) -> np.ndarray:
        """The network's predictions for RGB uint8 working images (B, H, W, 3) of one size."""

    @abstractmethod
    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        """The guide of ``item``'s input (``item.input_size``) from its ``prediction``."""

    # the engine contract (guides.annotators.base)

    def prepare(self, image: np.ndarray) -> WorkingImage:
        """The working image (``options.resolution``), refused when its size is over the limit."""
        pixels = working_image(self.name, image, self.options, self.default_max_working_pixels)
        return WorkingImage(pixels, (int(image.shape[0]), int(image.shape[1])))

    def predict(self, items: list[WorkingImage]) -> list[np.ndarray]:
        """``forward`` on the stacked working images (equal sizes: the engine batches by ``item_key``)."""
        return list(self.forward(np.stack([item.pixels for item in items])))

    def finish(self, item: WorkingImage, output: np.ndarray) -> np.ndarray:
        return self.render(output, item)

    def batch_key(self, image: np.ndarray) -> Hashable:
        return working_size(image.shape[0], image.shape[1], self.options.resolution)

    def check_finite(self, values: torch.Tensor | np.ndarray) -> None:
        """A DeviceError naming the precision when the network overflowed (fp16/bf16) or broke."""
        import torch

        finite = bool(torch.isfinite(values).all()) if isinstance(values, torch.Tensor) else bool(np.isfinite(values).all())
        if not finite:
            raise DeviceError(
                f"{self.name}: the network produced non-finite values at {self.options.precision}"
                + ("; use --precision fp32" if self.options.precision != "fp32" else "")
            )

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
