"""The inpainting composite: keep the image where the mask is black, paint the background where white.

``composite(kitchen_dog, inpainting_mask)`` equals ``refs/inpainting-target.png`` bit for bit. Masks are
read as grayscale (``cv2.COLOR_RGB2GRAY`` of the RGB mask, alpha composited on white first) and
thresholded at 128: values >= 128 are "repaint" (white), values < 128 are "keep" (black).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import ImageColor

from ..errors import UsageError

MASK_THRESHOLD = 128


def parse_color(value: str) -> tuple[int, int, int]:
    """A CSS/PIL colour name or ``#rrggbb`` / ``rgb(r,g,b)`` string -> (r, g, b)."""
    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise UsageError(f"unknown colour {value!r}; use a name like white or a hex value like #ff8800") from None
    return tuple(int(c) for c in rgb[:3])  # type: ignore[return-value]


def binarize_mask(mask_rgb: np.ndarray, invert: bool = False) -> np.ndarray:
    """RGB uint8 mask -> bool (H, W), True where the area is to be repainted."""
    gray = cv2.cvtColor(mask_rgb, cv2.COLOR_RGB2GRAY)
    repaint = gray >= MASK_THRESHOLD
    return ~repaint if invert else repaint


def composite(
    image: np.ndarray,
    mask: np.ndarray,
    background: tuple[int, int, int] = (255, 255, 255),
    invert_mask: bool = False,
    resize_mask: bool = False,
) -> np.ndarray:
    """Return RGB uint8: ``image`` where the mask keeps, ``background`` where it repaints.

    ``image`` and ``mask`` are RGB uint8 arrays (use ``guides.imaging.to_rgb_array``). A mask of
    another size is an error unless ``resize_mask`` (nearest-neighbour, so it stays binary).
    """
    if mask.shape[:2] != image.shape[:2]:
        if not resize_mask:
            raise UsageError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.shape[1]}x{image.shape[0]}; "
                "pass --resize-mask to resize it"
            )
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    repaint = binarize_mask(mask, invert_mask)
    result = image.copy()
    result[repaint] = np.asarray(background, dtype=np.uint8)
    return result
