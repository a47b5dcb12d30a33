"""Segment Anything's network, built by segment_anything, and faster exact forms of its parts (imports
torch and segment_anything).

The model and its modules are segment_anything's own; the functions here compute what some of its
modules compute, with the same operations on the same values, so the results are bit-identical on the
CPU builds we test (``tests/annotators/test_sam.py``):

* ``encode_image``: ``ImageEncoderViT.forward`` with the global attention blocks run a few query rows
  at a time, so the full (heads, 4096, 4096) score matrices and their relative-position sums never exist
  at once; several images in one pass, each getting exactly its features alone;
* ``decode_tokens``: ``TwoWayTransformer`` for a batch of point prompts of one image: the first block's
  image-side projections (the image keys are the same for every prompt: image embedding + the "no mask"
  embedding) run once per image instead of once per prompt;
* ``low_res_logits``: ``MaskDecoder``'s mask logits for chosen prompts only, the upscaling a few prompts
  at a time.

The engine that holds a model and its image embeddings is ``guides.nets.sam_engine``; the automatic mask
generator built on these functions is ``guides.nets.sam_mask_generator``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segment_anything import sam_model_registry
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import get_rel_pos

MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

#: Prompts per chunk in the mask decoder's upscaling layers.
_UPSCALE_CHUNK = 8


def build_sam(model_type: str) -> Sam:
    """segment_anything's network for ``vit_h|vit_l|vit_b`` (random weights; use as a loading factory)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown SAM model {model_type!r}; use one of {', '.join(MODEL_TYPES)}")
    return sam_model_registry[model_type]()


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
