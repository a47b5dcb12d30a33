"""The inpainting composite: keep the image where the mask is black, paint the background where white.

``composite(kitchen_dog, inpainting_mask)`` equals ``refs/inpainting-target.png`` bit for bit. Masks are
grayscale (``guides.imaging.load_mask``: the grey level, ``cv2.COLOR_RGB2GRAY``, of the mask composited
on white; or, for a mask of one colour whose transparency varies, its alpha: opaque repaints) and
thresholded at 128: values >= 128 are "repaint" (white), values < 128 are "keep" (black). A mask that
repaints every pixel or none is almost always a mistake (a transparent mask read the wrong way, an
inverted mask): ``composite`` logs a warning naming the mask.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
from PIL import ImageColor

from ..errors import UsageError

MASK_THRESHOLD = 128

logger = logging.getLogger(__name__)


def parse_color(value: str) -> tuple[int, int, int]:
    """A CSS/PIL colour name or ``#rrggbb`` / ``rgb(r,g,b)`` string -> (r, g, b)."""
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise UsageError(f"unknown colour {value!r}; use a name like white or a hex value like #ff8800") from None
    return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]


def binarize_mask(mask: np.ndarray, invert: bool = False) -> np.ndarray:
    """Grayscale (H, W) or RGB (H, W, 3) uint8 mask -> bool (H, W), True where the area is to be repainted."""
    gray = mask if mask.ndim == 2 else cv2.cvtColor(mask, cv2.COLOR_RGB2GRAY)
    repaint = gray >= MASK_THRESHOLD
    return ~repaint if invert else repaint


def composite(
    image: np.ndarray,
    mask: np.ndarray,
    background: tuple[int, int, int] = (255, 255, 255),
    invert_mask: bool = False,
    resize_mask: bool = False,
    mask_name: str = "mask",
) -> np.ndarray:
    """Return RGB uint8: ``image`` where the mask keeps, ``background`` where it repaints.

    ``image`` is an RGB uint8 array (``guides.imaging.to_rgb_array``), ``mask`` a grayscale uint8 array
    (``guides.imaging.load_mask``, which honours transparency) or an RGB one (its grey level). A mask of
    another size is an error unless ``resize_mask`` (nearest-neighbour, so it stays binary).
    ``mask_name`` names the mask in the warning logged when it repaints everything or nothing.
    """
    if mask.shape[:2] != image.shape[:2]:
        if not resize_mask:
            raise UsageError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}; "
                "pass --resize-mask to resize it"
            )
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    repaint = binarize_mask(mask, invert_mask)
    _warn_if_degenerate(repaint, mask_name)
    result = image.copy()
    result[repaint] = np.asarray(background, dtype=np.uint8)
    return result


def _warn_if_degenerate(repaint: np.ndarray, mask_name: str) -> None:
    """One warning line when the mask repaints the whole image or none of it."""
    if repaint.all():
        what = "repaints the whole image (no pixel is kept)"
    elif not repaint.any():
        what = "repaints nothing (the result is the image itself)"
    else:
        return
    logger.warning("%s: the mask %s; white repaints and black keeps (a one-colour mask with transparency: "
                   "opaque repaints), --invert-mask swaps them", mask_name, what)
