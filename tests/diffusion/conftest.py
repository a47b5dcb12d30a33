"""Tiny random Stable Diffusion + ControlNet models saved as local diffusers folders, and a synthetic
reference folder, so the ControlNet stage runs end to end on the CPU in seconds.

The folders have the public repositories' layout (model_index.json, unet/, vae/, text_encoder/,
tokenizer/, scheduler/ with SD 1.5's PNDM config; ControlNets as config.json +
diffusion_pytorch_model.safetensors) and are written by ``save_pretrained``, exactly as the real ones
were. The weights are random: they prove the wiring, not image quality. ControlNet's zero-initialised
output convolutions are re-initialised with noise so that a ControlNet really changes the image (with
zeros a test of "the ControlNet is used" could not fail).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

#: SD 1.5's scheduler/scheduler_config.json, as published.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

CROSS_ATTENTION_DIM = 16


@dataclass(frozen=True)
class TinyModels:
    base: Path
    controlnets: dict[str, Path]

    def args(self, *kinds: str) -> list[str]:
        """``--base-model``/``--controlnet`` arguments for the CLI (all kinds when none given)."""
        args = ["--base-model", str(self.base)]
        for kind in kinds or tuple(self.controlnets):
            args += ["--controlnet", f"{kind}={self.controlnets[kind]}"]
        return args


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_tokenizer(folder: Path) -> None:
    """A character-level CLIP BPE tokenizer (no merges) covering the prompts' characters, in the files
    SD 1.5's ``tokenizer/`` folder holds: vocab.json, merges.txt, special_tokens_map.json,
    tokenizer_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789,-.'!?")
    vocab: dict[str, int] = {}
    for character in characters:
        vocab[character] = len(vocab)
    for character in characters:
        vocab[character + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {
        "bos_token": _added_token("<|startoftext|>"),
        "eos_token": _added_token("<|endoftext|>"),
        "pad_token": "<|endoftext|>",
        "unk_token": _added_token("<|endoftext|>"),
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        **special,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _tiny_unet_kwargs() -> dict:
    # Attention only at the lowest resolution keeps a 64x64-latent step in milliseconds.
    return dict(
        block_out_channels=(8, 8, 16),
        layers_per_block=1,
        in_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def build_tiny_models(root: Path) -> TinyModels:
    import torch
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer_dir = root / "tokenizer-src"
    write_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    unet = UNet2DConditionModel(
        **_tiny_unet_kwargs(),
        sample_size=64,
        out_channels=4,
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(  # four blocks: the real scale factor 8 (512 px -> 64x64 latents)
        block_out_channels=(4, 4, 4, 4),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    base = root / "tiny-sd15"
    pipe.save_pretrained(str(base))
    # The published tokenizer files and scheduler config exactly (save_pretrained writes its own forms).
    shutil.rmtree(base / "tokenizer")
    write_tokenizer(base / "tokenizer")
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2))

    controlnets = {}
    from guides.diffusion.settings import control_kinds

    for index, kind in enumerate(control_kinds()):  # every SD 1.5 kind the built-in annotators declare
        torch.manual_seed(100 + index)
        net = ControlNetModel(**_tiny_unet_kwargs(), conditioning_embedding_out_channels=(4, 4, 4, 4))
        with torch.no_grad():
            zero_convs = [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]
            for conv in zero_convs:
                conv.weight.normal_(0.0, 0.3)
                conv.bias.normal_(0.0, 0.1)
        folder = root / f"tiny-controlnet-{kind}"
        net.save_pretrained(str(folder))
        controlnets[kind] = folder
    return TinyModels(base, controlnets)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """Random tiny SD 1.5-shaped base model and a ControlNet per reference kind, built once per session."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


def _synthetic_photo(size: int = 512, seed: int = 7) -> np.ndarray:
    """A smooth synthetic photo with shapes (so Canny finds edges), RGB uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([x * 200 + 30, y * 180 + 40, (1 - x) * 120 + y * 60], axis=2)
    for _ in range(12):
        cx, cy, radius = rng.integers(40, size - 40, 2).tolist() + [int(rng.integers(15, 80))]
        color = rng.integers(0, 256, 3).tolist()
        cv2.circle(image, (cx, cy), radius, color, -1)
    image += rng.normal(0, 3, image.shape)
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def synthetic_refs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference folder laid out as refs/: input photo, guides, expected images (synthetic).

    ``cutecat_guide_canny.png`` is cv2.Canny of the photo as cv2.imread gives it (BGR), so our canny
    annotator must reproduce it exactly; the expected images are unrelated noise (the tiny random
    models cannot reproduce anything, so a run must report failures with finite metrics).
    """
    folder = tmp_path_factory.mktemp("synthetic-refs")
    photo = _synthetic_photo()
    Image.fromarray(photo).save(folder / "cutecat_init.png")
    bgr = cv2.imread(str(folder / "cutecat_init.png"))
    Image.fromarray(cv2.Canny(bgr, 100, 200)).save(folder / "cutecat_guide_canny.png")
    depth = np.tile(np.linspace(0, 255, 512, dtype=np.float32)[:, None], (1, 512)).astype(np.uint8)
    rgba = np.dstack([depth, depth, depth, np.full_like(depth, 255)])
    Image.fromarray(rgba, "RGBA").save(folder / "cutecat_guide_depth.png")
    rng = np.random.default_rng(3)
    from guides.diffusion.settings import reproduce_kinds

    for kind in reproduce_kinds():
        noise = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
        Image.fromarray(cv2.GaussianBlur(noise, (0, 0), 4)).save(folder / f"expected_controlnet_{kind}.png")
    return folder


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def _console(ctx: click.Context) -> None:
    from guides.cli.main import main

    main(list(ctx.args))


@pytest.fixture
def guides_cli() -> Callable[..., object]:
    """``guides_cli(*args)``: run ``guides ARGS`` through the console entry point (real exit codes and
    one-line error messages) in click's CliRunner."""

    def invoke(*args: str):
        return CliRunner().invoke(_console, [str(arg) for arg in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, isolated hub cache with HF_HUB_OFFLINE set: nothing can be found or downloaded."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("GUIDES_MODELS_DIR", raising=False)
    return cache


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread
    hand-offs cost more than the work: run this folder's tests on one torch thread (restored after)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
