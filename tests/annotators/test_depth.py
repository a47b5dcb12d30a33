"""Depth annotator: the original ZoeDepth colouring exactly, formats, options, batching, errors.

Network parity with controlnet_aux (full-size ZoeD_N) and the end-to-end API/CLI runs are in
tests/nets/test_zoedepth.py, which builds the full random checkpoint once; here a tiny ZoeDepth with
random weights proves the annotator's wiring quickly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from guides.annotators.depth import (
    GRAY_R,
    DepthAnnotator,
    DepthOptions,
    colorize,
    colormap_levels,
    grayscale,
    metric16,
)
from guides.errors import DeviceError, InputError, UsageError
from guides.nets.zoedepth import TINY_CONFIG, ZoeDepth
from guides.registry import get

GRAY_R_MPL = matplotlib.colormaps["gray_r"]


def _sweep(dtype: type) -> np.ndarray:
    """Values around every colour boundary k/256, below 0, above 1, and the extremes."""
    boundaries = np.arange(-2, 259, dtype=np.float64) / 256
    values = [np.linspace(-0.5, 1.5, 20001), boundaries,
              [-1e30, -1.0, -1e-9, -0.0, 0.0, 1.0, 255 / 256, 1e30, 1 - 1e-12]]
    swept = np.concatenate([np.asarray(v, dtype=np.float64) for v in values]).astype(dtype)
    return np.concatenate([swept, np.nextafter(swept, np.inf, dtype=dtype), np.nextafter(swept, -np.inf, dtype=dtype)])


# ------------------------------------------------------------------------------------------- colouring


def test_gray_r_table_equals_matplotlib() -> None:
    expected = GRAY_R_MPL(np.arange(256), bytes=True)
    assert np.array_equal(GRAY_R, expected[:, 0])
    assert (expected[:, 0] == expected[:, 1]).all() and (expected[:, 3] == 255).all()
    assert not np.array_equal(GRAY_R, 255 - np.arange(256)), "matplotlib's table truncates: not 255 - i"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_colormap_equals_matplotlib_on_a_sweep(dtype: type) -> None:
    values = _sweep(dtype)
    expected = GRAY_R_MPL(values, bytes=True)
    ours = GRAY_R[colormap_levels(values)]
    wrong = np.nonzero(ours != expected[:, 0])[0]
    assert wrong.size == 0, f"{wrong.size} values differ, e.g. {values[wrong[:5]]}: {ours[wrong[:5]]} != {expected[wrong[:5], 0]}"
    assert ours[values < 0].min() == 255 and ours[values >= 1].max() == 0


def _depth_maps() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    smooth = (np.linspace(0.5, 9.0, 64 * 80, dtype=np.float32).reshape(64, 80) + rng.normal(0, 0.05, (64, 80))).astype(np.float32)
    ties = rng.integers(0, 12, (40, 50)).astype(np.float32)  # percentiles fall exactly on data values
    invalid = smooth.copy()
    invalid[:5, :7] = -99
    # A room: floor receding from 0.8 to 6 m, a box at exactly 1.2 m, a window onto the sky at 80 m (a third of
    # the pixels: the 85th percentile falls on those ties), near and far outliers, invalid pixels.
    scene = np.repeat(np.linspace(6.0, 0.8, 60, dtype=np.float32)[:, None], 90, axis=1)
    scene += rng.normal(0, 0.02, scene.shape).astype(np.float32)
    scene[30:50, 20:45] = 1.2
    scene[:40, 40:85] = 80.0
    scene[55, :3] = 0.01
    scene[2, 2:6] = 1e4
    scene[58:, 80:] = -99
    return {
        "scene": scene,
        "smooth": smooth,
        "ties": ties,
        "uniform": rng.uniform(0.7, 10.2, (33, 47)).astype(np.float32),
        "constant": np.full((8, 9), 2.5, dtype=np.float32),
        "invalid": invalid,
        "float64": rng.normal(3, 1, (20, 30)),
    }


@pytest.mark.parametrize("name", list(_depth_maps()))
def test_colorize_equals_the_original_exactly(name: str, original_colorize) -> None:
    depth = _depth_maps()[name]
    ours = colorize(depth)
    expected = original_colorize(depth)
    assert ours.dtype == np.uint8 and ours.shape == depth.shape + (4,)
    assert np.array_equal(ours, expected), f"{int((ours != expected).any(axis=2).sum())} pixels differ"
    assert np.array_equal(grayscale(depth), expected[..., 0])


def test_colorize_at_the_exact_percentiles() -> None:
    depth = _depth_maps()["ties"]
    vmin, vmax = np.percentile(depth, 2), np.percentile(depth, 85)
    assert (depth == vmin).any() and (depth == vmax).any()
    gray = colorize(depth)[..., 0]
    assert (gray[depth == vmin] == 255).all() and (gray[depth == vmax] == 0).all()
    assert (gray[depth < vmin] == 255).all() and (gray[depth > vmax] == 0).all()


def test_metric16_is_the_originals_pil_output() -> None:
    depth = np.array([[0.0, 0.001, 1.0, 7.8123], [10.2, 255.99, 256.5, -0.2]], dtype=np.float32)
    ours = metric16(depth)
    assert ours.dtype == np.uint16
    in_range = (depth >= 0) & (depth * 256 < 65536)
    assert np.array_equal(ours[in_range], (depth * 256).astype(np.uint16)[in_range])
    assert ours[1, 2] == 65535 and ours[1, 3] == 0


def depth_behind(guide: np.ndarray, seed: int = 0) -> np.ndarray:
    """A metric depth map (float32, metres) whose ZoeDepth colouring is ``guide`` (grey levels of ``gray_r``):
    a real scene's structure, with ties on both percentiles and outliers beyond them.

    Grey levels in between map to the middle of their colour's bin between 1 m (2nd percentile) and 5 m
    (85th); the white pixels (2.2% of the cat's) are 1 m except 1.5% of all pixels spread nearer (0.05 to
    1 m), the black ones (17.5%) 5 m except 12% of all pixels spread farther (5 to 80 m, and a few at 10 km).
    So the 2nd percentile falls on the ties at 1 m and the 85th on the ties at 5 m, exactly."""
    rng = np.random.default_rng(seed)
    first_index = {int(level): index for index, level in reversed(list(enumerate(GRAY_R)))}
    index = np.vectorize(first_index.__getitem__, otypes=[np.int64])(guide)
    depth = (1 + 4 * (index + 0.5) / 256).astype(np.float32)  # exact in float32
    flat, count = depth.reshape(-1), guide.size
    white, black = np.flatnonzero(guide.reshape(-1) == 255), np.flatnonzero(guide.reshape(-1) == 0)
    assert 0.02 < white.size / count < 0.03 and 0.15 < black.size / count < 0.2, "not a ZoeDepth colouring"
    flat[white] = 1.0
    flat[black] = 5.0
    near = rng.choice(white, int(0.015 * count), replace=False)
    flat[near] = rng.uniform(0.05, 1.0, near.size)
    far = rng.choice(black, int(0.12 * count), replace=False)
    flat[far] = rng.uniform(5.0, 80.0, far.size)
    flat[far[:20]] = 10_000.0
    return depth


def test_colouring_reproduces_the_reference_guide(refs: Path, original_colorize) -> None:
    """``refs/cutecat_guide_depth.png`` (ZoeDepth's own guide of the cat: RGBA, grey, only ``gray_r``'s levels)
    is, pixel for pixel, our colouring of a depth map behind it that has near and far outliers and ties on
    the 2nd/85th percentiles -- as it is the original ``colorize``'s. Another colormap, direction or pair of
    percentiles would change thousands of its pixels (the percentiles' interpolation is checked on the
    maps of ``test_colorize_equals_the_original_exactly``: here they fall on ties)."""
    reference = np.asarray(Image.open(refs / "cutecat_guide_depth.png"))
    assert reference.shape == (512, 512, 4) and (reference[..., 3] == 255).all()
    assert (reference[..., 0] == reference[..., 1]).all() and (reference[..., 0] == reference[..., 2]).all()
    assert set(np.unique(reference[..., 0])) <= set(GRAY_R), "the reference uses gray_r's levels only"
    depth = depth_behind(reference[..., 0])
    assert np.percentile(depth, 2) == 1.0 and np.percentile(depth, 85) == 5.0
    ours = colorize(depth)
    assert np.array_equal(ours, reference), f"{int((ours != reference).any(axis=2).sum())} pixels differ"
    assert np.array_equal(grayscale(depth), reference[..., 0])
    assert np.array_equal(original_colorize(depth), reference)


# --------------------------------------------------------------------------------- options and the CLI


def test_options_defaults_and_registry() -> None:
    options = get("depth").options()
    assert isinstance(options, DepthOptions)
    assert (options.resolution, options.format, options.flip, options.pad) == (0, "rgba", True, True)
    with pytest.raises(UsageError, match="unknown option"):
        get("depth").options(colormap="magma")
    assert "depth" in guides.__all__ and callable(guides.depth)


def test_cli_help_lists_the_options_without_importing_torch() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from guides.cli.main import cli; "
        "r = CliRunner().invoke(cli, ['depth', '--help']); print(r.output); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for text in ("--format [rgba|gray|metric16]", "--no-flip", "--no-pad", "--precision", "--batch-size"):
        assert text in result.stdout, text
    from guides.cli.annotate import annotator_command

    defaults = {param.name: param.default for param in annotator_command(get("depth")).params}
    assert {k: defaults[k] for k in ("resolution", "format", "flip", "pad", "precision")} == {
        "resolution": 0, "format": "rgba", "flip": True, "pad": True, "precision": "fp32"}


# ------------------------------------------------------------------------------ the annotator, tiny net


@pytest.fixture(scope="module")
def tiny() -> ZoeDepth:
    torch.manual_seed(5)
    model = ZoeDepth(TINY_CONFIG).eval()
    with torch.no_grad():  # make the depth vary so that colours and formats are exercised
        for name in ("conv2", "seed_bin_regressor", "seed_projector", "projectors", "attractors"):
            for parameter in getattr(model, name).parameters():
                parameter.mul_(8)
    return model


def _annotator(model: ZoeDepth, **options) -> DepthAnnotator:
    return DepthAnnotator(DepthOptions(device="cpu", **options), model=model)


def test_formats(tiny: ZoeDepth, make_photo, original_colorize) -> None:
    image = make_photo(1, 40, 56)
    depth = _annotator(tiny).forward(image[None])[0]
    assert depth.shape == (40, 56) and depth.dtype == np.float32 and np.ptp(depth) > 0
    rgba = _annotator(tiny).annotate(image)
    gray = _annotator(tiny, format="gray").annotate(image)
    depth16 = _annotator(tiny, format="metric16").annotate(image)
    assert rgba.shape == (40, 56, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba, original_colorize(depth))
    assert gray.shape == (40, 56) and np.array_equal(gray, rgba[..., 0])
    assert depth16.dtype == np.uint16 and np.array_equal(depth16, (depth * 256).astype(np.uint16))


def test_flip_and_pad_change_the_prediction(tiny: ZoeDepth, make_photo) -> None:
    image = make_photo(2, 32, 48)
    base = _annotator(tiny).forward(image[None])
    for options in ({"flip": False}, {"pad": False}):
        other = _annotator(tiny, **options).forward(image[None])
        assert other.shape == base.shape and not np.allclose(other, base, rtol=1e-6), options
    mirrored = _annotator(tiny).forward(image[None, :, ::-1].copy())
    assert np.allclose(mirrored[:, :, ::-1], base, rtol=1e-5), "flip averaging makes the prediction mirror-symmetric"


def test_batches_mixed_sizes_like_single_images(tiny: ZoeDepth, make_photo) -> None:
    images = [make_photo(3, 32, 48), make_photo(4, 40, 40), make_photo(5, 32, 48), make_photo(6, 32, 48)]
    annotator = _annotator(tiny, format="metric16", batch_size=2)
    batched = annotator.annotate_batch(images)
    single = [_annotator(tiny, format="metric16").annotate(image) for image in images]
    assert [b.shape for b in batched] == [(32, 48), (40, 40), (32, 48), (32, 48)]
    for b, s in zip(batched, single):
        assert np.abs(b.astype(int) - s.astype(int)).max() <= 1


def test_resolution_resizes_first(tiny: ZoeDepth, make_photo) -> None:
    guide = _annotator(tiny, resolution=64).annotate(make_photo(7, 50, 90))
    assert guide.shape == (64, 128, 4)


def test_small_and_bad_inputs(tiny: ZoeDepth) -> None:
    small = np.full((4, 9, 3), 100, dtype=np.uint8)
    with pytest.raises(InputError, match=r"image is 9x4: .*at least 5x5.*--no-pad"):
        _annotator(tiny).annotate(small)
    assert _annotator(tiny, pad=False).annotate(small).shape == (4, 9, 4)
    assert _annotator(tiny).annotate(np.full((5, 5, 3), 7, dtype=np.uint8)).shape == (5, 5, 4)
    with pytest.raises(UsageError, match="unknown format 'jpeg'"):
        _annotator(tiny, format="jpeg")


def test_non_finite_depth_is_an_error(make_photo) -> None:
    broken = ZoeDepth(TINY_CONFIG).eval()
    with torch.no_grad():
        broken.conv2.bias.fill_(float("nan"))
    with pytest.raises(DeviceError, match="non-finite values at fp32"):
        _annotator(broken).annotate(make_photo(8, 16, 16))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_backbone_keeps_a_float32_head(precision: str, make_photo) -> None:
    torch.manual_seed(5)
    model = ZoeDepth(TINY_CONFIG).eval()
    image = make_photo(9, 32, 40)
    reference = _annotator(model).forward(image[None])
    depth = _annotator(model, precision=precision).forward(image[None])
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert model.core.core.scratch.layer1_rn.weight.dtype == dtype
    assert model.conv2.weight.dtype == torch.float32
    assert model.conditional_log_binomial.log_binomial_transform.k_idx.dtype == torch.int64
    relative = float(np.max(np.abs(depth - reference) / reference))
    assert depth.dtype == np.float32 and relative < 0.02, relative
    _annotator(model)  # back on the CPU at fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_close_to_cpu_fp32(tiny: ZoeDepth, make_photo) -> None:
    image = make_photo(10, 48, 64)
    reference = _annotator(tiny).forward(image[None])
    depth = DepthAnnotator(DepthOptions(device="cuda", precision="fp16"), model=tiny).forward(image[None])
    assert float(np.max(np.abs(depth - reference) / reference)) < 0.02
    _annotator(tiny)  # back on the CPU at fp32


def test_extreme_aspect_ratio_is_refused_before_the_network(tiny: ZoeDepth) -> None:
    """ZoeDepth keeps the aspect ratio and scales as little as possible towards its nominal size, so a
    long strip would run at a huge size (attention over tens of thousands of tokens): refused with one line.
    A 7:1 panorama still runs."""
    strip = np.full((100, 3000, 3), 120, dtype=np.uint8)
    annotator = _annotator(tiny)
    with pytest.raises(InputError, match=r"3000x100 image: the depth network would run at 2176x96 \(208,896 pixels, "
                                         r"over its limit of 61,440\): the aspect ratio is too extreme; crop the image"):
        annotator.annotate(strip)
    panorama = np.random.default_rng(0).integers(0, 255, (96, 672, 3), dtype=np.uint8)
    assert annotator.annotate(panorama).shape == (96, 672, 4)
