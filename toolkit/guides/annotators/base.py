"""The annotator contract shared by the CLI, the batch engine, the Python API and the ControlNet stage.

An annotator turns one RGB ``uint8`` image (H, W, 3) into one guide array:

* ``uint8`` (H, W) for single-channel guides (canny, lineart, masks),
* ``uint8`` (H, W, 3) RGB or (H, W, 4) RGBA for colour guides (normals, sam, depth rgba),
* ``uint16`` (H, W) for 16-bit guides (depth metric16).

Guides are always written as PNG. Channel order in arrays is RGB(A) everywhere in this package;
only ``guides.imaging`` talks to OpenCV's BGR.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

ClickDecorator = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class AnnotatorOptions:
    """Options common to every annotator. Subclasses add their own fields (all with defaults)."""

    resolution: int = 0
    """Working size: 0 keeps the input size; N resizes the short side to N as ControlNet does."""


class Annotator(ABC):
    """A loaded annotator: build it once (``Spec.load``), call it on many images."""

    Options: ClassVar[type[AnnotatorOptions]] = AnnotatorOptions
    #: click option decorators for this annotator's own ``Options`` fields (common ones are added
    #: by the CLI). Each option's Python name must equal the ``Options`` field it sets.
    cli_options: ClassVar[Sequence[ClickDecorator]] = ()

    def __init__(self, options: AnnotatorOptions) -> None:
        self.options = options
        #: The checkpoint files this annotator actually loaded (set by learned annotators once loaded);
        #: the dataset card and reports record them with their sha256 (``guides.weights.digest``).
        self.loaded_files: tuple[Path, ...] = ()

    @abstractmethod
    def annotate(self, image: np.ndarray) -> np.ndarray:
        """Return the guide of one RGB uint8 (H, W, 3) image."""

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return the guides of several images; learned annotators override this to batch."""
        return [self.annotate(image) for image in images]

    @property
    def batch_size(self) -> int:
        """How many images the batch engine hands ``annotate_batch`` at once (``options.batch_size``)."""
        return max(1, int(getattr(self.options, "batch_size", 1)))

    def batch_key(self, image: np.ndarray) -> Hashable:
        """Images with equal keys may share a batch (default: same shape)."""
        return image.shape

    def close(self) -> None:
        """Release models and device memory (optional)."""


@dataclasses.dataclass(frozen=True)
class ModelOptions(AnnotatorOptions):
    """Options common to the learned annotators; the CLI adds ``--device`` etc. for these."""

    resolution: int = 512
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 1
    models_dir: str | None = None
    """Flat folder of checkpoints under their hub file names (else GUIDES_MODELS_DIR, hub cache)."""
    checkpoint: str | None = None
    """An explicit checkpoint file, overriding every lookup."""
    download: bool = True
    """Download a checkpoint found neither as ``checkpoint``, in the models folder nor in the hub cache.
    The Python API keeps the hub's ``from_pretrained`` convention (True); the CLI sets False unless
    ``--download`` is given, so a command never starts a multi-gigabyte download unasked. False: a
    missing checkpoint fails at once (WeightsError naming ``guides models download NAME``)."""
    max_working_pixels: int | None = None
    """Refuse an image whose working size has more pixels (None: the annotator's own limit, sized to keep
    its memory to about 10 GB at fp32). Guards against extreme aspect ratios, which ``resolution``
    enlarges enormously (a 3 x 700 strip at 512 becomes 512 x 119488), and huge inputs at resolution 0."""
