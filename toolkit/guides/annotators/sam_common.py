"""What ``guides sam``, ``guides mask`` and ``guides inpaint-target`` share: loading a SAM engine, the
deterministic segment colours, painting, prompt parsing, the automatic subject rule and mask finishing.

Imports only numpy, OpenCV and click; torch and segment_anything are imported by ``load_engine``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import weakref
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click
import cv2
import numpy as np

from ..errors import InputError, UsageError
from .base import Annotator, ModelOptions
from .learned import check_model_options, refuse_cpu_fp16, working_image

if TYPE_CHECKING:
    from ..nets.sam_fast import SamEngine, Segments

log = logging.getLogger(__name__)

#: Model type -> checkpoint name in ``guides.weights.catalog``.
MODEL_CHECKPOINTS = {"vit_h": "sam-vit-h", "vit_l": "sam-vit-l", "vit_b": "sam-vit-b"}
MODEL_TYPES = tuple(MODEL_CHECKPOINTS)

Point = tuple[float, float]
Box = tuple[float, float, float, float]


# ------------------------------------------------------------------------------------------ loading


def check_model(model: str) -> None:
    if model not in MODEL_CHECKPOINTS:
        raise UsageError(f"unknown SAM model {model!r}; use one of {', '.join(MODEL_TYPES)}")


EngineKey = tuple[str, str, str, str]


class SamEngineCache:
    """Loaded SAM engines by (model, device, precision, resolved checkpoint file), shared by the
    annotators that acquire them: ``guides run sam,mask`` (or ``inpaint-target`` beside ``sam``) loads
    one model and encodes each image once.

    Thread-safe: one lock guards the cache, and a load (seconds, gigabytes) runs under a lock of its own key
    only, so two threads asking for the same engine load it once while other keys, ``release`` and ``close``
    of other annotators are not held up. An engine stays cached while an annotator holds it: ``release`` by
    its last holder drops it from the cache and frees its image embeddings; an annotator dropped without
    ``close`` stops holding it when it is garbage collected. Annotators built without a cache use
    ``SHARED_ENGINES``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakValueDictionary[EngineKey, SamEngine] = weakref.WeakValueDictionary()
        self._holders: weakref.WeakKeyDictionary[SamEngine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
        self._loading: dict[EngineKey, threading.Lock] = {}

    def _held(self, engine: SamEngine, holder: Any) -> SamEngine:
        """Record that ``holder`` holds ``engine`` (call with ``self._lock`` held)."""
        self._holders.setdefault(engine, weakref.WeakSet()).add(holder)
        return engine

    def acquire(self, key: EngineKey, load: Callable[[], SamEngine], holder: Any) -> SamEngine:
        """The engine cached under ``key``, else ``load()``'s (then cached); ``holder`` now holds it."""
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                return self._held(engine, holder)
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                engine = self._engines.get(key)
                if engine is not None:  # loaded by the thread this one waited for
                    return self._held(engine, holder)
            try:
                engine = load()
                with self._lock:
                    self._engines[key] = engine
                    return self._held(engine, holder)
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def release(self, engine: SamEngine, holder: Any) -> bool:
        """``holder`` no longer holds ``engine``; True when no one does any more (the engine is then
        removed from the cache and its embeddings freed)."""
        with self._lock:
            holders = self._holders.get(engine)
            if holders is None:  # not acquired here (or already released by its last holder)
                return False
            holders.discard(holder)
            if holders:
                return False
            del self._holders[engine]
            for key in [key for key, cached in self._engines.items() if cached is engine]:
                del self._engines[key]
        engine.reset()
        return True

    def holders(self, engine: SamEngine) -> int:
        """How many live annotators hold ``engine`` (for tests and diagnostics)."""
        with self._lock:
            holders = self._holders.get(engine)
            return 0 if holders is None else len(holders)

    def __len__(self) -> int:
        with self._lock:
            return len(self._engines)


#: The cache of annotators built without one (the CLI's, ``guides.load``'s): how the annotators of one
#: process share a model. Pass ``engines=SamEngineCache()`` to an annotator to keep it apart.
SHARED_ENGINES = SamEngineCache()


def load_engine(model: str, device: str, precision: str, models_dir: str | None, checkpoint: str | None,
                download: bool = True, engines: SamEngineCache | None = None, holder: Any = None) -> SamEngine:
    """Find the checkpoint (weights contract), load it strictly into segment_anything's network, move it
    to ``device`` and wrap it in a ``SamEngine`` running at ``precision`` (its ``checkpoint`` is the file
    loaded); with ``engines``, an engine cached there for the same model, device, precision and file is
    shared, and ``holder`` holds it (``SamEngineCache.release``)."""
    check_model(model)
    from functools import partial

    from ..devices import resolve_device, resolve_dtype
    from ..nets import sam_fast
    from ..weights.catalog import CHECKPOINTS
    from ..weights.load import load_checkpoint_into
    from ..weights.resolve import resolve_checkpoint

    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    name = MODEL_CHECKPOINTS[model]
    path = Path(resolve_checkpoint(name, explicit=checkpoint, models_dir=models_dir, download=download))

    def load() -> SamEngine:
        network = load_checkpoint_into(partial(sam_fast.build_sam, model), path, container=CHECKPOINTS[name].container)
        log.info("SAM %s from %s on %s (%s)", model, path, torch_device, precision)
        return sam_fast.SamEngine(network.to(torch_device), dtype=dtype, checkpoint=path)

    if engines is None:
        return load()
    return engines.acquire((model, str(torch_device), precision, str(path.resolve())), load, holder)


def engine_for(model: Any, dtype_name: str = "fp32") -> SamEngine:
    """Wrap an already built segment_anything ``Sam`` (or pass a ``SamEngine`` through): for tests and
    for sharing one model, and its cached image embedding, between annotators."""
    from ..devices import resolve_dtype
    from ..nets.sam_fast import SamEngine

    if isinstance(model, SamEngine):
        return model
    return SamEngine(model, dtype=resolve_dtype(dtype_name, model.device))


def generator_settings(engine: SamEngine, image_size: tuple[int, int], points_per_side: int, pred_iou_thresh: float,
                       stability_score_thresh: float, min_region_area: int) -> Any:
    """``GeneratorSettings`` from the CLI knobs; point batches sized for the engine's device."""
    from ..nets.sam_fast import GeneratorSettings, default_points_per_batch

    return GeneratorSettings(
        points_per_side=points_per_side,
        points_per_batch=default_points_per_batch(engine.device, image_size),
        pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh,
        min_mask_region_area=min_region_area,
    )


def check_generator_options(points_per_side: int, pred_iou_thresh: float, stability_score_thresh: float, min_region_area: int) -> None:
    """The checks click applies on the command line, for the Python API."""
    if not 1 <= points_per_side <= 256:
        raise UsageError(f"points_per_side must be between 1 and 256, got {points_per_side}")
    for name, value in (("pred_iou_thresh", pred_iou_thresh), ("stability_score_thresh", stability_score_thresh)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise UsageError(f"{name} must be between 0 and 1, got {value!r}")
    if min_region_area < 0:
        raise UsageError(f"min_region_area must be 0 or more, got {min_region_area}")


def generator_cli_options() -> list[Any]:
    """``--points-per-side/--pred-iou-thresh/--stability-score-thresh/--min-region-area``."""
    return [
        click.option("--points-per-side", type=click.IntRange(1, 256), default=32, show_default=True,
                     help="Point prompts per image side (points-per-side squared prompts)."),
        click.option("--pred-iou-thresh", type=click.FloatRange(0.0, 1.0), default=0.88, show_default=True,
                     help="Keep masks whose predicted IoU is above this (0 keeps all)."),
        click.option("--stability-score-thresh", type=click.FloatRange(0.0, 1.0), default=0.95, show_default=True,
                     help="Keep masks whose stability score is at least this (0 keeps all)."),
        click.option("--min-region-area", type=click.IntRange(0), default=0, show_default=True,
                     help="Remove holes and islands smaller than this many pixels from each mask (0: off)."),
    ]


@dataclasses.dataclass(frozen=True)
class SamModelOptions(ModelOptions):
    """What ``guides sam`` and ``guides mask`` share: the backbone and the automatic generator's knobs
    (segment_anything's defaults)."""

    model: str = "vit_h"
    """SAM backbone: vit_h (default, as the ControlNet SAM guides), vit_l or vit_b."""
    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    min_region_area: int = 0
    """segment_anything's ``min_mask_region_area``: holes and islands smaller than this are removed."""


def sam_cli_options() -> list[Any]:
    """``--model`` and the generator's options (``generator_cli_options``)."""
    return [
        click.option("--model", type=click.Choice(MODEL_TYPES), default="vit_h", show_default=True, help="SAM backbone."),
        *generator_cli_options(),
    ]


class SamEngineAnnotator(Annotator):
    """An annotator on a ``SamEngine``: loaded (or shared) once, one image embedding per image.

    ``annotate_batch`` encodes up to ``options.batch_size`` images in one encoder pass (any sizes: the
    encoder input is always the padded 1024 px square), then runs the prompts image by image. Each guide
    is computed at the working size (``options.resolution``) and comes out at the input size: resized
    back by nearest neighbour (``resize_nearest``), so segment colours stay flat and masks binary.
    """

    #: The annotator's name in messages.
    name: ClassVar[str]

    options: SamModelOptions
    #: 33.5 Mpx: the network runs at 1024 px; at the working size, masks are upsampled 16 at a time
    #: (64 bytes a pixel) and kept as booleans.
    default_max_working_pixels: ClassVar[int] = 1 << 25

    def __init__(self, options: SamModelOptions, model: Any = None, engines: SamEngineCache | None = None) -> None:
        """Load the checkpoint of ``options.model`` (weights contract) through ``engines`` (default
        ``SHARED_ENGINES``: annotators of one process with the same model, device, precision and file
        share one engine), or use ``model``: a built segment_anything ``Sam`` (a private engine) or a
        ``SamEngine`` shared by the caller."""
        super().__init__(options)
        check_model(options.model)
        check_model_options(self.name, options)
        check_generator_options(options.points_per_side, options.pred_iou_thresh, options.stability_score_thresh, options.min_region_area)
        self.check_options()
        self._engines: SamEngineCache | None = None
        self._owns_engine = False
        if model is None:
            from ..devices import resolve_device, resolve_dtype

            device = resolve_device(options.device)
            refuse_cpu_fp16(self.name, device, resolve_dtype(options.precision, device))
            self._engines = SHARED_ENGINES if engines is None else engines
            self.engine: SamEngine | None = load_engine(
                options.model, options.device, options.precision, options.models_dir, options.checkpoint,
                download=options.download, engines=self._engines, holder=self,
            )
        else:
            self.engine = engine_for(model, options.precision)
            refuse_cpu_fp16(self.name, self.engine.device, self.engine.dtype)
            self._owns_engine = self.engine is not model
        if self.engine.checkpoint is not None:
            self.loaded_files = (Path(self.engine.checkpoint),)

    def check_options(self) -> None:
        """Refuse the subclass's own bad option values (UsageError), before any loading."""

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
        options = self.options
        engine = self.ready_engine
        settings = generator_settings(engine, working.shape[:2], options.points_per_side, options.pred_iou_thresh,
                                      options.stability_score_thresh, options.min_region_area)
        return engine.generate(settings)

    def batch_key(self, image: np.ndarray) -> Hashable:
        """Every image may share an encoder batch (the encoder input is always the padded square)."""
        return self.name

    def annotate(self, image: np.ndarray) -> np.ndarray:
        return self.annotate_batch([image])[0]

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Guides of ``images`` (input size each): encoder passes of up to ``batch_size`` images."""
        engine = self.ready_engine
        working = [self.working_image(image) for image in images]
        results: list[np.ndarray] = []
        with engine.lock:
            for start in range(0, len(images), self.batch_size):
                chunk = range(start, min(len(images), start + self.batch_size))
                embeddings = engine.embed([working[i] for i in chunk])
                for i, embedding in zip(chunk, embeddings):
                    engine.use(embedding)
                    results.append(self.annotate_working(images[i], working[i]))
        return results

    @abstractmethod
    def annotate_working(self, image: np.ndarray, working: np.ndarray) -> np.ndarray:
        """The guide of ``image`` (input size) once the engine's current image is ``working``."""

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


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """``array`` (H, W[, C], any dtype) at (height, width) by nearest neighbour: output pixel (i, j) is
    the source pixel that contains its centre (row ``floor((i + 0.5) * H / height)``, computed in
    integers). Values are copied, never blended: a segment guide
    keeps exactly its flat colours (segments smaller than a pixel of the output can vanish) and a mask
    stays binary."""
    source_h, source_w = array.shape[:2]
    if (source_h, source_w) == (height, width):
        return array
    rows = ((2 * np.arange(height, dtype=np.int64) + 1) * source_h) // (2 * height)  # exact integers
    cols = ((2 * np.arange(width, dtype=np.int64) + 1) * source_w) // (2 * width)
    return array[rows[:, None], cols[None, :]]


# ------------------------------------------------------------------------------------------ colours


def segment_colors(count: int, seed: int) -> np.ndarray:
    """``count`` distinct, non-black RGB colours (uint8 (count, 3)), a pure function of ``seed``.

    Colours are drawn one at a time from ``numpy.random.default_rng(seed)`` (3 integers in [0, 256)),
    skipping black and repeats, so the first k colours do not depend on ``count``: the k-th largest
    segment gets the same colour whatever the number of segments.
    """
    if seed < 0:
        raise UsageError(f"seed must be 0 or more, got {seed}")
    rng = np.random.default_rng(seed)
    colors = np.zeros((count, 3), dtype=np.uint8)
    seen = {(0, 0, 0)}
    filled = 0
    while filled < count:
        color = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if color in seen:
            continue
        seen.add(color)
        colors[filled] = color
        filled += 1
    return colors


def paint_segments(masks: np.ndarray, seed: int = 0, areas: np.ndarray | None = None) -> np.ndarray:
    """The ControlNet SAM guide: RGB uint8 (H, W, 3), black where no mask.

    Masks (bool (N, H, W)) are painted largest first (area descending; equal areas keep their order),
    one flat colour each, so smaller masks lie on top. The i-th largest gets ``segment_colors(N, seed)[i]``.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    count, height, width = masks.shape
    if areas is None:
        areas = masks.sum(axis=(1, 2))
    order = np.argsort(-np.asarray(areas, dtype=np.int64), kind="stable")
    colors = segment_colors(count, seed)
    labels = np.full((height, width), -1, dtype=np.int64)
    for rank, index in enumerate(order):
        labels[masks[index]] = rank
    palette = np.concatenate([colors, np.zeros((1, 3), dtype=np.uint8)])  # label -1 -> black
    return palette[labels]


# ------------------------------------------------------------------------------------------ prompts


def _numbers(text: str, count: int, what: str) -> tuple[float, ...]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != count:
        raise ValueError(f"{what} must be {count} comma-separated numbers, got {text!r}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} must be {count} comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers, got {text!r}")
    return values


def parse_point(value: str | Sequence[float]) -> Point:
    """``"X,Y"`` (pixels, x to the right, y down) or a pair of numbers -> (x, y)."""
    if isinstance(value, str):
        x, y = _numbers(value, 2, "a point")
    else:
        values = tuple(value)
        if len(values) != 2:
            raise ValueError(f"a point must be (x, y), got {value!r}")
        x, y = _numbers(",".join(str(v) for v in values), 2, "a point")
    return (x, y)


def parse_box(value: str | Sequence[float]) -> Box:
    """``"X0,Y0,X1,Y1"`` or four numbers -> (x0, y0, x1, y1) with x0 < x1 and y0 < y1."""
    text = value if isinstance(value, str) else ",".join(str(v) for v in tuple(value))
    x0, y0, x1, y1 = _numbers(text, 4, "a box")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"a box must be X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1, got {text!r}")
    return (x0, y0, x1, y1)


def normalize_points(values: Iterable[Any] | None, what: str) -> tuple[Point, ...]:
    """A sequence of points in any accepted form -> tuple of (x, y); a UsageError names the bad one."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    points = []
    for value in values:
        try:
            points.append(parse_point(value))
        except (ValueError, TypeError) as error:
            raise UsageError(f"{what}: {error}") from None
    return tuple(points)


def normalize_box(value: Any) -> Box | None:
    if value is None:
        return None
    try:
        return parse_box(value)
    except (ValueError, TypeError) as error:
        raise UsageError(f"box: {error}") from None


class PointType(click.ParamType):
    """Click type for ``X,Y``."""

    name = "X,Y"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Point:
        try:
            return parse_point(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


class BoxType(click.ParamType):
    """Click type for ``X0,Y0,X1,Y1``."""

    name = "X0,Y0,X1,Y1"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Box:
        try:
            return parse_box(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def scale_prompts(points: Sequence[Point], box: Box | None, source_size: tuple[int, int], target_size: tuple[int, int]) -> tuple[list[Point], Box | None]:
    """Check prompts against the input image ((height, width)) and map them to the working size."""
    height, width = source_size
    for x, y in points:
        if not (0 <= x < width and 0 <= y < height):
            raise InputError(None, f"point {x:g},{y:g} is outside the {width}x{height} image")
    if box is not None:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < width and 0 <= y0 < height and 0 < x1 <= width and 0 < y1 <= height):
            raise InputError(None, f"box {x0:g},{y0:g},{x1:g},{y1:g} is outside the {width}x{height} image")
    sy, sx = target_size[0] / height, target_size[1] / width
    scaled = [(x * sx, y * sy) for x, y in points]
    scaled_box = None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
    return scaled, scaled_box


# ------------------------------------------------------------------------------------------ subjects


def best_of_three(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """SamPredictor's multimask output -> the mask with the highest predicted score (first on ties)."""
    return masks[int(np.argmax(scores))]


def automatic_subject(segments: Segments, height: int, width: int) -> int | None:
    """The automatic subject rule: among the automatic masks that cover the centre pixel
    (row ``height // 2``, column ``width // 2``), the one with the highest predicted IoU; ties go to the
    higher stability score, then the larger area, then the earlier mask. ``None`` when no mask covers it."""
    cy, cx = height // 2, width // 2
    covering = [i for i in range(len(segments)) if segments.masks[i, cy, cx]]
    if not covering:
        return None
    areas = segments.areas
    return max(covering, key=lambda i: (float(segments.predicted_iou[i]), float(segments.stability_score[i]), int(areas[i]), -i))


def finish_mask(subject: np.ndarray, invert: bool = False, dilate: int = 0, feather: int = 0) -> np.ndarray:
    """Subject (bool (H, W)) -> inpainting mask uint8 (H, W) in the convention of ``inpainting-mask.png``.

    White (255) = repaint, black (0) = keep. By default the subject is kept (black) and everything else
    is repainted; ``invert`` repaints the subject instead. ``dilate`` N grows the white area by N pixels
    (a disc of radius N); a negative N shrinks it. ``feather`` N > 0 blurs the edge (Gaussian, kernel
    2N + 1), giving a soft, no longer binary mask.
    """
    white = subject if invert else ~subject
    mask = np.where(white, np.uint8(255), np.uint8(0))
    if dilate:
        radius = abs(int(dilate))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        operation = cv2.dilate if dilate > 0 else cv2.erode
        mask = operation(mask, kernel, borderType=cv2.BORDER_REPLICATE)
    if feather > 0:
        size = 2 * int(feather) + 1
        mask = cv2.GaussianBlur(mask, (size, size), 0, borderType=cv2.BORDER_REPLICATE)
    return mask
