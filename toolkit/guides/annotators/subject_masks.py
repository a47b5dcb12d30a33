"""How ``guides mask`` turns SAM's output into an inpainting mask: the best of SamPredictor's three
masks for prompts (``best_of_three``), the automatic subject rule (``automatic_subject``) and the
finishing of the subject into the mask (``finish_mask``: invert, dilate, feather). numpy and OpenCV."""

from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from ..nets.sam_mask_generator import Segments


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
