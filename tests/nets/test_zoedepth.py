"""ZoeD_N: loads the ``ZoeD_M12_N.pt`` layout strictly and matches controlnet_aux's ZoeDepth.

Random weights prove wiring and parity, not depth quality. A default-initialised ZoeDepth predicts an
almost constant depth, which the percentile colouring would stretch into float noise, so the reference
network's metric head (``conv2``, seed bins, projectors, attractors) is scaled by 12 to make the depth
vary by metres, and the spread is asserted. The full-size reference is built once per session; its
outputs are computed in the fixture and the 1.4 GB model is freed before the tests compare.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from guides.errors import WeightsError
from guides.nets.zoedepth import (
    TINY_CONFIG,
    ZoeDepth,
    infer_depth,
    network_input_size,
    padding_for,
    relative_position_index,
    zoed_n,
)
from guides.weights.load import load_checkpoint_into, load_state_dict_into

HEAD_SCALE = 12.0
SCALED_HEADS = ("conv2", "seed_bin_regressor", "seed_projector", "projectors", "attractors")
INDEX_KEY = "core.core.pretrained.model.blocks.{}.attn.relative_position_index"


def _reference_network() -> torch.nn.Module:
    """controlnet_aux's ZoeDepth (ZoeD_N config, random weights, timm BEiT-L/16-384)."""
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth as ReferenceZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    return ReferenceZoeDepth.build_from_config(get_config("zoedepth", "infer")).eval()


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    """torchvision's ToTensor on an RGB uint8 image, batched (what ``infer_pil`` feeds ``infer``)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)


@dataclass
class Reference:
    checkpoint: Path
    keys: dict[str, tuple[int, ...]]
    image: np.ndarray
    depth: np.ndarray
    """controlnet_aux ``infer`` (pad + flip) of ``image``: (H, W) float32 metres."""
    depth_plain: np.ndarray
    """The same without padding and flip."""


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, make_photo: Callable[..., np.ndarray]) -> Reference:
    """Random ZoeD_N weights saved as ``ZoeD_M12_N.pt`` is (``{"model": state_dict}`` with the 24
    ``relative_position_index`` tables old timm saved), and controlnet_aux's depth of a test image."""
    torch.manual_seed(0)
    network = _reference_network()
    with torch.no_grad():
        for name in SCALED_HEADS:
            for parameter in getattr(network, name).parameters():
                parameter.mul_(HEAD_SCALE)
    state = dict(network.state_dict())
    keys = {k: tuple(v.shape) for k, v in state.items()}
    for block in range(24):
        state[INDEX_KEY.format(block)] = relative_position_index(24, 24)
    path = tmp_path_factory.mktemp("zoedepth") / "ZoeD_M12_N.pt"
    torch.save({"model": state}, path)
    # A wide image keeps the network input small (128 x 512 with padding, 96 x 512 without: BEiT grids
    # of 8 x 32 and 6 x 32, so the relative position tables are resized) and the test fast.
    image = make_photo(7, 32, 192)
    with torch.no_grad():
        depth = network.infer(_as_tensor(image))[0, 0].numpy()
        plain = network.infer(_as_tensor(image), pad_input=False, with_flip_aug=False)[0, 0].numpy()
    del network, state
    gc.collect()
    return Reference(path, keys, image, depth, plain)


@pytest.fixture(scope="session")
def ours(reference: Reference) -> ZoeDepth:
    """Our ZoeD_N loaded from the reference checkpoint through the depth annotator's loader."""
    from guides.annotators.depth import load_network

    return load_network(checkpoint=str(reference.checkpoint))


@pytest.fixture
def reuse_network(ours: ZoeDepth, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, str | None]]:
    """Make the depth annotator's loader hand out the session's network (records its arguments)."""
    import guides.annotators.depth as depth_module

    calls: list[tuple[str | None, str | None]] = []

    def load_network(models_dir: str | None = None, checkpoint: str | None = None) -> ZoeDepth:
        calls.append((models_dir, checkpoint))
        return ours

    monkeypatch.setattr(depth_module, "load_network", load_network)
    monkeypatch.delenv("GUIDES_MODELS_DIR", raising=False)
    return calls


def _max_relative(ours: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(ours - expected) / np.abs(expected)))


# ------------------------------------------------------------------------------------ layout, loading


def test_relative_position_index_equals_timm() -> None:
    from timm.models.beit import gen_relative_position_index

    for grid in [(24, 24), (32, 32), (24, 32), (20, 32), (1, 1), (1, 7), (5, 2)]:
        assert torch.equal(relative_position_index(*grid), gen_relative_position_index(grid)), grid


def test_meta_build_fills_the_beit_buffers_with_timms_values_patching_nothing() -> None:
    """After a meta-device build our network fills the BEiT's computed buffers itself (one index table per
    window size); they equal what timm computes in a plain build, and timm and torch are never patched."""
    import timm.models.beit as timm_beit
    from torch import nn

    from guides.weights.load import build_on_meta

    gen_index, register_parameter = timm_beit.gen_relative_position_index, nn.Module.register_parameter
    seen: list[bool] = []

    def factory() -> ZoeDepth:
        seen.append(timm_beit.gen_relative_position_index is gen_index and nn.Module.register_parameter is register_parameter)
        network = ZoeDepth(TINY_CONFIG)
        seen.append(timm_beit.gen_relative_position_index is gen_index and nn.Module.register_parameter is register_parameter)
        return network

    built = build_on_meta(factory)
    assert seen == [True, True]  # built once (no fallback plain build), nothing swapped while building
    assert timm_beit.gen_relative_position_index is gen_index and nn.Module.register_parameter is register_parameter
    assert all(p.is_meta for p in built.parameters())
    plain = ZoeDepth(TINY_CONFIG)  # timm computes its own tables here
    blocks = built.core.core.pretrained.model.blocks
    for ours, theirs in zip(blocks, plain.core.core.pretrained.model.blocks):
        for name in ("relative_position_index", "k_bias"):
            mine, timms = getattr(ours.attn, name), getattr(theirs.attn, name)
            assert not mine.is_meta and mine.dtype == timms.dtype and torch.equal(mine, timms), name
    assert blocks[0].attn.relative_position_index.data_ptr() != blocks[1].attn.relative_position_index.data_ptr()


def test_network_input_size_equals_reference_resize() -> None:
    from controlnet_aux.zoe.zoedepth.models.base_models.midas import Resize

    resize = Resize(512, 384, keep_aspect_ratio=True, ensure_multiple_of=32, resize_method="minimal")
    sizes = [(512, 512), (608, 608), (384, 512), (136, 212), (96, 160), (1080, 1920), (1920, 1080),
             (7, 9), (333, 777), (48, 48), (600, 800), (1000, 1), (16, 4000)]
    for height, width in sizes:
        expected_width, expected_height = resize.get_size(width, height)
        expected = (max(int(expected_height), 32), max(int(expected_width), 32))
        assert network_input_size(height, width) == expected, (height, width)


def test_padding_is_the_originals() -> None:
    assert padding_for(512, 512) == (48, 48)
    assert padding_for(96, 160) == (20, 26)
    assert padding_for(5, 5) == (4, 4)


def test_state_dict_layout_equals_controlnet_aux(reference: Reference) -> None:
    from guides.weights.load import build_on_meta

    ours = {k: tuple(v.shape) for k, v in build_on_meta(zoed_n).state_dict().items()}
    assert len(reference.keys) == 511
    assert sorted(set(ours) ^ set(reference.keys)) == []
    assert [k for k in ours if ours[k] != reference.keys[k]] == []


def test_loads_the_real_format_strictly(reference: Reference, ours: ZoeDepth) -> None:
    saved = torch.load(reference.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    assert list(saved) == ["model"] and len(saved["model"]) == 511 + 24
    for key, value in ours.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key


def _tiny_state() -> dict[str, torch.Tensor]:
    """A tiny ZoeDepth's state dict plus saved index tables, as an old-timm file would hold them."""
    torch.manual_seed(1)
    state = dict(ZoeDepth(TINY_CONFIG).state_dict())
    for block in range(TINY_CONFIG.depth):
        state[INDEX_KEY.format(block)] = relative_position_index(24, 24)
    return state


def test_index_tables_are_checked_then_dropped() -> None:
    factory = lambda: ZoeDepth(TINY_CONFIG)  # noqa: E731
    state = _tiny_state()
    model = load_state_dict_into(factory, dict(state), key_filters=("drop_computed_buffers",))
    assert torch.equal(model.conv2.weight, state["conv2.weight"])

    with pytest.raises(WeightsError, match=r"unexpected: core\.core\.pretrained\.model\.blocks\.0\.attn\.relative_position_index"):
        load_state_dict_into(factory, dict(state))

    tampered = dict(state)
    tampered[INDEX_KEY.format(2)] = relative_position_index(24, 24).flip(0)
    with pytest.raises(WeightsError, match=r"differ.*blocks\.2\.attn\.relative_position_index"):
        load_state_dict_into(factory, tampered, key_filters=("drop_computed_buffers",))


def test_other_key_differences_are_errors_naming_them() -> None:
    factory = lambda: ZoeDepth(TINY_CONFIG)  # noqa: E731
    missing = _tiny_state()
    del missing["attractors.3._net.2.bias"]
    with pytest.raises(WeightsError, match=r"1 missing: attractors\.3\._net\.2\.bias"):
        load_state_dict_into(factory, missing, key_filters=("drop_computed_buffers",))
    extra = _tiny_state()
    extra["core.core.pretrained.model.pos_embed"] = torch.zeros(1, 577, 32)
    with pytest.raises(WeightsError, match=r"1 unexpected: core\.core\.pretrained\.model\.pos_embed"):
        load_state_dict_into(factory, extra, key_filters=("drop_computed_buffers",))
    reshaped = _tiny_state()
    reshaped["conv2.weight"] = reshaped["conv2.weight"][:, :8]
    with pytest.raises(WeightsError, match=r"another shape: conv2\.weight"):
        load_state_dict_into(factory, reshaped, key_filters=("drop_computed_buffers",))


def test_checkpoint_file_without_filter_fails(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"model": _tiny_state()}, path)
    factory = lambda: ZoeDepth(TINY_CONFIG)  # noqa: E731
    model = load_checkpoint_into(factory, path, container="model_dict", key_filters=("drop_computed_buffers",))
    assert not any(p.is_meta for p in model.parameters())
    with pytest.raises(WeightsError, match="relative_position_index"):
        load_checkpoint_into(factory, path, container="model_dict")


# ---------------------------------------------------------------------------------------------- parity


def test_metric_depth_parity_with_pad_and_flip(reference: Reference, ours: ZoeDepth) -> None:
    depth = infer_depth(ours, _as_tensor(reference.image))[0, 0].numpy()
    expected = reference.depth
    spread = (float(expected.min()), float(expected.max()))
    # The scaled heads make the depth vary (measured 5.80 .. 6.31 m on this image; unscaled: about 1 mm).
    assert spread[1] - spread[0] > 0.3, f"reference depth barely varies: {spread}"
    assert depth.shape == expected.shape == reference.image.shape[:2]
    relative = _max_relative(depth, expected)
    assert relative <= 1e-4, f"max relative difference {relative:.3g} (reference depth {spread} m)"


def test_metric_depth_parity_without_pad_and_flip(reference: Reference, ours: ZoeDepth) -> None:
    depth = infer_depth(ours, _as_tensor(reference.image), pad=False, flip=False)[0, 0].numpy()
    relative = _max_relative(depth, reference.depth_plain)
    assert relative <= 1e-4, f"max relative difference {relative:.3g}"
    assert not np.allclose(reference.depth_plain, reference.depth, rtol=1e-3), "pad/flip must change the depth"


def test_public_api_metric16_parity(reference: Reference, ours: ZoeDepth, reuse_network: list) -> None:
    """``guides.depth(..., format="metric16")`` is the original ``infer_pil(output_type="pil")``."""
    import guides

    pil = guides.depth(reference.image, format="metric16", flip=False, pad=False, checkpoint=str(reference.checkpoint))
    assert pil.mode == "I;16" and pil.size == (192, 32)
    expected = (reference.depth_plain * 256).astype(np.uint16)
    difference = np.abs(np.asarray(pil).astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() >= 0.99, (difference.max(), (difference == 0).mean())
    assert reuse_network == [(None, str(reference.checkpoint))]


def test_cli_rgba_guide_parity(reference: Reference, reuse_network: list, tmp_path: Path, original_colorize) -> None:
    """``guides depth photo.png``: the original colouring of the original depth, |diff| <= 1 on 99.9%."""
    from click.testing import CliRunner
    from PIL import Image

    from guides.cli.main import cli

    source = tmp_path / "in.png"
    Image.fromarray(reference.image).save(source)
    result = CliRunner().invoke(cli, ["depth", str(source), "--checkpoint", str(reference.checkpoint), "-q"])
    assert result.exit_code == 0, result.output
    guide = np.asarray(Image.open(tmp_path / "in.depth.png"))
    expected = original_colorize(reference.depth)
    assert guide.dtype == np.uint8 and guide.shape == expected.shape == (32, 192, 4)
    difference = np.abs(guide.astype(int) - expected.astype(int))
    within = float((difference <= 1).all(axis=2).mean())
    assert within >= 0.999, f"{within:.4%} of pixels within 1, max difference {difference.max()}"
    levels = len(np.unique(guide[..., 0]))
    assert levels > 100, f"only {levels} grey levels: the depth does not vary enough to test colouring"
    assert reuse_network == [(None, str(reference.checkpoint))]
