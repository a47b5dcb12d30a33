"""teed: parity with controlnet_aux's ``TEEDdetector`` (and its ``TED`` network), ``--safe-steps``, batching,
precision, bad inputs, CLI and API.

Random weights saved as ``5_model.pth`` (a plain state dict, as the hub file) prove wiring and parity, not edge
quality: the real weights are not available here. The heads' last layers are scaled so that the reference's
edge map spans many levels (asserted), so the comparison cannot pass on a constant map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import guides
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.parity import agreement
from guides.annotators.learned import pad_to_multiple
from guides.annotators.teed import SOFTEDGE_CONTROLNET, TeedAnnotator, TeedOptions
from guides.errors import DeviceError, InputError, UsageError
from guides.registry import get
from tests.cli_testing import invoke

GUIDE_SHARE = 0.999
NETWORK_BOUND = 1e-4
SEED, HEAD_SCALE = 1, 3.0
"""Seed and scale of the heads' last transposed convolutions: the reference guide of the cat spans 250 levels
(safe steps 0); with safe steps 2 its std is 89 (49 on the non-square photo), dark (< 64) and bright (> 191)
pixels 39% and 15% of it (24% and 4%)."""


@dataclass
class Reference:
    network: torch.nn.Module
    models_dir: Path


def reference_network(seed: int = SEED, scale: float = HEAD_SCALE) -> torch.nn.Module:
    from controlnet_aux.teed.ted import TED

    torch.manual_seed(seed)
    network = TED().eval()
    with torch.no_grad():
        for head in (network.up_block_1, network.up_block_2, network.up_block_3):
            head.features[-1].weight.mul_(scale)
    return network


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    folder = tmp_path_factory.mktemp("teed-models")
    network = reference_network()
    torch.save(network.state_dict(), folder / "5_model.pth")
    return Reference(network, folder)


@pytest.fixture(scope="module")
def annotator(reference: Reference) -> TeedAnnotator:
    return get("teed").load(models_dir=str(reference.models_dir), device="cpu")  # type: ignore[return-value]


def reference_guide(network: torch.nn.Module, image: np.ndarray, resolution: int = 512, safe_steps: int = 2) -> np.ndarray:
    """controlnet_aux's guide (it resizes back to the input size with INTER_LINEAR itself), first channel."""
    from controlnet_aux.teed import TEEDdetector

    with torch.no_grad():
        out = TEEDdetector(network)(image, detect_resolution=resolution, safe_steps=safe_steps, output_type="np")
    assert out.ndim == 3 and out.shape[:2] == image.shape[:2] and (out[..., 0] == out[..., 2]).all()
    return out[..., 0]


def test_network_matches_the_reference(reference: Reference, annotator: TeedAnnotator) -> None:
    x = torch.rand(2, 3, 128, 192) * 255
    with torch.inference_mode():
        theirs = reference.network(x)
        ours = annotator.model(x)
    assert len(ours) == len(theirs) == 4
    for got, expected in zip(ours, theirs):
        assert got.shape == expected.shape == (2, 1, 128, 192)
        assert (got - expected).abs().max().item() <= NETWORK_BOUND * max(1.0, expected.abs().max().item())


@pytest.mark.parametrize("source", ["cat", "nonsquare"])
def test_guide_matches_the_reference_detector(reference: Reference, annotator: TeedAnnotator, refs: Path,
                                              make_photo, source: str) -> None:
    image = guides.to_rgb_array(refs / "cutecat_init.png") if source == "cat" else make_photo(51, 600, 750)
    expected = reference_guide(reference.network, image)
    dark, bright = float((expected < 64).mean()), float((expected > 191).mean())
    assert expected.std() >= 40 and min(dark, bright) >= 0.02, (
        f"reference guide too uniform: std {expected.std():.1f}, dark {dark:.3f}, bright {bright:.3f}")
    guide = annotator.annotate(image)
    assert guide.shape == image.shape[:2] and guide.dtype == np.uint8
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"


@pytest.mark.parametrize("steps", [0, 3])
def test_safe_steps_match_the_reference(reference: Reference, refs: Path, steps: int) -> None:
    image = guides.to_rgb_array(refs / "cutecat_init.png")
    expected = reference_guide(reference.network, image, safe_steps=steps)
    if steps == 0:
        assert len(np.unique(expected)) >= 150, "reference guide too uniform"
    ours = get("teed").load(models_dir=str(reference.models_dir), device="cpu", safe_steps=steps).annotate(image)
    share, worst = agreement(ours, expected)
    assert share >= GUIDE_SHARE, f"safe_steps {steps}: {share:.5f} within 1 level (max {worst})"


def test_batches_equal_single_images(annotator: TeedAnnotator, make_photo) -> None:
    images = [make_photo(60, 64, 96), make_photo(61, 130, 70), make_photo(62, 66, 99), make_photo(63, 128, 64)]
    batched = TeedAnnotator(TeedOptions(resolution=64, batch_size=2, device="cpu"), model=annotator.model)
    single = TeedAnnotator(TeedOptions(resolution=64, device="cpu"), model=annotator.model)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2])
    assert batched.batch_key(images[1]) == batched.batch_key(images[3]) != batched.batch_key(images[0])
    for got, image in zip(batched.annotate_batch(images), images):
        assert got.shape == image.shape[:2]
        assert agreement(got, single.annotate(image))[0] >= GUIDE_SHARE


def test_resolution_zero_pads_and_crops(annotator: TeedAnnotator, make_photo) -> None:
    keep = TeedAnnotator(TeedOptions(resolution=0, device="cpu", safe_steps=0), model=annotator.model)
    image = make_photo(64, 45, 70)
    guide = keep.annotate(image)
    assert guide.shape == (45, 70)
    padded = pad_to_multiple(image[None], 8, 8)
    assert padded.shape[1:3] == (48, 72)
    edge = keep.forward(padded)[0, :45, :70]
    assert np.array_equal(guide, keep.edge_guide(edge, 0))
    for tiny in ((1, 1), (2, 3), (7, 5)):
        assert keep.annotate(make_photo(65, *tiny)).shape == tiny


def test_bf16_within_bound_of_fp32(reference: Reference, annotator: TeedAnnotator, make_photo) -> None:
    """Bound on the unquantised guide (safe steps 0); measured max 5, mean 0.6 levels with these weights."""
    image = make_photo(66, 128, 128)
    fp32 = TeedAnnotator(TeedOptions(resolution=128, device="cpu", safe_steps=0), model=annotator.model).annotate(image)
    bf16 = get("teed").load(models_dir=str(reference.models_dir), device="cpu", precision="bf16", resolution=128,
                            safe_steps=0)
    diff = np.abs(bf16.annotate(image).astype(int) - fp32)
    assert diff.max() <= 16 and diff.mean() <= 2.0, f"bf16: max {diff.max()}, mean {diff.mean():.3f}"


def test_declarations() -> None:
    (checkpoint,) = TeedAnnotator.checkpoints
    assert (checkpoint.repo, checkpoint.filename, checkpoint.container) == ("fal-ai/teed", "5_model.pth", "state_dict")
    assert checkpoint.licence.startswith("MIT")
    assert TeedAnnotator.controlnets == (SOFTEDGE_CONTROLNET,)
    assert SOFTEDGE_CONTROLNET.kind == "softedge" and SOFTEDGE_CONTROLNET.repo == "lllyasviel/control_v11p_sd15_softedge"
    assert TeedOptions().safe_steps == 2 and TeedOptions().resolution == 512


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"safe_steps": -1}, UsageError, "safe"),
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"thickness": 3}, UsageError, "unknown option(s) thickness"),
    ],
)
def test_bad_options_are_refused(reference: Reference, options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        get("teed").load(models_dir=str(reference.models_dir), **options)
    assert message in str(raised.value)


def test_bad_image_is_an_input_error(annotator: TeedAnnotator) -> None:
    with pytest.raises(InputError, match="RGB uint8"):
        annotator.forward(np.zeros((1, 8, 8, 3), np.float32))


def test_folder_with_bad_files(reference: Reference, tmp_path: Path, make_photo) -> None:
    """Corrupt file and 3 x 700 strip: one failed line each; the 1 x 1 image (working size 512 x 512) and the
    fine photo are written; exit code 1."""
    _, strip = run_bad_folder("teed", tmp_path, make_photo, "--models-dir", str(reference.models_dir), "--device",
                              "cpu", "--batch-size", "2")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has 61,177,856 "
        "pixels, over the teed limit of 16,777,216 (use a smaller --resolution or raise --max-working-pixels)"
    )


def test_cli_equals_python_api(reference: Reference, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(71, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "edges.png"
    result = invoke("teed", str(photo), "--models-dir", str(reference.models_dir), "--resolution", "64",
                    "--device", "cpu", "--safe-steps", "0", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (90, 70)
    api = guides.load("teed", models_dir=str(reference.models_dir), resolution=64, device="cpu", safe_steps=0)
    assert np.array_equal(np.asarray(written), api.annotate(image))
    (tmp_path / "empty").mkdir()
    missing = invoke("teed", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and "5_model.pth" in missing.output
    unknown = invoke("teed", str(photo), "--models-dir", str(reference.models_dir), "--thickness", "2", "-q")
    assert unknown.exit_code == 2
