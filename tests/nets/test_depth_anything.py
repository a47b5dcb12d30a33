"""Depth Anything V2: our network against transformers' ``DepthAnythingForDepthEstimation`` (same config,
the same random weights), both public key layouts loaded strictly, the original's input size rule.

Random weights prove wiring and parity, not depth quality. A random network's raw output is tiny (std
about 3e-5 before the final ReLU, a third of it clipped), so the reference's last 1x1 convolution is scaled
(``scaled_reference``): the relative depth then varies as about 1 +- 0.3 and is (almost) nowhere clipped. The transformers
file is written by ``save_pretrained`` (``model.safetensors`` with the hub's keys); the original ``.pth``
gets the original repository's keys through ``original_to_hf``, the mapping of transformers' public
conversion script ``convert_depth_anything_to_hf.py`` (original -> hf) written out here on its own, so
it checks our inverse mapping (``from_hf_keys``) independently.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from guides.errors import WeightsError
from guides.nets.depth_anything import CONFIGS, build, from_hf_keys, network_input_size, to_channels_last
from guides.weights.load import load_checkpoint_into, load_state_dict_into

RELATIVE_BOUND = 1e-4
"""Largest |ours - reference| allowed, relative to the reference's largest value."""


def hf_config(size: str):  # type: ignore[no-untyped-def]
    """transformers' config of Depth Anything V2 ``size``, as the hub's config.json gives it (the conversion
    script's ``get_dpt_config``: DINOv2 of that size, out_indices, fusion and neck sizes)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden, layers, heads, out_indices, fusion, neck = {
        "small": (384, 12, 6, [3, 6, 9, 12], 64, [48, 96, 192, 384]),
        "base": (768, 12, 12, [3, 6, 9, 12], 128, [96, 192, 384, 768]),
        "large": (1024, 24, 16, [5, 12, 18, 24], 256, [256, 512, 1024, 1024]),
    }[size]
    backbone = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, image_size=518,
                            patch_size=14, out_indices=out_indices, apply_layernorm=True, reshape_hidden_states=False,
                            layerscale_value=1.0)
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=14,
                               fusion_hidden_size=fusion, neck_hidden_sizes=neck, depth_estimation_type="relative")


def scaled_reference(size: str = "small", seed: int = 0):  # type: ignore[no-untyped-def]
    """transformers' model of ``size`` with random weights: built on the meta device and filled with a small
    spread (std 0.02, windows of one random draw; LayerNorm and layer-scale weights 1), much faster than transformers' own
    initialisation; the last convolution rescaled (calibrated on a random input) so the relative depth
    varies as 1 +- 0.3 instead of being tiny and largely clipped by the final ReLU."""
    from transformers import DepthAnythingForDepthEstimation

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(hf_config(size))
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 24, generator=generator) * 0.02  # windows of one draw: Large has 335 M weights
    with torch.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "lambda1")):
                parameter.fill_(1.0)
            else:
                start = (index * 104_729) % (pool.numel() - parameter.numel() + 1)
                parameter.copy_(pool[start : start + parameter.numel()].view(parameter.shape))
        # calibrate the last 1x1 convolution on a small random input: output about 1 +- 0.3
        conv3 = model.head.conv3
        conv3.bias.zero_()
        seen: list[torch.Tensor] = []
        hook = conv3.register_forward_hook(lambda module, args, out: seen.append(out))
        model(pixel_values=torch.randn(1, 3, 112, 168, generator=generator))
        hook.remove()
        mean, std = float(seen[0].mean()), float(seen[0].std())
        conv3.weight.mul_(0.3 / std)
        conv3.bias.fill_(1.0 - mean * 0.3 / std)
    return model


def save_hf_file(model, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    """``save_pretrained``'s ``model.safetensors`` (the hub's exact keys)."""
    model.save_pretrained(folder)
    return folder / "model.safetensors"


def original_to_hf(key: str) -> str:
    """The original repository's key -> transformers' (``convert_depth_anything_to_hf.py``'s
    ``create_rename_keys``; qkv is split there: ``attn.qkv`` maps to ``attention.attention.{part}``, with
    ``{part}`` left for the caller)."""
    rules = [
        (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
        (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
        (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
        (r"pretrained\.patch_embed\.proj\.(\w+)", r"backbone.embeddings.patch_embeddings.projection.\1"),
        (r"pretrained\.blocks\.(\d+)\.ls(\d)\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
        (r"pretrained\.blocks\.(\d+)\.norm(\d)\.(\w+)", r"backbone.encoder.layer.\1.norm\2.\3"),
        (r"pretrained\.blocks\.(\d+)\.mlp\.(fc\d)\.(\w+)", r"backbone.encoder.layer.\1.mlp.\2.\3"),
        (r"pretrained\.blocks\.(\d+)\.attn\.proj\.(\w+)", r"backbone.encoder.layer.\1.attention.output.dense.\2"),
        (r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(\w+)", r"backbone.encoder.layer.\1.attention.attention.{part}.\2"),
        (r"pretrained\.norm\.(\w+)", r"backbone.layernorm.\1"),
        (r"depth_head\.projects\.(\d)\.(\w+)", r"neck.reassemble_stage.layers.\1.projection.\2"),
        (r"depth_head\.resize_layers\.(\d)\.(\w+)", r"neck.reassemble_stage.layers.\1.resize.\2"),
        (r"depth_head\.scratch\.output_conv1\.(\w+)", r"head.conv1.\1"),
        (r"depth_head\.scratch\.output_conv2\.0\.(\w+)", r"head.conv2.\1"),
        (r"depth_head\.scratch\.output_conv2\.2\.(\w+)", r"head.conv3.\1"),
    ]
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    match = re.fullmatch(r"depth_head\.scratch\.layer(\d)_rn\.weight", key)
    if match:
        return f"neck.convs.{int(match[1]) - 1}.weight"
    match = re.fullmatch(r"depth_head\.scratch\.refinenet(\d)\.(.+)", key)
    assert match, key
    layer = {1: 3, 2: 2, 3: 1, 4: 0}[int(match[1])]
    rest = match[2].replace("out_conv", "projection")
    rest = re.sub(r"resConfUnit(\d)\.conv(\d)", r"residual_layer\1.convolution\2", rest)
    return f"neck.fusion_stage.layers.{layer}.{rest}"


def original_state_dict(hf_state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """The original ``.pth`` layout of a transformers state dict: each original key's tensor (qkv joined)."""
    ours = build_meta_keys(hf_state, dim)
    out = {}
    for key in ours:
        hf_key = original_to_hf(key)
        if "{part}" in hf_key:
            out[key] = torch.cat([hf_state[hf_key.format(part=part)] for part in ("query", "key", "value")])
        else:
            out[key] = hf_state[hf_key]
    return out


def build_meta_keys(hf_state: dict[str, torch.Tensor], dim: int) -> list[str]:
    size = {384: "small", 768: "base", 1024: "large"}[dim]
    with torch.device("meta"):
        return list(build(size).state_dict())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(reference model, its model.safetensors, the same weights as an original .pth)."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("depth-anything-small")
    reference = scaled_reference()
    hf_file = save_hf_file(reference, folder / "hf")
    original = folder / "depth_anything_v2_vits.pth"
    torch.save(original_state_dict(load_file(str(hf_file)), 384), original)
    return reference, hf_file, original


def _relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


@pytest.mark.parametrize("height, width", [(518, 518), (518, 686)], ids=["square-518", "nonsquare-518x686"])
def test_small_matches_transformers_at_full_size(small, height: int, width: int) -> None:
    """The full-size Small at 518 (its trained grid: no position interpolation) and 518 x 686 (37 x 49
    patches: interpolated), from the safetensors file through ``from_hf_keys``."""
    reference, hf_file, _ = small
    ours = to_channels_last(load_checkpoint_into(lambda: build("small"), hf_file, container="safetensors",
                                                 key_filters=(from_hf_keys,)))
    torch.manual_seed(height + width)
    x = torch.randn(1, 3, height, width)
    with torch.inference_mode():
        expected = reference(pixel_values=x).predicted_depth
        got = ours(x)
    assert got.shape == expected.shape == (1, height, width)
    assert _relative_error(got, expected) <= RELATIVE_BOUND, _relative_error(got, expected)
    spread = float(expected.max() - expected.min())
    assert float((got - expected).abs().max()) / spread <= 1e-3, "within 0.1% of the range: a 1/4-level guide difference"
    clipped = float((expected == 0).float().mean())
    assert clipped < 0.01 and spread > 0.2, f"scaled head: {clipped:.4f} clipped, range {spread:.3f}"


def test_the_original_layout_loads_strictly_and_gives_the_same_network(small) -> None:
    reference, hf_file, original = small
    from_hf = load_checkpoint_into(lambda: build("small"), hf_file, container="safetensors", key_filters=(from_hf_keys,))
    from_original = load_checkpoint_into(lambda: build("small"), original, container="state_dict")
    for key, tensor in from_hf.state_dict().items():
        assert torch.equal(tensor, from_original.state_dict()[key]), key
    x = torch.randn(2, 3, 56, 84)  # a batch of two: each image's depth is its own
    with torch.inference_mode():
        expected = reference(pixel_values=x).predicted_depth
        assert _relative_error(from_original(x), expected) <= RELATIVE_BOUND
        assert _relative_error(from_original(x[1:])[0], expected[1]) <= RELATIVE_BOUND


def _hub_keys_on_meta(size: str) -> dict[str, torch.Tensor]:
    """The keys and shapes ``save_pretrained`` would write for ``size``, without allocating the weights:
    transformers' model built on the meta device, its state dict through its own save-time renaming."""
    from transformers import DepthAnythingForDepthEstimation
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = DepthAnythingForDepthEstimation(hf_config(size))
    return dict(revert_weight_conversion(model, model.state_dict()))


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_key_layouts_of_every_size(size: str) -> None:
    """The hub files' keys map onto ours one to one with the right shapes (Base and Large on the meta device:
    no memory), and our keys are the original repository's (the conversion script's names)."""
    hub = _hub_keys_on_meta(size)
    assert any(".attention.attention.query." in key for key in hub), "the hub's names, not transformers' in-memory ones"
    with torch.device("meta"):
        ours = build(size).state_dict()
    mapped = from_hf_keys(hub)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.items()}
    hub_from_original = set()
    for key in ours:
        name = original_to_hf(key)
        hub_from_original.update({name.format(part=p) for p in ("query", "key", "value")} if "{part}" in name else {name})
    assert hub_from_original == set(hub)
    config = CONFIGS[size]
    assert len([k for k in ours if k.endswith("attn.qkv.weight")]) == config.depth


@pytest.mark.parametrize("size", ["base", "large"])
def test_tiny_forward_of_base_and_large(size: str) -> None:
    """The full-width Base and Large on a 28 x 42 input (2 x 3 patches: position embeddings resized from
    37 x 37)."""
    from transformers.core_model_loading import revert_weight_conversion

    reference = scaled_reference(size, seed=3)
    generator = torch.Generator().manual_seed(3)
    hub = dict(revert_weight_conversion(reference, reference.state_dict()))
    ours = load_state_dict_into(lambda: build(size), hub, key_filters=(from_hf_keys,))
    x = torch.randn(1, 3, 28, 42, generator=generator)
    with torch.inference_mode():
        expected = reference(pixel_values=x).predicted_depth
        got = ours(x)
    assert got.shape == (1, 28, 42) and float(expected.std()) > 0.01
    assert _relative_error(got, expected) <= RELATIVE_BOUND, _relative_error(got, expected)


def test_unexplained_keys_fail_loudly() -> None:
    hub = _hub_keys_on_meta("small")
    with pytest.raises(WeightsError) as raised:
        from_hf_keys({**hub, "backbone.register_tokens": torch.zeros(1)})
    assert str(raised.value) == "keys not in the transformers Depth Anything layout: backbone.register_tokens"
    with torch.device("meta"):
        original = build("small").state_dict()
    with pytest.raises(WeightsError) as raised:
        from_hf_keys(dict(original))
    assert str(raised.value).endswith("; these are the original layout's keys: use --weights original")
    no_value = {k: v for k, v in hub.items() if k != "backbone.encoder.layer.4.attention.attention.value.bias"}
    with pytest.raises(WeightsError, match="^layer 4: attention bias without value$"):
        from_hf_keys(no_value)


def original_resize_size(height: int, width: int, size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """The original ``Resize.get_size`` (keep_aspect_ratio, lower_bound, ensure_multiple_of) in NumPy."""
    scale_h, scale_w = size / height, size / width
    scale_h = scale_w = max(scale_h, scale_w)

    def constrain(x: float) -> int:
        y = int(np.round(x / multiple) * multiple)
        if y < size:
            y = int(np.ceil(x / multiple) * multiple)
        return y

    return constrain(scale_h * height), constrain(scale_w * width)


@pytest.mark.parametrize("height, width", [(518, 518), (300, 400), (400, 300), (512, 512), (1, 1), (3, 700),
                                           (1080, 1920), (37, 1000), (999, 1001), (520, 521)])
def test_network_input_size_is_the_originals(height: int, width: int) -> None:
    expected = original_resize_size(height, width)
    assert network_input_size(height, width) == expected
    assert min(expected) >= 518 and expected[0] % 14 == 0 and expected[1] % 14 == 0
    assert network_input_size(height, width, 364) == original_resize_size(height, width, 364)


def test_sides_must_be_multiples_of_14() -> None:
    with torch.device("meta"):
        model = build("small")
    with pytest.raises(ValueError, match="multiples of 14, got 30 x 28"):
        model(torch.zeros(1, 3, 30, 28, device="meta"))


def test_folding_the_layer_scales_keeps_the_function(small) -> None:
    """``for_inference`` (the annotator's form): layer scales folded into ``attn.proj`` / ``mlp.fc2``, equal
    up to float rounding; folding twice changes nothing."""
    from guides.nets.depth_anything import for_inference

    _, hf_file, _ = small
    plain = load_checkpoint_into(lambda: build("small"), hf_file, container="safetensors", key_filters=(from_hf_keys,))
    folded = for_inference(for_inference(load_checkpoint_into(
        lambda: build("small"), hf_file, container="safetensors", key_filters=(from_hf_keys,))))
    assert all(block.folded and bool((block.ls1.gamma == 1).all()) for block in folded.pretrained.blocks)
    x = torch.randn(1, 3, 70, 98)
    with torch.inference_mode():
        assert _relative_error(folded(x), plain(x)) <= 1e-5
