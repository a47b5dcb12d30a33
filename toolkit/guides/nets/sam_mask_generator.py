"""Segment Anything's automatic mask generator, exactly: the masks, scores and order of
``SamAutomaticMaskGenerator.generate`` (no crops), several times faster (imports torch and
segment_anything).

``generate_masks`` runs on an image embedding already computed (``guides.nets.sam_engine``) with the
network's fast parts (``guides.nets.sam_network``) and segment_anything's mask utilities:

* the predicted IoU of a mask is known before its pixels: masks at or under ``pred_iou_thresh`` are
  never upscaled, decoded or upsampled; the reference upsamples every candidate to the image size and
  then throws most of them away;
* survivors are upsampled in small chunks and kept as boolean masks (no RLE round trip), packed to one
  bit a pixel until NMS has chosen;
* the first two-way attention block's image side runs once per image (``decode_tokens``).

Prompts are batched exactly as in the reference (``points_per_batch``, 64 by default): token-side
products are small matrix multiplications whose rounding depends on the batch shape, so they always
see the reference's batches. Only two things change which rows an operation sees: the first block's
image-side projections run on one copy of the image instead of one per prompt, and mask upscaling,
hypernetwork products and upsampling run on the prompts that survive the IoU filter. Those are
row-independent on the CPU builds we test (MKL/oneDNN), and ``tests/annotators/test_sam.py`` checks
the result bit for bit against ``SamAutomaticMaskGenerator`` with random weights (ViT-B and a small
custom SAM). Another ``points_per_batch`` gives the same masks up to float rounding of the scores.
On CUDA, kernels may change their reduction order with shapes, so masks can differ from the
reference's in pixels whose logit is within rounding of the threshold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ContextManager

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms

from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    remove_small_regions,
)

from .sam_network import decode_tokens, low_res_logits

log = logging.getLogger(__name__)

#: Upsampled logits per chunk when turning low-resolution logits into image-size masks.
_UPSAMPLE_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class GeneratorSettings:
    """``SamAutomaticMaskGenerator``'s settings under its own names and defaults (crops are not supported)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    crop_nms_thresh: float = 0.7
    """Used (as in the reference) only by the small-region clean-up: its NMS runs at
    ``max(box_nms_thresh, crop_nms_thresh)``."""

    def reference_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that build the equivalent ``SamAutomaticMaskGenerator``."""
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Segments:
    """Automatic masks, in the order ``SamAutomaticMaskGenerator.generate`` returns them.

    ``masks``: bool (N, H, W); ``boxes``: int64 (N, 4) XYXY (inclusive pixel coordinates, as
    ``batched_mask_to_box``); ``predicted_iou``, ``stability_score``: float32 (N,); ``points``: float64 (N, 2),
    the prompt (x, y) in image pixels that produced each mask.
    """

    masks: np.ndarray
    boxes: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    points: np.ndarray

    @property
    def areas(self) -> np.ndarray:
        """Pixels per mask (int64)."""
        return self.masks.sum(axis=(1, 2), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.masks)

    def take(self, keep: np.ndarray | list[int]) -> Segments:
        """The segments at indices ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        return Segments(self.masks[keep], self.boxes[keep], self.predicted_iou[keep], self.stability_score[keep], self.points[keep])

    @staticmethod
    def empty(height: int, width: int) -> Segments:
        return Segments(
            np.zeros((0, height, width), dtype=bool),
            np.zeros((0, 4), dtype=np.int64),
            np.zeros((0,), dtype=np.float32),
            np.zeros((0,), dtype=np.float32),
            np.zeros((0, 2), dtype=np.float64),
        )

    @staticmethod
    def concatenate(parts: list[Segments], height: int, width: int) -> Segments:
        if not parts:
            return Segments.empty(height, width)
        return Segments(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Segments)))


# ----------------------------------------------------------------------------------- post-processing


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices kept by box NMS, highest score first, exactly as the reference calls torchvision."""
    return batched_nms(boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), iou_threshold=iou_threshold)


def remove_small_regions_and_duplicates(segments: Segments, min_area: int, nms_thresh: float) -> Segments:
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` on boolean masks.

    Each mask loses holes, then islands, smaller than ``min_area`` pixels (segment_anything's
    ``remove_small_regions``); masks that changed score 0 and unchanged ones 1, and box NMS at
    ``nms_thresh`` then drops new duplicates, preferring unchanged masks.
    """
    if len(segments) == 0:
        return segments
    new_masks = []
    scores = []
    for mask in segments.masks:
        mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
        mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
        new_masks.append(torch.as_tensor(mask).unsqueeze(0))
        scores.append(float(not (changed_holes or changed_islands)))
    masks = torch.cat(new_masks, dim=0)
    boxes = batched_mask_to_box(masks)
    keep = non_max_suppression(boxes, torch.as_tensor(scores), nms_thresh).numpy()
    result = segments.take(keep)
    result.masks = masks.numpy()[keep]
    result.boxes = result.boxes.copy()
    changed = np.asarray(scores)[keep] == 0.0
    result.boxes[changed] = boxes.numpy()[keep][changed]
    return result


# ---------------------------------------------------------------------------------- generation


def generate_masks(model: Sam, predictor: SamPredictor, settings: GeneratorSettings = GeneratorSettings(),
                   precision: Callable[[], ContextManager[Any]] = contextlib.nullcontext) -> Segments:
    """Automatic masks of ``predictor``'s current image (its embedding, computed by ``model``):
    ``SamAutomaticMaskGenerator(model, **settings).generate`` without crops. The network's work and NMS
    run under ``precision()`` (``SamEngine.generate`` passes its inference mode and autocast)."""
    if not predictor.is_image_set:
        raise RuntimeError("set_image must be called before generate")
    height, width = predictor.original_size
    grid = build_point_grid(settings.points_per_side) * np.array((height, width))[None, ::-1]
    parts: list[Segments] = []
    kept_boxes: list[torch.Tensor] = []
    kept_scores: list[torch.Tensor] = []
    batch = max(1, settings.points_per_batch)
    with precision():
        for start in range(0, len(grid), batch):
            part, boxes, scores = _process_points(model, predictor, grid[start : start + batch], settings)
            if len(part):
                part.masks = np.packbits(part.masks, axis=-1)  # 1 bit a pixel until NMS has chosen
                parts.append(part)
                kept_boxes.append(boxes)
                kept_scores.append(scores)
        segments = Segments.concatenate(parts, height, width)
        if len(segments):
            keep = non_max_suppression(torch.cat(kept_boxes), torch.cat(kept_scores), settings.box_nms_thresh)
            segments = segments.take(keep.cpu().numpy())
            segments.masks = np.unpackbits(segments.masks, axis=-1, count=width).astype(bool)
    if settings.min_mask_region_area > 0:
        nms_thresh = max(settings.box_nms_thresh, settings.crop_nms_thresh)
        segments = remove_small_regions_and_duplicates(segments, settings.min_mask_region_area, nms_thresh)
    log.debug("automatic masks: %d kept of %d prompts", len(segments), len(grid))
    return segments


def _process_points(model: Sam, predictor: SamPredictor, points: np.ndarray, settings: GeneratorSettings) -> tuple[Segments, torch.Tensor, torch.Tensor]:
    """One batch of point prompts: ``SamAutomaticMaskGenerator._process_batch`` for the full-image crop."""
    device = model.device
    height, width = predictor.original_size
    transformed = predictor.transform.apply_coords(points, (height, width))
    in_points = torch.as_tensor(transformed, device=device)
    in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=device)
    sparse, dense = model.prompt_encoder(points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None)
    hs, src = decode_tokens(model, predictor.features, sparse, dense)
    iou_preds = model.mask_decoder.iou_prediction_head(hs[:, 0, :])[:, 1:].float()

    keep = iou_preds > settings.pred_iou_thresh if settings.pred_iou_thresh > 0.0 else torch.ones_like(iou_preds, dtype=torch.bool)
    rows = keep.any(dim=1).nonzero().flatten()
    if len(rows) == 0:
        return Segments.empty(height, width), torch.zeros((0, 4), dtype=torch.int64, device=device), iou_preds[:0, 0]
    embedding_size = tuple(model.prompt_encoder.image_embedding_size)
    logits = low_res_logits(model, hs, src, rows, embedding_size)[:, 1:].float()
    del hs, src
    keep = keep[rows]
    flat_keep = keep.flatten()
    candidates = logits.flatten(0, 1)[flat_keep]
    candidate_iou = iou_preds[rows].flatten()[flat_keep]
    candidate_points = np.repeat(points[rows.cpu().numpy()], keep.shape[1], axis=0)[flat_keep.cpu().numpy()]

    # Upsample in chunks, keeping only the masks that pass the stability filter as booleans.
    masks, stability, kept = [], [], []
    offset = settings.stability_score_offset
    for chunk in candidates.split(_UPSAMPLE_CHUNK):
        upsampled = model.postprocess_masks(chunk[None], predictor.input_size, predictor.original_size)[0]
        score = calculate_stability_score(upsampled, model.mask_threshold, offset)
        passing = score >= settings.stability_score_thresh if settings.stability_score_thresh > 0.0 else torch.ones_like(score, dtype=torch.bool)
        masks.append((upsampled > model.mask_threshold)[passing])
        stability.append(score[passing])
        kept.append(passing)
        del upsampled
    passing = torch.cat(kept)
    masks_t, stability_t, candidate_iou = torch.cat(masks), torch.cat(stability), candidate_iou[passing]
    candidate_points = candidate_points[passing.cpu().numpy()]
    if len(masks_t) == 0:
        return Segments.empty(height, width), torch.zeros((0, 4), dtype=torch.int64, device=device), candidate_iou
    boxes_t = batched_mask_to_box(masks_t)
    # The reference's is_box_near_crop_edge filter never removes anything for the single full-image
    # crop: every box near that crop's edge is near the image's edge too.
    segments = Segments(
        masks_t.cpu().numpy(),
        boxes_t.cpu().numpy(),
        candidate_iou.cpu().numpy(),
        stability_t.float().cpu().numpy(),
        candidate_points,
    )
    return segments, boxes_t, candidate_iou
