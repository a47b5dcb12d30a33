"""guides: ControlNet guide images that match the references, for one photo or a million.

Python API (images: a path, a PIL image, or a numpy array in **RGB** order, uint8/uint16; every
function returns a PIL image):

    >>> import guides
    >>> guides.canny("photo.png").save("edges.png")
    >>> guides.composite("dog.png", "mask.png")
    >>> guides.available()                     # registered annotators
    >>> annotator = guides.load("canny", low=50)   # build once, call on many images
    >>> annotator.annotate(rgb_array)          # -> numpy guide

Importing this package imports neither torch nor any model code.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

__version__ = "0.1.0"

from .annotators.base import Annotator  # noqa: E402
from .errors import GuidesError, InputError, UsageError, WeightsError  # noqa: E402
from .imaging import ImageLike, to_pil, to_rgb_array  # noqa: E402
from .registry import available, get  # noqa: E402
from .system import tune_allocator  # noqa: E402  (standard library only; never called by the package)

__all__ = [
    "Annotator", "GuidesError", "InputError", "UsageError", "WeightsError",
    "annotate", "available", "canny", "composite", "depth", "get", "lineart", "load", "mask", "normals", "sam",
    "tune_allocator",
]


def load(name: str, **options: Any) -> Annotator:
    """Build the annotator ``name`` (loading its model once) to call on many images."""
    return get(name).load(**options)


def annotate(name: str, image: ImageLike, **options: Any) -> Image.Image:
    """The guide of one image by annotator ``name`` (loads the model on each call: use ``load`` for many)."""
    annotator = load(name, **options)
    try:
        return to_pil(annotator.annotate(to_rgb_array(image)))
    finally:
        annotator.close()


def canny(image: ImageLike, low: int = 100, high: int = 200, resolution: int = 0,
          max_working_pixels: int | None = None) -> Image.Image:
    """Canny edges (L, 0/255), bit-exact with ``cv2.Canny(cv2.imread(path), low, high)``.

    ``max_working_pixels``: refuse an image whose working size has more pixels (default 2**28)."""
    return annotate("canny", image, low=low, high=high, resolution=resolution, max_working_pixels=max_working_pixels)


def depth(image: ImageLike, format: str = "rgba", flip: bool = True, pad: bool = True, resolution: int = 0,
          **options: Any) -> Image.Image:
    """ZoeDepth (ZoeD_N) depth: RGBA near = white as the original colouring; ``format="gray"`` (L) or
    ``"metric16"`` (I;16, metres * 256). ``options``: device, precision, models_dir, checkpoint."""
    return annotate("depth", image, format=format, flip=flip, pad=pad, resolution=resolution, **options)


def lineart(image: ImageLike, coarse: bool = False, invert: bool = False, resolution: int = 512,
            **options: Any) -> Image.Image:
    """Line art (L): dark lines on white as ``refs/cutecat_guide_lineart.png`` (``invert=True``: white on
    black, controlnet_aux's convention); ``coarse=True`` uses ``sk_model2.pth``. ``options``: device,
    precision, batch_size, models_dir, checkpoint."""
    return annotate("lineart", image, coarse=coarse, invert=invert, resolution=resolution, **options)


def normals(image: ImageLike, resolution: int = 512, **options: Any) -> Image.Image:
    """NormalBae surface normals (RGB = ((n + 1) / 2) * 255) as ``refs/cutecat_guide_normals.png``.
    ``options``: device, precision, batch_size, models_dir, checkpoint."""
    return annotate("normals", image, resolution=resolution, **options)


def sam(image: ImageLike, **options: Any) -> Image.Image:
    """Segment Anything guide (RGB): automatic masks, largest first, one flat colour each over black.

    Masks are exactly ``SamAutomaticMaskGenerator``'s; colours come from ``seed`` (same image and seed, same
    guide). Options: ``model`` (vit_h|vit_l|vit_b), ``points_per_side``, ``pred_iou_thresh``,
    ``stability_score_thresh``, ``min_region_area``, ``seed``, ``resolution``, ``device``, ``precision``...
    """
    return annotate("sam", image, **options)


def mask(image: ImageLike, **options: Any) -> Image.Image:
    """Subject mask (L): black = keep the subject, white = repaint (``invert=True`` swaps them).

    The subject: ``points=[(x, y), ...]`` / ``negative_points`` / ``box=(x0, y0, x1, y1)`` (SamPredictor's
    best of three), else the best-scored automatic mask covering the centre. Also ``dilate``, ``feather``.
    """
    return annotate("mask", image, **options)


def composite(
    image: ImageLike,
    mask: ImageLike,
    background: str | tuple[int, int, int] = "white",
    invert_mask: bool = False,
    resize_mask: bool = False,
) -> Image.Image:
    """Inpainting target: ``image`` where ``mask`` is black (< 128), ``background`` where it is white.

    A mask of one colour with varying transparency uses its alpha (opaque repaints; see
    ``guides.imaging.load_mask``). A mask that repaints everything or nothing logs a warning.
    """
    from .annotators.composite import composite as make_composite
    from .annotators.composite import parse_color
    from .imaging import load_mask

    color = parse_color(background) if isinstance(background, str) else tuple(background)
    name = str(mask) if isinstance(mask, (str, os.PathLike)) else "mask"
    result = make_composite(to_rgb_array(image), load_mask(mask), color, invert_mask, resize_mask, mask_name=name)  # type: ignore[arg-type]
    return Image.fromarray(result)
