"""The annotator base of ``guides sam`` and ``guides mask``: the options they share (``SamModelOptions``:
the backbone and segment_anything's automatic generator knobs), and ``SamEngineAnnotator``, the staged
engine contract (``guides.annotators.base``) on a shared ``SamEngine``:

* ``prepare`` (worker threads): the working image (``options.resolution``, size-checked) and what the
  subclass adds to its item (``prepare_item``: the scaled prompts of ``mask``);
* ``predict`` (one thread, the device): image embeddings of the batch in one encoder pass (any working
  sizes batch together: the encoder input is always the padded 1024 px square), then, image by image,
  the decoder work (``predict_one``: the automatic masks of ``sam``, the subject of ``mask``) under the
  engine's lock; the outputs are at the working size;
* ``finish`` (worker threads): the subclass paints or finishes the output and resizes it back to the
  input size by nearest neighbour (``resize_nearest``), so segment colours stay flat and masks binary.

Imports no torch at import time (the engine is loaded by ``sam_engine_sharing.load_engine``).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..options import option
from . import sam_engine_sharing
from .base import Annotator, ModelOptions
from .learned import refuse_cpu_fp16, working_image
from .sam_checkpoints import MODEL_TYPES, SAM_CHECKPOINTS
from .sam_engine_sharing import SHARED_ENGINES, SamEngineCache

if TYPE_CHECKING:
    from ..nets.sam_engine import SamEngine
    from ..nets.sam_mask_generator import GeneratorSettings, Segments

#: 33.5 Mpx: the network runs at 1024 px; at the working size, masks are upsampled 16 at a time
#: (64 bytes a pixel) and kept as booleans.
DEFAULT_MAX_WORKING_PIXELS = 1 << 25


@dataclasses.dataclass(frozen=True)
class SamModelOptions(ModelOptions):
    """What ``guides sam`` and ``guides mask`` share: the backbone and the automatic generator's knobs
    (segment_anything's defaults)."""

    model: str = option("vit_h", "SAM backbone.", choices=MODEL_TYPES, label="SAM model")
    """SAM backbone: vit_h (default, as the ControlNet SAM guides), vit_l or vit_b."""
    points_per_side: int = option(32, "Point prompts per image side (points-per-side squared prompts).", min=1, max=256)
    points_per_batch: int = option(
        64, "Point prompts per mask-decoder pass (one default on every device: the masks never depend on free "
        "GPU memory).", min=1, max=1024,
    )
    """segment_anything's ``points_per_batch``: 64 (its default) gives bit-identical scores on the CPU; more
    is faster on a large GPU, and changes scores by float rounding only."""
    pred_iou_thresh: float = option(0.88, "Keep masks whose predicted IoU is above this (0 keeps all).", min=0.0, max=1.0)
    stability_score_thresh: float = option(
        0.95, "Keep masks whose stability score is at least this (0 keeps all).", min=0.0, max=1.0,
    )
    min_region_area: int = option(
        0, "Remove holes and islands smaller than this many pixels from each mask (0: off).", min=0,
    )
    """segment_anything's ``min_mask_region_area``: holes and islands smaller than this are removed."""
    max_working_pixels: int | None = option(
        None, "Refuse images whose working size (after --resolution) has more pixels.", min=1,
        default_text=f"{DEFAULT_MAX_WORKING_PIXELS:,}",
    )
    """Refuse an image whose working size has more pixels (None: ``DEFAULT_MAX_WORKING_PIXELS``)."""


@dataclasses.dataclass(frozen=True)
class SamItem:
    """A prepared image: the working image (RGB uint8 at the working size), the input's (height, width)
    and what the annotator adds (``prepare_item``)."""

    working: np.ndarray
    input_size: tuple[int, int]
    extra: Any = None


def generator_settings(options: SamModelOptions) -> GeneratorSettings:
    """``GeneratorSettings`` from the options alone: the same on every device, whatever else runs on it."""
    from ..nets.sam_mask_generator import GeneratorSettings

    return GeneratorSettings(
        points_per_side=options.points_per_side,
        points_per_batch=options.points_per_batch,
        pred_iou_thresh=options.pred_iou_thresh,
        stability_score_thresh=options.stability_score_thresh,
        min_mask_region_area=options.min_region_area,
    )


class SamEngineAnnotator(Annotator):
    """An annotator on a ``SamEngine``: loaded (or shared) once, one image embedding per image; staged
    (see the module doc). ``predict`` encodes up to ``options.batch_size`` images in one encoder pass."""

    Options: ClassVar[type[SamModelOptions]] = SamModelOptions
    options: SamModelOptions
    checkpoints = SAM_CHECKPOINTS
    default_max_working_pixels: ClassVar[int] = DEFAULT_MAX_WORKING_PIXELS

    def __init__(self, options: SamModelOptions | None = None, model: Any = None, engines: SamEngineCache | None = None) -> None:
        """Load the checkpoint of ``options.model`` (weights contract) through ``engines`` (default
        ``SHARED_ENGINES``: annotators of one process with the same model, device, precision and file
        share one engine), or use ``model``: a built segment_anything ``Sam`` (a private engine) or a
        ``SamEngine`` shared by the caller."""
        super().__init__(options)
        options = self.options
        self._engines: SamEngineCache | None = None
        self._owns_engine = False
        if model is None:
            from ..devices import resolve_device, resolve_dtype

            device = resolve_device(options.device)
            refuse_cpu_fp16(self.name, device, resolve_dtype(options.precision, device))
            self._engines = SHARED_ENGINES if engines is None else engines
            self.engine: SamEngine | None = sam_engine_sharing.load_engine(
                options.model, options.device, options.precision, options.models_dir, options.checkpoint,
                download=options.download, engines=self._engines, holder=self,
            )
        else:
            self.engine = sam_engine_sharing.engine_for(model, options.precision)
            refuse_cpu_fp16(self.name, self.engine.device, self.engine.dtype)
            self._owns_engine = self.engine is not model
        if self.engine.checkpoint is not None:
            self.loaded_files = (Path(self.engine.checkpoint),)

    @property
    def ready_engine(self) -> SamEngine:
        """The engine; a RuntimeError once ``close`` ran."""
        if self.engine is None:
            raise RuntimeError(f"{self.name}: the annotator was closed")
        return self.engine

    def working_image(self, image: np.ndarray) -> np.ndarray:
        """``image`` at the working size (``options.resolution``), refused when that is too large."""
        return working_image(self.name, image, self.options, self.default_max_working_pixels)

    def automatic_segments(self, working: np.ndarray) -> Segments:
        """segment_anything's automatic masks of ``working``, whose embedding the engine holds."""
        engine = self.ready_engine
        return engine.generate(generator_settings(self.options))

    # ------------------------------------------------------------------ the engine contract

    def prepare(self, image: np.ndarray) -> SamItem:
        """The working image (refused when over the size limit) and the subclass's ``prepare_item``."""
        working = self.working_image(image)
        input_size = (int(image.shape[0]), int(image.shape[1]))
        return SamItem(working, input_size, self.prepare_item(input_size, working.shape[:2]))

    def prepare_item(self, input_size: tuple[int, int], working_size: tuple[int, int]) -> Any:
        """What the subclass needs in its item besides the working image (default: nothing)."""
        return None

    def predict(self, items: list[SamItem]) -> list[Any]:
        """The embeddings of the batch in one encoder pass, then ``predict_one`` on each (device work)."""
        engine = self.ready_engine
        outputs: list[Any] = []
        with engine.lock:
            embeddings = engine.embed([item.working for item in items])
            for item, embedding in zip(items, embeddings):
                engine.use(embedding)
                outputs.append(self.predict_one(item))
        return outputs

    @abstractmethod
    def predict_one(self, item: SamItem) -> Any:
        """The decoder's output for ``item`` (at the working size) once the engine's current image is its."""

    @abstractmethod
    def finish(self, item: SamItem, output: Any) -> np.ndarray:
        """The guide at the input size from ``predict_one``'s output."""

    def item_key(self, item: SamItem) -> Hashable:
        """Every item may share an encoder batch (the encoder input is always the padded square)."""
        return self.name

    def batch_key(self, image: np.ndarray) -> Hashable:
        """Every image may share an encoder batch (the encoder input is always the padded square)."""
        return self.name

    def close(self) -> None:
        """Stop holding the engine: its model and embeddings are freed once no annotator holds it
        (another annotator sharing it keeps it, with its embeddings); an engine passed in by the caller
        is left as it is."""
        engine, self.engine = self.engine, None
        if engine is None:
            return
        last = self._owns_engine
        if self._engines is not None:
            last = self._engines.release(engine, self)
        elif self._owns_engine:
            engine.reset()
        device = engine.device
        del engine
        if last and device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
