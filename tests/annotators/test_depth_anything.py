"""depth-anything annotator: parity with the original Depth Anything V2 pipeline (``infer_image`` + run.py's
grey guide) run on transformers' network, formats, both weight layouts, batching, precision, declarations,
errors, CLI and API.

The reference pipeline is written from the original's code: ``cv2.cvtColor(BGR2RGB) / 255`` (float64),
``Resize(keep_aspect_ratio, ensure_multiple_of=14, lower_bound, INTER_CUBIC)``, ImageNet normalisation,
the network (here transformers' ``DepthAnythingForDepthEstimation``, same random weights), bilinear
``align_corners=True`` to the input size, ``(d - min) / (max - min) * 255`` as uint8. Random weights saved
as the hub files are (``save_pretrained``'s ``model.safetensors`` and the original ``.pth`` keys).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import guides
from guides.annotators.depth import DEPTH_CONTROLNET
from guides.annotators.depth_anything import DepthAnythingAnnotator, DepthAnythingOptions
from guides.annotators.learned import working_size
from guides.errors import DeviceError, UsageError, WeightsError
from guides.registry import get
from guides.weights.catalog import declared_controlnets, guide_controlnet
from guides.weights.union_models import UnionMode
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.parity import agreement
from tests.cli_testing import invoke
from tests.nets.test_depth_anything import (
    RELATIVE_BOUND,
    original_resize_size,
    original_state_dict,
    save_hf_file,
    scaled_reference,
)

GUIDE_SHARE = 0.999
"""Share of guide pixels within 1 level of the reference pipeline's guide."""


@pytest.fixture(scope="module")
def reference_net() -> torch.nn.Module:
    return scaled_reference("small", seed=5)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, reference_net: torch.nn.Module) -> Path:
    """The Small weights as the flat folder holds them: the -hf file under its declared name, and the
    original ``.pth``."""
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("depth-anything-models")
    hf_file = save_hf_file(reference_net, folder / "hf")
    hf_file.rename(folder / "depth_anything_v2_vits.safetensors")
    state = load_file(str(folder / "depth_anything_v2_vits.safetensors"))
    torch.save(original_state_dict(state, 384), folder / "depth_anything_v2_vits.pth")
    return folder


@pytest.fixture(scope="module")
def annotator(models_dir: Path) -> DepthAnythingAnnotator:
    """Loaded through the registry and the weights contract (models folder, safetensors)."""
    return get("depth-anything").load(models_dir=str(models_dir), device="cpu", model="small")  # type: ignore[return-value]


def sharing(annotator: DepthAnythingAnnotator, **options) -> DepthAnythingAnnotator:  # type: ignore[no-untyped-def]
    return DepthAnythingAnnotator(DepthAnythingOptions(device="cpu", model="small", **options), model=annotator.model)


def reference_depth(network: torch.nn.Module, image: np.ndarray, input_size: int = 518) -> np.ndarray:
    """The original ``infer_image`` on transformers' network: relative depth at the image's size."""
    height, width = image.shape[:2]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # as cv2.imread gives it
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) / 255.0
    net_h, net_w = original_resize_size(height, width, input_size)
    resized = cv2.resize(rgb, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
    normalised = (resized - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    x = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).float()[None]
    with torch.no_grad():
        depth = network(pixel_values=x).predicted_depth
        depth = F.interpolate(depth[:, None], (height, width), mode="bilinear", align_corners=True)[0, 0]
    return depth.numpy()


def reference_guide(depth: np.ndarray) -> np.ndarray:
    """run.py's grey guide."""
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(256, 256), (300, 410)], ids=["square-256", "nonsquare-300x410"])
def test_guide_matches_the_original_pipeline(annotator: DepthAnythingAnnotator, reference_net, make_photo,
                                             height: int, width: int) -> None:
    """Network inputs 518 x 518 and 518 x 714 (short side 518, multiples of 14), guides at the input size."""
    image = make_photo(height + width, height, width)
    item = annotator.prepare(image)
    assert item.shape[:2] == original_resize_size(height, width)
    depth = annotator.predict([item])[0]
    expected_depth = reference_depth(reference_net, image)
    relative = float(np.abs(depth - expected_depth).max() / np.abs(expected_depth).max())
    assert depth.shape == (height, width) and relative <= RELATIVE_BOUND, relative
    guide = annotator.finish(item, depth)
    expected = reference_guide(expected_depth)
    assert guide.shape == (height, width) and guide.dtype == np.uint8
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE and worst <= 2, f"{share:.5f} within 1 level (max {worst})"
    levels = len(np.unique(expected))
    assert levels >= 64 and expected.std() > 10, f"reference guide too uniform: {levels} levels, std {expected.std():.1f}"


def test_the_cat_at_its_own_size(annotator: DepthAnythingAnnotator, reference_net, refs: Path) -> None:
    image = guides.to_rgb_array(refs / "cutecat_init.png")
    guide = annotator.annotate(image)
    share, worst = agreement(guide, reference_guide(reference_depth(reference_net, image)))
    assert guide.shape == (512, 512) and share >= GUIDE_SHARE, f"{share:.5f} (max {worst})"


def test_formats(annotator: DepthAnythingAnnotator, make_photo) -> None:
    image = make_photo(3, 60, 80)
    item = annotator.prepare(image)
    depth = annotator.predict([item])[0]
    gray = sharing(annotator, format="gray").finish(item, depth)
    rgba = sharing(annotator, format="rgba").finish(item, depth)
    raw = sharing(annotator, format="raw16").finish(item, depth)
    assert rgba.shape == (60, 80, 4) and (rgba[..., :3] == gray[..., None]).all() and (rgba[..., 3] == 255).all()
    assert raw.dtype == np.uint16 and raw.min() == 0 and raw.max() == 65535
    expected = np.rint((depth - depth.min()) / (depth.max() - depth.min()) * np.float32(65535)).astype(np.uint16)
    assert np.array_equal(raw, expected)
    assert np.abs((raw.astype(int) >> 8) - gray).max() <= 1
    assert gray.min() == 0 and gray.max() == 255  # near = white: the largest depth is 255
    assert gray[np.unravel_index(np.argmax(depth), depth.shape)] == 255
    flat = sharing(annotator).finish(item, np.full((60, 80), 0.5, np.float32))
    assert flat.shape == (60, 80) and (flat == 0).all()


def test_original_weights_give_the_same_guide(annotator: DepthAnythingAnnotator, models_dir: Path, make_photo) -> None:
    original = get("depth-anything").load(models_dir=str(models_dir), device="cpu", model="small", weights="original",
                                          input_size=140)
    assert original.loaded_files == (models_dir / "depth_anything_v2_vits.pth",)
    assert annotator.loaded_files == (models_dir / "depth_anything_v2_vits.safetensors",)
    image = make_photo(4, 50, 70)
    assert np.array_equal(original.annotate(image), sharing(annotator, input_size=140).annotate(image))


def test_equal_network_inputs_share_a_forward(annotator: DepthAnythingAnnotator, make_photo) -> None:
    """At --input-size 140, 60 x 80 and 61 x 81 both run at 140 x 182: one forward of two; 50 x 50 runs
    alone. Each guide has its own size and equals the single-image one."""
    images = [make_photo(10, 60, 80), make_photo(11, 50, 50), make_photo(12, 61, 81)]
    batched = sharing(annotator, batch_size=4, input_size=140)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2]) == (140, 182)
    assert batched.batch_key(images[1]) == (140, 140)
    shapes: list[tuple[int, ...]] = []
    hook = annotator.model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    try:
        guides_ = batched.annotate_batch(images)
    finally:
        hook.remove()
    assert sorted(shapes) == [(1, 3, 140, 140), (2, 3, 140, 182)]
    single = sharing(annotator, input_size=140)
    for got, image in zip(guides_, images):
        assert got.shape == image.shape[:2]
        assert int(np.abs(got.astype(int) - single.annotate(image)).max()) <= 1


def test_input_size_and_resolution(annotator: DepthAnythingAnnotator, reference_net, make_photo) -> None:
    image = make_photo(13, 90, 120)
    small = sharing(annotator, input_size=140)
    assert small.prepare(image).shape[:2] == (140, 182)
    share, _ = agreement(small.annotate(image), reference_guide(reference_depth(reference_net, image, 140)))
    assert share >= GUIDE_SHARE
    resized = sharing(annotator, resolution=128, input_size=70)  # ControlNet's resize first: 128 x 192
    assert working_size(90, 120, 128) == (128, 192) and resized.annotate(image).shape == (128, 192)


def test_bf16_within_bound_of_fp32(annotator: DepthAnythingAnnotator, models_dir: Path, make_photo) -> None:
    image = make_photo(14, 70, 70)
    fp32 = sharing(annotator, input_size=140).annotate(image)
    bf16 = get("depth-anything").load(models_dir=str(models_dir), device="cpu", model="small", precision="bf16",
                                      input_size=140)
    diff = np.abs(bf16.annotate(image).astype(int) - fp32)
    assert diff.mean() <= 6 and np.percentile(diff, 99) <= 30, f"bf16: mean {diff.mean():.2f}, max {diff.max()}"


def test_declarations() -> None:
    names = DepthAnythingAnnotator.checkpoint_names
    assert names(DepthAnythingOptions()) == ("depth-anything-v2-large",)
    assert names(DepthAnythingOptions(model="small")) == ("depth-anything-v2-small",)
    assert names(DepthAnythingOptions(model="base", weights="original")) == ("depth-anything-v2-base-original",)
    by_name = {c.name: c for c in DepthAnythingAnnotator.checkpoints}
    assert len(by_name) == 6
    for size, letter in (("small", "s"), ("base", "b"), ("large", "l")):
        hf, original = by_name[f"depth-anything-v2-{size}"], by_name[f"depth-anything-v2-{size}-original"]
        assert (hf.repo, hf.filename, hf.container) == (
            f"depth-anything/Depth-Anything-V2-{size.capitalize()}-hf", "model.safetensors", "safetensors")
        assert hf.local_name == f"depth_anything_v2_vit{letter}.safetensors"
        assert (original.repo, original.filename, original.container) == (
            f"depth-anything/Depth-Anything-V2-{size.capitalize()}", f"depth_anything_v2_vit{letter}.pth", "state_dict")
        for entry in (hf, original):
            assert entry.licence.startswith("Apache-2.0" if size == "small" else "CC-BY-NC-4.0")
            assert entry.non_commercial == (size != "small")
    pins = {name: (entry.revision, entry.size) for name, entry in by_name.items() if entry.pinned}
    assert pins == {  # the files public manifests state at a commit, with their bytes; the rest follow main
        "depth-anything-v2-small": ("5426e4f0f36572d16453bbda7a8389317b1bef99", 99_173_660),
        "depth-anything-v2-large": ("7581137eff8d4e94f6e796d3baea0e9fa79b22d2", 1_341_322_868),
        "depth-anything-v2-small-original": ("03876f8651c73a60fe4c2c48294e09fcb6838fcf", 99_218_434),
    }
    assert all(entry.sha256 for entry in by_name.values() if entry.pinned)
    assert all(entry.approx_size and not entry.size for entry in by_name.values() if not entry.pinned)
    assert DepthAnythingAnnotator.controlnets == (DEPTH_CONTROLNET,)
    assert guide_controlnet(DepthAnythingAnnotator, DepthAnythingOptions()) is DEPTH_CONTROLNET
    controlnet, annotators = declared_controlnets()["depth"]
    assert controlnet is DEPTH_CONTROLNET and "depth-anything" in annotators and "depth" in annotators
    assert DepthAnythingAnnotator.union_modes == (UnionMode("xinsir", "depth"), UnionMode("instantx", "depth"))


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"model": "giant"}, UsageError, "unknown model 'giant'; use one of small, base, large"),
        ({"weights": "onnx"}, UsageError, "unknown weights 'onnx'; use one of hf, original"),
        ({"input_size": 10}, UsageError, "input_size must be between 14 and 8192, got 10"),
        ({"format": "metric16"}, UsageError, "unknown format 'metric16'; use one of gray, rgba, raw16"),
    ],
)
def test_bad_options_are_refused(models_dir: Path, options: dict, error: type, message: str) -> None:
    options = {"model": "small", **options}
    with pytest.raises(error) as raised:
        get("depth-anything").load(models_dir=str(models_dir), **options)
    assert message in str(raised.value)


def test_missing_checkpoint_names_the_flat_name(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        get("depth-anything").load(models_dir=str(tmp_path), device="cpu", model="base")
    message = str(raised.value)
    assert "'depth-anything-v2-base'" in message and "put depth_anything_v2_vitb.safetensors in a folder" in message


def test_a_file_of_the_other_layout_is_refused_with_a_hint(models_dir: Path) -> None:
    with pytest.raises(WeightsError) as raised:  # --weights original: the original's keys expected
        get("depth-anything").load(checkpoint=str(models_dir / "depth_anything_v2_vits.safetensors"), device="cpu",
                                   model="small", weights="original")
    assert "checkpoint does not fit the network" in str(raised.value) and "backbone.encoder" in str(raised.value)
    with pytest.raises(WeightsError) as raised:
        get("depth-anything").load(checkpoint=str(models_dir / "depth_anything_v2_vits.pth"), device="cpu",
                                   model="small")
    assert "not a valid safetensors file" in str(raised.value)


def test_cli_and_python_api(models_dir: Path, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(27, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "depth.png"
    result = invoke("depth-anything", str(photo), "--models-dir", str(models_dir), "--model", "small",
                    "--input-size", "140", "--device", "cpu", "--format", "raw16", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out))
    assert written.dtype == np.uint16 and written.shape == (70, 90)
    api = guides.load("depth-anything", models_dir=str(models_dir), model="small", input_size=140, device="cpu",
                      format="raw16")
    assert np.array_equal(api.annotate(image), written)
    (tmp_path / "empty").mkdir()
    missing = invoke("depth-anything", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and "depth_anything_v2_vitl.safetensors" in missing.output


def test_folder_with_bad_files_fails_those_files_only(models_dir: Path, tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (network input 120862 x 518 at --input-size 518: 62.6 M pixels,
    refused before anything is resized) fail with one line each; a 1 x 1 image succeeds (network input
    518 x 518, guide 1 x 1) and the fine image is written."""
    _, strip = run_bad_folder("depth-anything", tmp_path, make_photo, "--models-dir", str(models_dir), "--model", "small",
                              "--device", "cpu", "--batch-size", "2")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: network input 120862x518 at --input-size 518 has "
        "62,606,516 pixels, over the depth-anything limit of 8,388,608 (the aspect ratio is too extreme: crop "
        "the image, or use a smaller --input-size or raise --max-working-pixels)"
    ), strip
