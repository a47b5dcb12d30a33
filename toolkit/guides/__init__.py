"""guides: ControlNet guide images that match the references, for one photo or a million.

Python API (images: a path, a PIL image, or a numpy array in **RGB** order, uint8/uint16; every
function returns a PIL image):

    >>> import guides
    >>> guides.canny("photo.png").save("edges.png")
    >>> guides.composite("dog.png", "mask.png")
    >>> guides.available()                     # registered annotators
    >>> annotator = guides.load("canny", low=50)   # build once, call on many images
    >>> annotator.annotate(rgb_array)          # -> numpy guide

Every registered annotator, plugins included, is also a function of this package named after it
(``guides.depth(image, format="gray")``), its keyword arguments those of its ``Options``.

Importing this package imports neither torch nor any model code.
"""

from __future__ import annotations

import os
from typing import Any

from PIL import Image

__version__ = "0.1.0"

from .annotators.base import Annotator, AnnotatorOptions, ModelOptions  # noqa: E402
from .errors import GuidesError, InputError, UsageError, WeightsError  # noqa: E402
from .imaging import ImageLike, to_pil, to_rgb_array  # noqa: E402
from .options import option  # noqa: E402
from .registry import BUILT_IN, available, get  # noqa: E402
from .system import tune_allocator  # noqa: E402  (standard library only; never called by the package)

__all__ = [
    "Annotator", "AnnotatorOptions", "GuidesError", "InputError", "ModelOptions", "UsageError", "WeightsError",
    "annotate", "available", "composite", "get", "load", "option", "tune_allocator",
    *(name.replace("-", "_") for name in BUILT_IN),
]


def __getattr__(name: str) -> Any:
    """``guides.<annotator>(image, **options)`` for every registered annotator (built in or plugin); a
    dash in the annotator's name is an underscore here (``guides.lineart_anime``)."""
    from .registry import REGISTRY

    registered = name.replace("_", "-")
    if name.startswith("_") or registered not in REGISTRY:
        raise AttributeError(f"module 'guides' has no attribute {name!r}")
    return annotator_function(registered)


def __dir__() -> list[str]:
    return sorted({*globals(), *(name.replace("-", "_") for name in available())})


def annotator_function(name: str) -> Any:
    """The function ``guides.<name>``: the guide (a PIL image) of one image by annotator ``name``, with the
    annotator's options as keyword arguments (signature and doc derived from its ``Options``)."""
    import inspect

    from .options import option_infos

    cls = get(name).annotator_class()

    def function(image: ImageLike, **options: Any) -> Image.Image:
        return annotate(name, image, **options)

    infos = option_infos(cls.Options)
    parameters = [inspect.Parameter("image", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(info.name, inspect.Parameter.KEYWORD_ONLY, default=info.default) for info in infos]
    function.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    function.__name__ = function.__qualname__ = name.replace("-", "_")
    function.__module__ = __name__
    lines = [f"{cls.summary}", "", "Options:"] + [f"    {info.name} (default {info.default!r}): {info.help}" for info in infos]
    function.__doc__ = "\n".join(lines)
    return function


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
