"""Segment Anything inference for ``guides sam`` and ``guides mask`` (imports torch and segment_anything).

The model, its modules, ``SamPredictor`` and the mask utilities are segment_anything's own; this
module adds what the package lacks:

* ``SamEngine``: one loaded model, the image embeddings of the last few images (computed once per image,
  several images per encoder pass, and reused for every prompt and for the automatic masks), prompts, and
* ``SamEngine.generate``: automatic mask generation that returns **exactly** the masks, scores and order
  of ``SamAutomaticMaskGenerator.generate`` (no crops), several times faster on CPU:

  - the first two-way attention block reads image keys that are the same for every point prompt
    (image embedding + the "no mask" embedding), so its image-side projections run once per image
    instead of once per point (the reference repeats the embedding ``points_per_batch`` times);
  - the predicted IoU of a mask is known before its pixels: masks at or under ``pred_iou_thresh`` are
    never upscaled, decoded or upsampled; the reference upsamples every candidate to the image size and
    then throws most of them away;
  - survivors are upsampled in small chunks and kept as boolean masks (no RLE round trip);
  - the image encoder's global attention blocks run a few query rows at a time (``encode_image``), so
    the full (heads, 4096, 4096) score matrices and their relative-position sums never exist at once;
  - several images can be encoded in one forward pass (``SamEngine.embed``): the encoder input is always
    the image padded to a 1024 px square, so any images batch together.

  On the CPU, a further gain (about 40% of the CPU time) comes from glibc's allocator keeping large
  activations on its heap; that setting is process-wide, so this module never makes it: the caller
  opts in with ``guides.tune_allocator()`` (``guides.system``) or ``GUIDES_MALLOC_TUNING=1``.

  Prompts are batched exactly as in the reference (``points_per_batch``, 64 by default): token-side
  products are small matrix multiplications whose rounding depends on the batch shape, so they always
  see the reference's batches. Only two things change which rows an operation sees: the first block's
  image-side projections run on one copy of the image instead of one per prompt, and mask upscaling,
  hypernetwork products and upsampling run on the prompts that survive the IoU filter. Those are
  row-independent on the CPU builds we test (MKL/oneDNN), and ``tests/annotators/test_sam.py`` checks
  the result bit for bit against ``SamAutomaticMaskGenerator`` with random weights (ViT-B and a small
  custom SAM). Another ``points_per_batch`` gives the same masks up to float rounding of the scores.
  On CUDA, kernels may change their reduction order with shapes, so masks can differ from the
  reference's in pixels whose logit is within rounding of the threshold (not verified on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops.boxes import batched_nms

from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
    remove_small_regions,
)

log = logging.getLogger(__name__)

MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

#: Upsampled logits per chunk when turning low-resolution logits into image-size masks.
_UPSAMPLE_CHUNK = 16
#: Prompts per chunk in the mask decoder's upscaling layers.
_UPSCALE_CHUNK = 8


def build_sam(model_type: str) -> Sam:
    """segment_anything's network for ``vit_h|vit_l|vit_b`` (random weights; use as a loading factory)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    return sam_model_registry[model_type]()


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


# ---------------------------------------------------------------------------------- the image encoder

#: Bytes of attention scores held at once by a global attention block of the image encoder.
ATTENTION_CHUNK_BYTES = 128 * 1024 * 1024


def _global_attention(attention: nn.Module, x: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
    """segment_anything's ``image_encoder.Attention.forward`` for a global block, a few rows of query
    tokens at a time: the (heads, HW, HW) score matrix (805 MB for ViT-B at 1024 px, plus two more of the
    same size for the relative-position sums) is never whole. Each query row's scores are computed by the
    same operations on the same values, and the relative-position terms are computed once as there."""
    batch, height, width, _ = x.shape
    heads = attention.num_heads
    qkv = attention.qkv(x).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, height * width, -1).unbind(0)
    if attention.use_rel_pos:
        rel_pos_h = get_rel_pos(height, height, attention.rel_pos_h)
        rel_pos_w = get_rel_pos(width, width, attention.rel_pos_w)
        r_q = q.reshape(batch * heads, height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rel_pos_h)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rel_pos_w)
    k_t = k.transpose(-2, -1)
    out = None
    for top in range(0, height, rows_per_chunk):
        bottom = min(height, top + rows_per_chunk)
        scores = (q[:, top * width : bottom * width] * attention.scale) @ k_t
        if attention.use_rel_pos:
            scores = (
                scores.view(batch * heads, bottom - top, width, height, width)
                + rel_h[:, top:bottom, :, :, None]
                + rel_w[:, top:bottom, :, None, :]
            ).view(batch * heads, (bottom - top) * width, height * width)
        part = scores.softmax(dim=-1) @ v
        del scores
        if out is None:
            out = part.new_empty(q.shape)
        out[:, top * width : bottom * width] = part
    assert out is not None
    x = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return attention.proj(x)


def encode_image(encoder: nn.Module, x: torch.Tensor, chunk_bytes: int = ATTENTION_CHUNK_BYTES) -> torch.Tensor:
    """``ImageEncoderViT.forward`` with the global attention blocks computed in query chunks of about
    ``chunk_bytes`` of scores (windowed blocks run as they are).

    A batch of images gives each image exactly its features alone: the transformer blocks (linear
    layers, layer norms, attention per image or window) are row-independent, but a convolution kernel
    picks its algorithm, and so its rounding, by batch size and memory layout (seen for the neck's 3x3
    convolution), so the patch embedding and the neck run one image at a time (a small part of the
    encoder's work), and the patch embedding's output keeps ``PatchEmbed``'s layout (a channels-first
    tensor seen channels-last), which the residual stream carries down to the neck.
    """
    x = torch.cat([encoder.patch_embed.proj(x[i : i + 1]) for i in range(x.shape[0])]).permute(0, 2, 3, 1)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks:
        if block.window_size > 0:
            x = block(x)
            continue
        batch, height, width, _ = x.shape
        row_bytes = batch * block.attn.num_heads * width * height * width * x.element_size()
        shortcut = x
        x = shortcut + _global_attention(block.attn, block.norm1(x), max(1, chunk_bytes // max(1, row_bytes)))
        x = x + block.mlp(block.norm2(x))
    x = x.permute(0, 3, 1, 2)
    return torch.cat([encoder.neck(x[i : i + 1]) for i in range(x.shape[0])])


# ---------------------------------------------------------------------------------- the fast decoder


def _attend(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment_anything's ``Attention.forward`` on already projected q, k, v (k or v may be batch-1 views).

    Batch-1 operands are broadcast to the batch of the other; ``matmul`` then sees the same contiguous
    values as in the reference, where every point carries its own copy.
    """
    heads = attention.num_heads
    q = attention._separate_heads(q, heads)
    k = attention._separate_heads(k, heads)
    v = attention._separate_heads(v, heads)
    batch = max(q.shape[0], k.shape[0])
    q, k, v = (t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t for t in (q, k, v))
    c_per_head = q.shape[-1]
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(c_per_head)
    attn = torch.softmax(attn, dim=-1)
    out = attn @ v
    out = attention._recombine_heads(out)
    return attention.out_proj(out)


def _first_block_shared_image(block: nn.Module, tokens: torch.Tensor, keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` (first layer, no query PE added before self-attention) when the
    image keys are the same for every prompt: ``keys``, ``key_pe`` are (1, HW, C), ``tokens`` (B, T, C)."""
    queries = block.self_attn(q=tokens, k=tokens, v=tokens)
    queries = block.norm1(queries)

    keys_with_pe = keys + key_pe
    cross = block.cross_attn_token_to_image
    attn_out = _attend(cross, cross.q_proj(queries + tokens), cross.k_proj(keys_with_pe), cross.v_proj(keys))
    queries = block.norm2(queries + attn_out)
    queries = block.norm3(queries + block.mlp(queries))

    back = block.cross_attn_image_to_token
    q = queries + tokens
    attn_out = _attend(back, back.q_proj(keys_with_pe), back.k_proj(q), back.v_proj(queries))
    keys = block.norm4(keys + attn_out)
    return queries, keys


def _block(block: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` (not the first layer), adding the image PE to the keys once."""
    q = queries + query_pe
    queries = block.norm1(queries + block.self_attn(q=q, k=q, v=queries))
    q = queries + query_pe
    keys_with_pe = keys + key_pe
    queries = block.norm2(queries + block.cross_attn_token_to_image(q=q, k=keys_with_pe, v=keys))
    queries = block.norm3(queries + block.mlp(queries))
    q = queries + query_pe
    keys = block.norm4(keys + block.cross_attn_image_to_token(q=keys_with_pe, k=q, v=queries))
    return queries, keys


def decode_tokens(model: Sam, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask decoder's two-way transformer for B prompts without mask inputs.

    Returns ``hs`` (B, T, C) and the per-prompt image keys ``src`` (B, HW, C), the values
    ``MaskDecoder.predict_masks`` computes. ``dense`` must be the "no mask" embedding (the same for every
    prompt), which is what lets the first block's image side run once.
    """
    decoder = model.mask_decoder
    transformer = decoder.transformer
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
    image = features + dense[:1]
    keys = image.flatten(2).permute(0, 2, 1)
    key_pe = model.prompt_encoder.get_dense_pe().flatten(2).permute(0, 2, 1)

    layers = list(transformer.layers)
    if layers and layers[0].skip_first_layer_pe:
        queries, keys = _first_block_shared_image(layers[0], tokens, keys, key_pe)
        layers = layers[1:]
    else:
        queries, keys = tokens, keys.expand(batch, -1, -1)
    for layer in layers:
        queries, keys = _block(layer, queries, keys, tokens, key_pe)
    q = queries + tokens
    k = keys + key_pe
    queries = queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
    queries = transformer.norm_final_attn(queries)
    return queries, keys


def low_res_logits(model: Sam, hs: torch.Tensor, src: torch.Tensor, rows: torch.Tensor, embedding_size: tuple[int, int]) -> torch.Tensor:
    """``MaskDecoder.predict_masks``'s mask logits (all mask tokens) for the prompts at ``rows``.

    The upscaling runs ``_UPSCALE_CHUNK`` prompts at a time: its activations (0.5 GB for 64 prompts at the
    last layer alone) never exist for the whole batch.
    """
    decoder = model.mask_decoder
    h, w = embedding_size
    tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack([mlp(tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    parts = []
    for chunk in rows.split(_UPSCALE_CHUNK):
        picked = src[chunk]
        b, _, c = picked.shape
        upscaled = decoder.output_upscaling(picked.transpose(1, 2).view(b, c, h, w))
        del picked
        b, c, h2, w2 = upscaled.shape
        parts.append((hyper_in[chunk] @ upscaled.view(b, c, h2 * w2)).view(b, -1, h2, w2))
        del upscaled
    return torch.cat(parts)


# ------------------------------------------------------------------------------------------- engine

@dataclasses.dataclass(frozen=True)
class ImageEmbedding:
    """The image encoder's output for one image, as ``SamPredictor`` holds it: ``features`` float32
    (1, C, h, w), the image's (height, width) and its size after the long-side resize to the encoder's
    input (``input_size``)."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class SamEngine:
    """One SAM model on one device: image embeddings (the last few cached), prompts, automatic masks.

    An engine holds one current image (``use``/``set_image``) for ``predict`` and ``generate``: when
    several threads or annotators share an engine, hold ``lock`` from setting the image to the last
    call that reads it.
    """

    #: Image embeddings kept (least recently used dropped first): a ViT embedding is 4 MB, and the batch
    #: engine hands each annotator of a run (``guides run sam,mask``) the same few images in turn.
    cached_images: int = 8
    #: See ``encode_image``.
    attention_chunk_bytes: int = ATTENTION_CHUNK_BYTES

    def __init__(self, model: Sam, dtype: torch.dtype = torch.float32, checkpoint: Path | None = None) -> None:
        self.model = model.eval()
        self.dtype = dtype
        #: The checkpoint file the model was loaded from (None: a model built in memory).
        self.checkpoint = checkpoint
        #: Held by whoever sets the current image until done with it (re-entrant).
        self.lock = threading.RLock()
        self.predictor = SamPredictor(self.model)
        self._embeddings: OrderedDict[tuple[Any, ...], ImageEmbedding] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        """Inference mode, plus autocast to ``dtype`` for fp16/bf16."""
        with torch.inference_mode():
            if self.dtype == torch.float32:
                yield
            else:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    yield

    @staticmethod
    def _key(image: np.ndarray) -> tuple[Any, ...]:
        return (image.shape, hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest())

    def embed(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """The embeddings of RGB uint8 (H, W, 3) images: recently seen ones (same pixels) from the cache,
        all the others in **one** encoder pass (a batch; sizes may differ: each image is resized and
        padded to the encoder's square input exactly as ``SamPredictor.set_image`` does)."""
        keys = [self._key(image) for image in images]
        found: dict[tuple[Any, ...], ImageEmbedding] = {}
        with self.lock:
            for key in keys:
                if key in self._embeddings:
                    self._embeddings.move_to_end(key)
                    found[key] = self._embeddings[key]
            missing = {key: image for key, image in zip(keys, images) if key not in found}
            if missing:
                with self._precision():
                    computed = self._encode(list(missing.values()))
                for key, embedding in zip(missing, computed):
                    found[key] = embedding
                    self._embeddings[key] = embedding
                while len(self._embeddings) > max(self.cached_images, len(missing)):
                    self._embeddings.popitem(last=False)
        return [found[key] for key in keys]

    def _encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """``SamPredictor.set_image`` (RGB input) for several images at once, the encoder run by
        ``encode_image``."""
        model, transform = self.model, self.predictor.transform
        inputs, sizes = [], []
        for image in images:
            if model.image_format != "RGB":
                image = image[..., ::-1]
            transformed = transform.apply_image(image)
            tensor = torch.as_tensor(transformed, device=self.device).permute(2, 0, 1).contiguous()[None, :, :, :]
            sizes.append((tuple(image.shape[:2]), tuple(tensor.shape[-2:])))
            inputs.append(model.preprocess(tensor))
        features = encode_image(model.image_encoder, torch.cat(inputs), self.attention_chunk_bytes)
        return [
            ImageEmbedding(features[i : i + 1].float().clone(), original_size, input_size)  # type: ignore[arg-type]
            for i, (original_size, input_size) in enumerate(sizes)
        ]

    def use(self, embedding: ImageEmbedding) -> None:
        """Make ``embedding``'s image the current one for ``predict`` and ``generate``."""
        predictor = self.predictor
        predictor.reset_image()
        predictor.features = embedding.features
        predictor.original_size, predictor.input_size = embedding.original_size, embedding.input_size
        predictor.is_image_set = True

    def set_image(self, image: np.ndarray) -> None:
        """Embed an RGB uint8 (H, W, 3) image (a recent one reuses its embedding) and make it current."""
        self.use(self.embed([image])[0])

    def reset(self) -> None:
        """Forget the current image and the cached embeddings (frees their memory)."""
        with self.lock:
            self.predictor.reset_image()
            self._embeddings.clear()

    def predict(self, points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``SamPredictor.predict(..., multimask_output=True)``: 3 bool masks (3, H, W) and their scores."""
        # SamPredictor.predict's prompt transforms, then predict_torch; the scores are converted with .float()
        # because under bf16 autocast they are bfloat16, which numpy cannot take (predict itself would fail).
        predictor = self.predictor
        if not predictor.is_image_set:
            raise RuntimeError("set_image must be called before predict")
        coords_t = labels_t = box_t = None
        if points is not None:
            coords = predictor.transform.apply_coords(points, predictor.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=predictor.device)[None, :, :]
            labels_t = torch.as_tensor(labels, dtype=torch.int, device=predictor.device)[None, :]
        if box is not None:
            box_t = torch.as_tensor(predictor.transform.apply_boxes(box, predictor.original_size), dtype=torch.float, device=predictor.device)[None, :]
        with self._precision():
            masks, scores, _ = predictor.predict_torch(coords_t, labels_t, box_t, None, True, return_logits=False)
        return masks[0].cpu().numpy().astype(bool), scores[0].float().cpu().numpy()

    def generate(self, settings: GeneratorSettings = GeneratorSettings()) -> Segments:
        """Automatic masks of the current image: ``SamAutomaticMaskGenerator(model, **settings).generate``."""
        if not self.predictor.is_image_set:
            raise RuntimeError("set_image must be called before generate")
        height, width = self.predictor.original_size
        grid = build_point_grid(settings.points_per_side) * np.array((height, width))[None, ::-1]
        parts: list[Segments] = []
        kept_boxes: list[torch.Tensor] = []
        kept_scores: list[torch.Tensor] = []
        batch = max(1, settings.points_per_batch)
        with self._precision():
            for start in range(0, len(grid), batch):
                part, boxes, scores = self._process_points(grid[start : start + batch], settings)
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

    def _process_points(self, points: np.ndarray, settings: GeneratorSettings) -> tuple[Segments, torch.Tensor, torch.Tensor]:
        """One batch of point prompts: ``SamAutomaticMaskGenerator._process_batch`` for the full-image crop."""
        model, predictor, device = self.model, self.predictor, self.device
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


def default_points_per_batch(device: torch.device, image_size: tuple[int, int]) -> int:
    """Point prompts per decoder pass: 64 (segment_anything's default, needed for bit-identical scores) on
    the CPU; on CUDA as many as fit in about half of the free memory (each prompt holds a dozen
    embedding-sized activations), between 16 and 256."""
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    height, width = image_size
    per_point = 12 * 4096 * 256 * 4 + 4 * 256 * 256 * 4 * 8 + 3 * height * width * 4
    return int(max(16, min(256, (free // 2) // per_point)))
