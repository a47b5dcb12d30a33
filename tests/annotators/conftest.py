"""Fixtures shared by the annotator tests: the small random SAM of test_sam.py and test_mask.py, and that
SAM as a checkpoint file the annotators load."""

from __future__ import annotations

import importlib
import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest


def _build_tiny_sam(seed: int, logit_scale: float = 300.0) -> Any:
    """SAM with a 256 px input, 16x16 embedding, 32 channels; random weights that give varied masks."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    size, patch, dim = 256, 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=size, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=patch, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,),
            window_size=4, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=4),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
    ).eval()
    with torch.no_grad():
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(8)
        for conv in (sam.mask_decoder.output_upscaling[0], sam.mask_decoder.output_upscaling[3]):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(logit_scale)
            mlp.layers[-1].bias.mul_(logit_scale)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.15)  # predicted IoUs on both sides of 0
    return sam


@pytest.fixture(scope="session")
def build_tiny_sam() -> Callable[..., Any]:
    """``build_tiny_sam(seed, logit_scale=300.0)``: a SAM with a 256 px input, 16x16 embedding and 32
    channels whose random mask-upscaling kernels are spatially constant and hypernetwork outputs scaled:
    on flat colour blocks it gives dozens of distinct masks with a spread of scores (see test_sam.py)."""
    importlib.import_module("segment_anything")  # in the test extra: a missing one fails
    return _build_tiny_sam


@dataclasses.dataclass
class TinySamCheckpoint:
    """A tiny SAM saved under the public ViT-B file name, loadable through the weights contract."""

    model: Any
    """The network whose state dict is in the file (the reference for parity)."""
    models_dir: Path
    path: Path


@pytest.fixture
def tiny_sam_checkpoint(build_tiny_sam: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TinySamCheckpoint:
    """``build_tiny_sam(seed=2)`` saved as ``<tmp>/models/sam_vit_b_01ec64.pth``; ``--model vit_b`` then
    builds the tiny architecture (``guides.nets.sam_network.build_sam`` patched for this test), so loading
    runs for real (file lookup, strict keys, engine cache) in milliseconds."""
    import torch

    from guides.nets import sam_network

    model = build_tiny_sam(seed=2)
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    path = models_dir / "sam_vit_b_01ec64.pth"
    torch.save(model.state_dict(), path)
    monkeypatch.setattr(sam_network, "build_sam", lambda model_type: _build_tiny_sam(seed=0))
    return TinySamCheckpoint(model, models_dir, path)
