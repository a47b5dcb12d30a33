"""anyline: parity with controlnet_aux's ``AnylineDetector`` (TEED with MTEED weights + standard line art),
its options, the small-object removal and the layer merge, bad inputs, CLI and API.

Random TEED weights saved as ``MTEED.pth`` (a plain state dict, as the hub file); the heads' last layers are
scaled so the edge layer has structure (asserted)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import guides
from guides.annotators.anyline import AnylineAnnotator, merge_layers, remove_small_objects
from guides.annotators.learned import working_size
from guides.registry import get
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.test_teed import agreement, reference_network
from tests.cli_testing import invoke

SEED, HEAD_SCALE = 2, 10.0
"""The cat's reference guide at 1280: TEED layer about 8% dark, 37% bright; over 200 grey levels after merging."""


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return reference_network(SEED, HEAD_SCALE)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, network: torch.nn.Module) -> Path:
    """The hub file under its basename in a flat models folder."""
    folder = tmp_path_factory.mktemp("anyline-models")
    torch.save(network.state_dict(), folder / "MTEED.pth")
    return folder


def reference_guide(network: torch.nn.Module, image: np.ndarray, **kwargs: object) -> np.ndarray:
    from controlnet_aux.anyline import AnylineDetector

    with torch.no_grad():
        out = AnylineDetector(network)(image, output_type="np", **kwargs)
    assert out.ndim == 3 and out.shape[:2] == image.shape[:2] and (out[..., 0] == out[..., 2]).all()
    return out[..., 0]


def test_cat_at_the_default_resolution(network: torch.nn.Module, models_dir: Path, refs: Path) -> None:
    image = guides.to_rgb_array(refs / "cutecat_init.png")
    expected = reference_guide(network, image)
    assert len(np.unique(expected)) >= 150 and expected.std() >= 40, "reference guide too uniform"
    annotator = get("anyline").load(models_dir=str(models_dir), device="cpu")
    assert annotator.options.resolution == 1280
    guide = annotator.annotate(image)
    assert guide.shape == (512, 512) and guide.dtype == np.uint8
    share, worst = agreement(guide, expected)
    assert share >= 0.999, f"only {share:.5f} of pixels within 1 level (max diff {worst})"


@pytest.mark.parametrize("options", [{}, {"sigma": 4.0, "intensity_threshold": 10}])
def test_nonsquare_photo_and_options(network: torch.nn.Module, models_dir: Path, refs: Path, options: dict) -> None:
    import cv2

    dog = cv2.resize(guides.to_rgb_array(refs / "kitchen_dog.png"), (750, 600), interpolation=cv2.INTER_AREA)
    renamed = {"guassian_sigma": options["sigma"], "intensity_threshold": options["intensity_threshold"]} if options else {}
    expected = reference_guide(network, dog, detect_resolution=512, **renamed)
    assert expected.std() >= 30, "reference guide too uniform"
    guide = get("anyline").load(models_dir=str(models_dir), device="cpu", resolution=512, **options).annotate(dog)
    share, worst = agreement(guide, expected)
    assert share >= 0.999, f"only {share:.5f} of pixels within 1 level (max diff {worst})"


def test_small_objects_removed_as_the_reference_does() -> None:
    """The reference's ``remove_small_objects(min_size=36)`` on the 3-channel stack (as installed)."""
    from skimage import morphology

    rng = np.random.default_rng(3)
    lines = (rng.random((200, 240)) > 0.6).astype(np.uint8) * rng.integers(1, 256, (200, 240), dtype=np.uint8)
    stacked = np.dstack([lines] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image 0.26 deprecates min_size (taken as max_size)
        cleaned = morphology.remove_small_objects(stacked.astype(bool), min_size=36, connectivity=1)
    expected = (stacked * cleaned)[..., 0]
    ours = remove_small_objects(lines, 12)
    assert np.array_equal(ours, expected)
    assert (ours != lines).any() and ours.any(), "the test image must have small and large objects"


def test_merge_equals_the_reference_combine() -> None:
    from controlnet_aux.anyline import AnylineDetector

    rng = np.random.default_rng(4)
    edge = rng.choice(np.array([0, 127, 255], np.uint8), (50, 60))
    lines = np.where(rng.random((50, 60)) > 0.5, rng.integers(0, 256, (50, 60), dtype=np.uint8), 0).astype(np.uint8)
    expected = AnylineDetector(None).combine_layers(np.dstack([edge] * 3), np.dstack([lines] * 3))[..., 0]
    assert np.array_equal(merge_layers(edge, lines), expected)


def test_declarations() -> None:
    (checkpoint,) = AnylineAnnotator.checkpoints
    assert (checkpoint.repo, checkpoint.filename, checkpoint.basename) == ("TheMistoAI/MistoLine", "Anyline/MTEED.pth", "MTEED.pth")
    assert checkpoint.size == 248_298 and checkpoint.sha256 is not None
    (controlnet,) = AnylineAnnotator.controlnets
    assert (controlnet.kind, controlnet.repo, controlnet.base) == ("anyline", "TheMistoAI/MistoLine", "sdxl")
    options = AnylineAnnotator.Options()
    assert (options.resolution, options.sigma, options.intensity_threshold) == (1280, 2.0, 3.0)


def test_hub_subfolder_name_in_a_models_folder(network: torch.nn.Module, tmp_path: Path, make_photo) -> None:
    (tmp_path / "Anyline").mkdir()
    torch.save(network.state_dict(), tmp_path / "Anyline" / "MTEED.pth")
    image = make_photo(80, 64, 64)
    annotator = get("anyline").load(models_dir=str(tmp_path), device="cpu", resolution=64)
    assert annotator.loaded_files == (tmp_path / "Anyline" / "MTEED.pth",)
    assert annotator.annotate(image).shape == (64, 64)


def test_batches_equal_single_images(models_dir: Path, make_photo) -> None:
    images = [make_photo(81, 64, 96), make_photo(82, 130, 70), make_photo(83, 66, 99)]
    batched = get("anyline").load(models_dir=str(models_dir), device="cpu", resolution=64, batch_size=2)
    single = get("anyline").load(models_dir=str(models_dir), device="cpu", resolution=64)
    for got, image in zip(batched.annotate_batch(images), images):
        assert agreement(got, single.annotate(image))[0] >= 0.999


def test_folder_with_bad_files(models_dir: Path, tmp_path: Path, make_photo) -> None:
    _, strip = run_bad_folder("anyline", tmp_path, make_photo, "--models-dir", str(models_dir), "--device", "cpu",
                              "--resolution", "512")
    height, width = working_size(3, 700, 512)
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size {width}x{height} at --resolution 512 has "
        f"{width * height:,} pixels, over the anyline limit of 16,777,216 (use a smaller --resolution or raise "
        "--max-working-pixels)"
    )


def test_cli_equals_python_api(models_dir: Path, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(87, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "lines.png"
    result = invoke("anyline", str(photo), "--models-dir", str(models_dir), "--resolution", "128", "--device", "cpu",
                    "--sigma", "3", "--intensity-threshold", "5", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (90, 70)
    api = guides.load("anyline", models_dir=str(models_dir), resolution=128, device="cpu", sigma=3.0,
                      intensity_threshold=5.0)
    assert np.array_equal(np.asarray(written), api.annotate(image))
    (tmp_path / "empty").mkdir()
    missing = invoke("anyline", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and "MTEED.pth" in missing.output
    unknown = invoke("anyline", str(photo), "--models-dir", str(models_dir), "--safe-steps", "3", "-q")
    assert unknown.exit_code == 2
