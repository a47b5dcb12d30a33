"""HED annotator: parity with controlnet_aux's ``HEDdetector`` pipeline (plain, ``--safe``, ``--scribble``),
batching, precision, declarations, errors, CLI and API.

Random weights saved as ``ControlNetHED.pth`` (a plain state dict with the reference network's keys, as
the hub file is) prove wiring and parity, not edge quality: the real weights are not available here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from tests.annotators.parity import agreement, assert_batches_match_singles, sharing_network
from guides.annotators.hed import HedAnnotator, HedOptions
from guides.errors import DeviceError, InputError, UsageError, WeightsError
from guides.registry import get
from guides.weights.catalog import guide_controlnet
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.cli_testing import invoke

GUIDE_SHARE = 0.999
"""Share of guide pixels within 1 level of the reference pipeline's guide."""
SIDE_SCALES = (1.0, 4.0, 60.0, 600.0, 3000.0)
"""Random weights make the deeper side outputs tiny: their projections are scaled so each one counts."""


def _reference_network(seed: int = 0) -> torch.nn.Module:
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(seed)
    model = ControlNetHED_Apache2().eval()
    with torch.no_grad():
        model.norm.copy_(torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        for index, scale in enumerate(SIDE_SCALES, start=1):
            getattr(model, f"block{index}").projection.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def reference_net() -> torch.nn.Module:
    return _reference_network()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, reference_net: torch.nn.Module) -> Path:
    """The reference network's state dict saved as the hub file is: ``ControlNetHED.pth``, plain keys."""
    folder = tmp_path_factory.mktemp("hed-models")
    torch.save(reference_net.state_dict(), folder / "ControlNetHED.pth")
    return folder


@pytest.fixture(scope="module")
def annotator(models_dir: Path) -> HedAnnotator:
    """Loaded through the registry and the weights contract (models folder)."""
    return get("hed").load(models_dir=str(models_dir), device="cpu")  # type: ignore[return-value]


def reference_pipeline(network: torch.nn.Module, image: np.ndarray, resolution: int, safe: bool = False,
                       scribble: bool = False) -> np.ndarray:
    """controlnet_aux's detector at detect = image resolution (its working-size guide), resized to the input
    size as we do: INTER_LINEAR, or INTER_NEAREST for the binary scribble."""
    from controlnet_aux.hed import HEDdetector

    out = HEDdetector(network)(image, detect_resolution=resolution, image_resolution=resolution, safe=safe,
                               scribble=scribble, output_type="np")
    assert out.ndim == 3 and (out[..., 0] == out[..., 2]).all()
    interpolation = cv2.INTER_NEAREST if scribble else cv2.INTER_LINEAR
    return cv2.resize(out[..., 0], (image.shape[1], image.shape[0]), interpolation=interpolation)


@pytest.fixture(scope="module")
def kitchen_dog(refs: Path) -> np.ndarray:
    return guides.to_rgb_array(refs / "kitchen_dog.png")


@pytest.mark.parametrize("which", ["reference-cat-512", "nonsquare-600x750"])
def test_guide_matches_reference_pipeline(annotator: HedAnnotator, reference_net: torch.nn.Module, refs: Path,
                                          make_photo, which: str) -> None:
    """Full-size network at the default resolution (512): the cat (512 x 512) and a 600 x 750 photo
    (working size 512 x 640), guides at the input size."""
    image = guides.to_rgb_array(refs / "cutecat_init.png") if which.startswith("reference") else make_photo(21, 600, 750)
    guide = annotator.annotate(image)
    expected = reference_pipeline(reference_net, image, 512)
    assert guide.shape == image.shape[:2] and guide.dtype == np.uint8
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"
    assert worst <= 2, f"max diff {worst}"
    levels = len(np.unique(expected))
    assert levels >= 150 and expected.std() > 20, f"reference guide too uniform: {levels} levels, std {expected.std():.1f}"


@pytest.mark.parametrize("safe, scribble", [(True, False), (False, True), (True, True)],
                         ids=["safe", "scribble", "safe-scribble"])
def test_options_match_reference_pipeline(annotator: HedAnnotator, reference_net: torch.nn.Module, make_photo,
                                          safe: bool, scribble: bool) -> None:
    image = make_photo(22, 128, 192)  # its own working size at resolution 128: safe_step's 3 levels stay
    guide = sharing_network(annotator, resolution=128, safe=safe, scribble=scribble).annotate(image)
    expected = reference_pipeline(reference_net, image, 128, safe=safe, scribble=scribble)
    assert guide.shape == image.shape[:2] and guide.dtype == np.uint8
    if scribble:
        assert set(np.unique(guide)) == {0, 255} and 0.02 < (expected == 255).mean() < 0.9, "a real scribble"
    else:
        assert set(np.unique(expected)) == {0, 127, 255}, "safe_step gives 3 levels"
        assert min((expected == level).mean() for level in (0, 127, 255)) > 0.005, "all three levels used"
    same = (guide == expected).mean()
    assert same >= GUIDE_SHARE, f"{(guide != expected).sum()} pixels differ"


def test_kitchen_dog_parity_at_low_resolution(annotator: HedAnnotator, reference_net: torch.nn.Module,
                                               kitchen_dog: np.ndarray) -> None:
    guide = sharing_network(annotator, resolution=192).annotate(kitchen_dog)
    share, worst = agreement(guide, reference_pipeline(reference_net, kitchen_dog, 192))
    assert guide.shape == kitchen_dog.shape[:2]
    assert share >= GUIDE_SHARE, f"{share:.5f} within 1 level (max {worst})"


def test_declarations() -> None:
    (checkpoint,) = HedAnnotator.checkpoints
    assert (checkpoint.name, checkpoint.filename, checkpoint.container) == ("hed", "ControlNetHED.pth", "state_dict")
    assert checkpoint.size == 29_444_406 and checkpoint.sha256 is not None and checkpoint.pinned
    assert checkpoint.licence.startswith("Apache-2.0")
    scribble, softedge = HedAnnotator.controlnets
    assert guide_controlnet(HedAnnotator, HedOptions(scribble=True)) is scribble
    assert guide_controlnet(HedAnnotator, HedOptions()) is softedge
    assert guide_controlnet(HedAnnotator, HedOptions(safe=True)) is softedge
    assert (scribble.kind, scribble.repo) == ("scribble", "lllyasviel/control_v11p_sd15_scribble")
    assert (softedge.kind, softedge.repo) == ("softedge", "lllyasviel/control_v11p_sd15_softedge")


def test_batches_equal_single_images(annotator: HedAnnotator, make_photo) -> None:
    """Two working sizes among four images, batches of 2: grouped, order kept, same guides."""
    images = [make_photo(30, 64, 96), make_photo(31, 130, 70), make_photo(32, 66, 99), make_photo(33, 128, 64)]
    batched = sharing_network(annotator, resolution=64, batch_size=2)
    single = sharing_network(annotator, resolution=64)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2]) == (64, 128)
    assert batched.batch_key(images[1]) == batched.batch_key(images[3]) == (128, 64)
    assert_batches_match_singles(batched, single, images)


def reference_edges(network: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The reference detector's steps at the image's own size (its ``resize_image`` has no resolution 0):
    network, side outputs resized with cv2 INTER_LINEAR, float32 mean, float64 sigmoid, uint8."""
    with torch.no_grad():
        sides = network(torch.from_numpy(image.copy()).float().permute(2, 0, 1)[None])
    height, width = image.shape[:2]
    sides = [cv2.resize(side.numpy()[0, 0], (width, height), interpolation=cv2.INTER_LINEAR) for side in sides]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def test_resolution_zero_keeps_the_size_and_pads_small_images(annotator: HedAnnotator, reference_net, make_photo) -> None:
    keep = sharing_network(annotator, resolution=0)
    image = make_photo(24, 45, 70)  # not a multiple of 16: pooled with floor rounding, as the reference does
    guide = keep.annotate(image)
    share, worst = agreement(guide, reference_edges(reference_net, image))
    assert guide.shape == (45, 70) and share >= GUIDE_SHARE, f"{share:.5f} (max {worst})"
    for tiny in ((1, 1), (2, 3), (15, 40)):  # padded to 16 for the four poolings, cropped back
        assert keep.annotate(make_photo(25, *tiny)).shape == tiny


def test_bf16_within_bound_of_fp32(annotator: HedAnnotator, models_dir: Path, make_photo) -> None:
    """bf16 on the CPU. Measured with these weights: max 10, mean 0.9 levels (bf16 keeps 3 significant digits
    of the 0..255 inputs and activations; the fusion and sigmoid stay float32)."""
    image = make_photo(26, 128, 128)
    fp32 = sharing_network(annotator, resolution=128).annotate(image)
    bf16 = get("hed").load(models_dir=str(models_dir), device="cpu", precision="bf16", resolution=128)
    diff = np.abs(bf16.annotate(image).astype(int) - fp32)
    assert diff.max() <= 24 and diff.mean() <= 2.5, f"bf16: max {diff.max()}, mean {diff.mean():.3f}"


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": -1}, UsageError, "resolution must be 0 or more"),
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"thickness": 3}, UsageError, "unknown option(s) thickness"),
    ],
)
def test_bad_options_are_refused(models_dir: Path, options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        get("hed").load(models_dir=str(models_dir), **options)
    assert message in str(raised.value)


def test_bad_batch_is_an_input_error(annotator: HedAnnotator) -> None:
    with pytest.raises(InputError, match="RGB uint8"):
        annotator.forward(np.zeros((1, 16, 16, 3), np.float32))


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        get("hed").load(models_dir=str(tmp_path), device="cpu")
    assert "ControlNetHED.pth" in str(raised.value)


def test_cli_and_python_api(models_dir: Path, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(27, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "edges.png"
    result = invoke("hed", str(photo), "--models-dir", str(models_dir), "--resolution", "64", "--device", "cpu",
                    "--safe", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (90, 70)
    direct = get("hed").load(models_dir=str(models_dir), device="cpu", resolution=64, safe=True)
    assert np.array_equal(np.asarray(written), direct.annotate(image))
    api = guides.load("hed", models_dir=str(models_dir), resolution=64, device="cpu", safe=True)
    assert np.array_equal(api.annotate(image), np.asarray(written))
    scribble_out = tmp_path / "scribble.png"
    result = invoke("hed", str(photo), "--models-dir", str(models_dir), "--resolution", "64", "--device", "cpu",
                    "--scribble", "-o", str(scribble_out), "-q")
    assert result.exit_code == 0, result.output
    scribbled = get("hed").load(models_dir=str(models_dir), device="cpu", resolution=64, scribble=True).annotate(image)
    assert np.array_equal(np.asarray(Image.open(scribble_out)), scribbled)
    unknown = invoke("hed", str(photo), "--models-dir", str(models_dir), "--thickness", "3", "-q")
    assert unknown.exit_code == 2 and "--thickness" in unknown.output
    (tmp_path / "empty").mkdir()
    missing = invoke("hed", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and "ControlNetHED.pth" in missing.output


def test_folder_with_bad_files_fails_those_files_only(models_dir: Path, tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (working size 512 x 119488 at --resolution 512: 61 Mpx, refused
    before any resizing) fail with one line each; a 1 x 1 image succeeds (working size 512 x 512, guide
    1 x 1) and the fine image is written (the same working size: one batch of two)."""
    _, strip = run_bad_folder("hed", tmp_path, make_photo, "--models-dir", str(models_dir), "--device", "cpu",
                              "--batch-size", "2")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has "
        "61,177,856 pixels, over the hed limit of 16,777,216 (use a smaller --resolution or raise --max-working-pixels)"
    ), strip
