"""The annotator contract shared by the CLI, the batch engines, the Python API and the ControlNet stage.

An annotator turns one RGB ``uint8`` image (H, W, 3) into one guide array:

* ``uint8`` (H, W) for single-channel guides (canny, lineart, masks),
* ``uint8`` (H, W, 3) RGB or (H, W, 4) RGBA for colour guides (normals, sam, depth rgba),
* ``uint16`` (H, W) for 16-bit guides (depth metric16).

Guides are always written as PNG. Channel order in arrays is RGB(A) everywhere in this package;
only ``guides.imaging`` talks to OpenCV's BGR.

**An annotator declares itself, as data, in its own module** (class attributes of its ``Annotator``
subclass): ``name``, ``summary`` (one line), ``Options`` (a frozen dataclass subclassing
``AnnotatorOptions``: each field's help, choices and range in its metadata, see ``guides.options``),
``checkpoints`` (the files it may load, ``guides.weights.declarations.Checkpoint``) and ``controlnets``
(the ControlNets its guide is meant for). The CLI command, ``guides models``, ``models/README.md``, the
reproduce settings, the dataset card and the benchmarks derive from these; annotator modules import
neither click nor the CLI, nor torch at import time.

**Two ways to compute a guide**:

* ``annotate(image) -> guide``: the whole job on one image (canny);
* the three stages of device work, which the batch engine runs as a pipeline (``prepare`` and ``finish``
  in worker threads, overlapping ``predict`` on the device):

  - ``prepare(image) -> item``: CPU work before the network (resize, pad, normalise); may run in worker
    threads, so it must not touch shared mutable state;
  - ``predict(items: list) -> list``: one batch of up to ``batch_size`` items whose ``item_key`` is equal,
    on the device; called from one thread only;
  - ``finish(item, output) -> np.ndarray``: CPU work after it (un-pad, resize back, colour); may run in
    worker threads.

  An annotator implementing the three gets ``annotate(image) = finish(item, predict([item])[0])`` with
  ``item = prepare(image)``, and ``annotate_batch`` batching items by ``item_key``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..options import check_options, option
from ..weights.declarations import MODELS_DIR_ENV, Checkpoint, ControlNet
from ..weights.union_models import UnionMode


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """A JSON document an annotator makes beside each guide, from the same computation (openpose: the
    OpenPose keypoints). The annotator command writes it with ``--<name>-out DIR``; ``guides run`` beside
    each guide (``<guide stem>.json``); ``guides dataset`` as the column ``<annotator>_<name>``."""

    name: str
    """``keypoints``: the option ``--keypoints-out`` and the dataset column ``openpose_keypoints``."""
    help: str
    """One line: what the document holds and its format."""

    @property
    def option(self) -> str:
        """The annotator command's option (``--keypoints-out``)."""
        return f"--{self.name}-out"


@dataclasses.dataclass(frozen=True)
class AnnotatorOptions:
    """Options common to every annotator. Subclasses add their own fields (all with defaults); values are
    checked (``guides.options.check_options``) when the options are built."""

    resolution: int = option(0, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    """Working size: 0 keeps the input size; N resizes the short side to N as ControlNet does."""

    def __post_init__(self) -> None:
        check_options(self)


class Annotator:
    """A loaded annotator: build it once (``guides.load``), call it on many images."""

    #: The command and registry name (``guides NAME``; guides are written as ``<stem>.NAME.png``).
    name: ClassVar[str]
    #: One line for ``guides --help`` and the docs.
    summary: ClassVar[str]
    Options: ClassVar[type[AnnotatorOptions]] = AnnotatorOptions
    #: The checkpoint files this annotator may load; ``checkpoint_names`` picks those its options select.
    checkpoints: ClassVar[tuple[Checkpoint, ...]] = ()
    #: The ControlNets its guide is meant for, the reference one first (hub id, conditioning scale).
    controlnets: ClassVar[tuple[ControlNet, ...]] = ()
    #: The union-ControlNet conditions its guide serves (``guides.weights.union_models``).
    union_modes: ClassVar[tuple[UnionMode, ...]] = ()
    #: A JSON document it can make beside each guide (openpose: the keypoints); None: guides only.
    sidecar: ClassVar[Sidecar | None] = None

    def __init__(self, options: AnnotatorOptions | None = None) -> None:
        self.options = type(self).Options() if options is None else options
        #: The checkpoint files this annotator actually loaded (set by learned annotators once loaded);
        #: the dataset card and reports record them with their sha256 (``guides.weights.digest``).
        self.loaded_files: tuple[Path, ...] = ()

    # ------------------------------------------------------------------ declarations

    @classmethod
    def checkpoint_names(cls, options: AnnotatorOptions) -> tuple[str, ...]:
        """Names of the declared checkpoints an annotator with ``options`` loads (``Checkpoint.when``)."""
        return tuple(checkpoint.name for checkpoint in cls.checkpoints if checkpoint.selected_by(options))

    @classmethod
    def is_staged(cls) -> bool:
        """Whether this class implements ``prepare``/``predict``/``finish`` (the engine pipelines those)."""
        return all(getattr(cls, stage) is not getattr(Annotator, stage) for stage in ("prepare", "predict", "finish"))

    @classmethod
    def implements_annotate(cls) -> bool:
        """Whether this class has its own ``annotate`` (or the three stages, which give one)."""
        return cls.annotate is not Annotator.annotate or cls.is_staged()

    # ------------------------------------------------------------------ computing guides

    def annotate(self, image: np.ndarray) -> np.ndarray:
        """The guide of one RGB uint8 (H, W, 3) image (staged annotators: ``finish(prepare, predict)``)."""
        if not type(self).is_staged():
            raise NotImplementedError(f"{type(self).__qualname__} implements neither annotate nor prepare/predict/finish")
        item = self.prepare(image)
        return self.finish(item, self.predict([item])[0])

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The guides of several images. Staged annotators: items grouped by ``item_key`` in batches of up to
        ``batch_size`` per ``predict`` call (input order kept); others: ``annotate`` image by image."""
        if not type(self).is_staged():
            return [self.annotate(image) for image in images]
        items = [self.prepare(image) for image in images]
        results: list[Any] = [None] * len(items)
        for chunk in group_items([self.item_key(item) for item in items], self.batch_size):
            outputs = self.predict([items[i] for i in chunk])
            if len(outputs) != len(chunk):
                raise RuntimeError(f"{self.name}: predict returned {len(outputs)} outputs for {len(chunk)} items")
            for i, output in zip(chunk, outputs):
                results[i] = self.finish(items[i], output)
        return results

    def annotate_with_sidecar(self, image: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The guide of one image and its ``sidecar`` document (annotators declaring a ``sidecar``; staged
        ones: ``finish_with_sidecar(prepare, predict)``)."""
        if type(self).sidecar is None:
            raise NotImplementedError(f"{type(self).__qualname__} declares no sidecar")
        item = self.prepare(image)
        return self.finish_with_sidecar(item, self.predict([item])[0])

    def finish_with_sidecar(self, item: Any, output: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """``finish`` and the ``sidecar`` document of the same item (worker threads), computed once."""
        raise NotImplementedError(f"{type(self).__qualname__} declares no sidecar")

    def prepare(self, image: np.ndarray) -> Any:
        """CPU work before the network for one image (worker threads): the item ``predict`` takes."""
        raise NotImplementedError

    def predict(self, items: list[Any]) -> list[Any]:
        """One batch of prepared items on the device (one thread only): one output per item."""
        raise NotImplementedError

    def finish(self, item: Any, output: Any) -> np.ndarray:
        """CPU work after the network (worker threads): the guide of ``item`` from its ``output``."""
        raise NotImplementedError

    def item_key(self, item: Any) -> Hashable:
        """Items with equal keys may share a ``predict`` batch (default: equal array shapes)."""
        shape = getattr(item, "shape", None)
        return tuple(shape) if shape is not None else None

    @property
    def batch_size(self) -> int:
        """How many images the engines hand ``annotate_batch`` / ``predict`` at once (``options.batch_size``)."""
        return max(1, int(getattr(self.options, "batch_size", 1)))

    def batch_key(self, image: np.ndarray) -> Hashable:
        """Images with equal keys may share an ``annotate_batch`` call (default: same shape)."""
        return image.shape

    def close(self) -> None:
        """Release models and device memory (optional)."""


def group_items(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices of items in chunks of at most ``batch_size`` that share a key (input order kept)."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [indices[start : start + batch_size] for indices in groups.values() for start in range(0, len(indices), batch_size)]


@dataclasses.dataclass(frozen=True)
class ModelOptions(AnnotatorOptions):
    """Options common to the learned annotators (a network on a device)."""

    resolution: int = option(512, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.")
    precision: str = option("fp32", "Numeric precision of the network.", choices=("fp32", "fp16", "bf16"))
    batch_size: int = option(1, "Images of the same working size per forward pass.", min=1, max=1024, label="batch size")
    models_dir: str | None = option(
        None, f"Flat folder of checkpoints under their hub file names [env: {MODELS_DIR_ENV}].",
        envvar=MODELS_DIR_ENV, path="dir",
    )
    """Flat folder of checkpoints under their hub file names (else GUIDES_MODELS_DIR, hub cache)."""
    checkpoint: str | None = option(None, "Use this checkpoint file.", path="file")
    """An explicit checkpoint file, overriding every lookup."""
    download: bool = option(
        True, "Download missing checkpoints from the Hugging Face hub (otherwise a missing checkpoint is an error).",
        cli_default=False,
    )
    """Download a checkpoint found neither as ``checkpoint``, in the models folder nor in the hub cache.
    The Python API keeps the hub's ``from_pretrained`` convention (True); the CLI sets False unless
    ``--download`` is given, so a command never starts a multi-gigabyte download unasked. False: a
    missing checkpoint fails at once (WeightsError naming ``guides models download NAME``)."""
    max_working_pixels: int | None = option(
        None, "Refuse images whose working size (after --resolution) has more pixels.", min=1,
        default_text="the annotator's limit",
    )
    """Refuse an image whose working size has more pixels (None: the annotator's own limit, sized to keep
    its memory to about 10 GB at fp32). Guards against extreme aspect ratios, which ``resolution``
    enlarges enormously (a 3 x 700 strip at 512 becomes 512 x 119488), and huge inputs at resolution 0."""
