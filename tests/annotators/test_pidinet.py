"""PiDiNet annotator: parity with controlnet_aux's ``PidiNetDetector`` pipeline (full-size network, the
public file's format), options, batching, precision, errors, CLI and API.

The real ``table5_pidinet.pth`` is not available here: a random reference network (seed 0) is saved in its
on-disk format (``{"state_dict": ...}`` with ``module.`` key prefixes) under its hub file name. Its
``classifier`` and ``conv_reduces`` weights are scaled (x20) so the fused edge map spans many grey levels
(a default-initialised network gives a nearly flat map); the tests assert that it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.parity import Capture, agreement, assert_batches_match_singles, sharing_network
from guides.annotators.pidinet import PidinetAnnotator, PidinetOptions
from guides.errors import DeviceError, UsageError, WeightsError
from guides.nets.pidinet import PixelDifferenceConv, pidinet, pixel_difference_kernel
from guides.registry import get
from tests.cli_testing import invoke

FILE_NAME = "table5_pidinet.pth"
GUIDE_SHARE = 0.999
"""Share of guide pixels within 1 level of the reference pipeline's guide."""
NETWORK_BOUND = 1e-4
HEAD_SCALE = 20.0
"""Scale of the reference's ``classifier`` and ``conv_reduces`` weights: the edge map's std is then about
50 grey levels instead of a nearly constant map."""


@dataclass
class Reference:
    model: torch.nn.Module
    models_dir: Path


def _reference_network(seed: int = 0) -> torch.nn.Module:
    from controlnet_aux.pidi.model import pidinet as reference_pidinet

    torch.manual_seed(seed)
    model = reference_pidinet().eval()
    with torch.no_grad():
        model.classifier.weight.mul_(HEAD_SCALE)
        for reduce in model.conv_reduces:
            reduce.conv.weight.mul_(HEAD_SCALE)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The random reference network saved as the public file is: ``{"state_dict": {"module.<key>": ...}}``."""
    folder = tmp_path_factory.mktemp("pidinet-models")
    model = _reference_network()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, folder / FILE_NAME)
    return Reference(model, folder)


@pytest.fixture(scope="module")
def annotator(reference: Reference) -> PidinetAnnotator:
    """Loaded through the registry and the weights contract (models folder)."""
    return get("pidinet").load(models_dir=str(reference.models_dir), device="cpu")  # type: ignore[return-value]


def reference_pipeline(model: torch.nn.Module, image: np.ndarray, resolution: int, **flags) -> np.ndarray:
    """controlnet_aux's detector at ``resolution`` (its working-size guide), resized to the input size as
    we do: INTER_LINEAR, INTER_NEAREST for a scribble."""
    from controlnet_aux.pidi import PidiNetDetector

    out = PidiNetDetector(model)(image, detect_resolution=resolution, image_resolution=resolution,
                                 output_type="np", **flags)
    assert out.ndim == 3 and (out[..., 0] == out[..., 2]).all()
    interpolation = cv2.INTER_NEAREST if flags.get("scribble") else cv2.INTER_LINEAR
    return cv2.resize(out[..., 0], (image.shape[1], image.shape[0]), interpolation=interpolation)


# ------------------------------------------------------------------------------------------- network


@pytest.mark.parametrize("kind", ["cv", "cd", "ad", "rd"])
def test_folded_kernels_equal_the_pixel_difference_convolutions(kind: str) -> None:
    """Each folded kernel gives the reference's pixel-difference convolution (controlnet_aux's functions)."""
    from controlnet_aux.pidi.model import createConvFunc

    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 1, 3, 3, generator=generator)
    x = torch.randn(1, 6, 17, 19, generator=generator)
    expected = createConvFunc(kind)(x, weight, None, 1, 1, 1, 6)
    conv = PixelDifferenceConv(kind, 6, 6, groups=6)
    with torch.no_grad():
        conv.weight.copy_(weight)
        folded = conv.folded()
        assert folded.kernel_size == ((5, 5) if kind == "rd" else (3, 3))
        assert torch.allclose(folded(x), expected, atol=1e-5)
        assert torch.allclose(conv(x), expected, atol=1e-5)
    assert pixel_difference_kernel(kind, weight).shape[-1] == folded.kernel_size[0]


def test_loaded_network_is_folded_and_has_the_checkpoints_keys(annotator: PidinetAnnotator, reference: Reference) -> None:
    assert set(pidinet().state_dict()) == set(reference.model.state_dict())
    assert not any(isinstance(m, PixelDifferenceConv) for m in annotator.model.modules()), "not folded at load"
    assert annotator.model.block1_2.conv1.kernel_size == (5, 5)  # layer 2 of carv4: radial


# -------------------------------------------------------------------------------------------- parity


def test_cat_matches_reference_pipeline(reference: Reference, annotator: PidinetAnnotator, refs: Path) -> None:
    cat = guides.to_rgb_array(refs / "cutecat_init.png")
    theirs_net, ours_net = Capture(reference.model, last_of_many=True), Capture(annotator.model, last_of_many=True)
    expected = reference_pipeline(reference.model, cat, 512)
    guide = annotator.annotate(cat)

    assert guide.shape == (512, 512) and guide.dtype == np.uint8
    assert torch.equal(ours_net.input, theirs_net.input), "pre-processing (BGR flip, /255) differs"
    network_diff = (ours_net.output - theirs_net.output).abs().max().item()
    assert network_diff <= NETWORK_BOUND, f"network outputs differ by {network_diff:.3g}"
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"
    levels, spread = len(np.unique(expected)), float(expected.std())
    assert levels >= 150 and spread >= 20, f"reference guide too uniform: {levels} levels, std {spread:.1f}"


def test_nonsquare_photo_matches_reference_pipeline(reference: Reference, annotator: PidinetAnnotator,
                                                    make_photo) -> None:
    """600 x 750: working size 512 x 640, guide resized back to 600 x 750."""
    image = make_photo(21, 600, 750)
    expected = reference_pipeline(reference.model, image, 512)
    guide = annotator.annotate(image)
    assert guide.shape == (600, 750)
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"
    assert len(np.unique(expected)) >= 150 and expected.std() >= 20


@pytest.mark.parametrize(
    "flags, shape",
    [({"safe": True}, (192, 256)), ({"scribble": True}, (192, 256)), ({"apply_filter": True}, (192, 256)),
     ({"apply_filter": True, "safe": True}, (192, 256)), ({"safe": True, "scribble": True}, (150, 200))],
    ids=["safe", "scribble", "apply-filter", "filter-and-safe", "safe-scribble-resized"],
)
def test_options_match_reference_flags(reference: Reference, annotator: PidinetAnnotator, make_photo,
                                       flags: dict, shape: tuple[int, int]) -> None:
    """192 x 256 is its own working size at --resolution 192 (the guide's values are not interpolated);
    150 x 200 is resized back from it, nearest-neighbour for a scribble (it stays binary)."""
    image = make_photo(22, *shape)
    expected = reference_pipeline(reference.model, image, 192, **flags)
    guide = sharing_network(annotator, resolution=192, **flags).annotate(image)
    assert guide.shape == image.shape[:2]
    values = set(np.unique(expected).tolist())
    if flags.get("scribble") or flags.get("apply_filter"):
        assert values == {0, 255}, f"binary guide expected, levels {sorted(values)[:10]}"
        assert 0.01 < (expected == 255).mean() < 0.9, "the binary reference guide should have real structure"
    if flags == {"safe": True}:
        assert values <= {0, 127, 255} and len(values) == 3
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"{flags}: only {share:.5f} within 1 level (max diff {worst})"


def test_batches_equal_single_images(annotator: PidinetAnnotator, make_photo) -> None:
    """Two working sizes among four images, batches of 2: grouped, order kept, same guides."""
    images = [make_photo(30, 64, 96), make_photo(31, 130, 70), make_photo(32, 66, 99), make_photo(33, 128, 64)]
    batched = sharing_network(annotator, resolution=64, batch_size=2)
    single = sharing_network(annotator, resolution=64)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2]) == (64, 128)
    assert batched.batch_key(images[1]) == batched.batch_key(images[3]) == (128, 64)
    assert_batches_match_singles(batched, single, images)


def test_resolution_zero_keeps_the_size_and_pads_tiny_images(annotator: PidinetAnnotator, make_photo) -> None:
    keep = sharing_network(annotator, resolution=0)
    image = make_photo(24, 45, 70)
    guide = keep.annotate(image)
    assert guide.shape == (45, 70)
    for tiny in ((1, 1), (2, 3), (7, 5)):
        assert keep.annotate(make_photo(25, *tiny)).shape == tiny


def test_bf16_within_bound_of_fp32(annotator: PidinetAnnotator, reference: Reference, make_photo) -> None:
    """bf16 on the CPU. Bound on the uint8 guide: measured max 4, mean 0.7 levels with these weights (the
    x20 head amplifies bf16's 3 significant digits)."""
    image = make_photo(26, 128, 128)
    fp32 = sharing_network(annotator, resolution=128).annotate(image)
    bf16 = get("pidinet").load(models_dir=str(reference.models_dir), device="cpu", precision="bf16", resolution=128)
    diff = np.abs(bf16.annotate(image).astype(int) - fp32)
    assert diff.max() <= 16 and diff.mean() <= 2, f"bf16: max {diff.max()}, mean {diff.mean():.3f}"


# -------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": -1}, UsageError, "resolution must be 0 or more"),
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"thickness": 3}, UsageError, "unknown option(s) thickness"),
    ],
)
def test_bad_options_are_refused(reference: Reference, options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        get("pidinet").load(models_dir=str(reference.models_dir), **options)
    assert message in str(raised.value)


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        get("pidinet").load(models_dir=str(tmp_path), device="cpu")
    assert FILE_NAME in str(raised.value)


def test_plain_state_dict_file_is_refused_naming_the_container(tmp_path: Path, reference: Reference) -> None:
    torch.save(reference.model.state_dict(), tmp_path / FILE_NAME)
    with pytest.raises(WeightsError) as raised:
        get("pidinet").load(models_dir=str(tmp_path), device="cpu")
    assert str(tmp_path / FILE_NAME) in str(raised.value) and "'state_dict'" in str(raised.value)


def test_controlnets_scribble_first_then_softedge() -> None:
    scribble, softedge = PidinetAnnotator.controlnets
    assert (scribble.kind, scribble.repo) == ("scribble", "lllyasviel/control_v11p_sd15_scribble")
    assert (softedge.kind, softedge.repo, softedge.when) == ("softedge", "lllyasviel/control_v11p_sd15_softedge", ())
    assert scribble.selected_by(PidinetOptions(scribble=True)) and not scribble.selected_by(PidinetOptions())


# ---------------------------------------------------------------------------------------- CLI and API


def test_cli_and_python_api(reference: Reference, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(27, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "edges.png"
    result = invoke("pidinet", str(photo), "--models-dir", str(reference.models_dir), "--resolution", "64",
                    "--device", "cpu", "--safe", "--apply-filter", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (90, 70)
    direct = get("pidinet").load(models_dir=str(reference.models_dir), device="cpu", resolution=64, safe=True,
                                 apply_filter=True)
    assert np.array_equal(np.asarray(written), direct.annotate(image))
    api = guides.load("pidinet", models_dir=str(reference.models_dir), resolution=64, device="cpu", safe=True,
                      apply_filter=True)
    assert np.array_equal(api.annotate(image), np.asarray(written))
    unknown = invoke("pidinet", str(photo), "--models-dir", str(reference.models_dir), "--thickness", "3", "-q")
    assert unknown.exit_code == 2 and "--thickness" in unknown.output
    (tmp_path / "empty").mkdir()
    missing = invoke("pidinet", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and FILE_NAME in missing.output


def test_bad_files_fail_one_line_each_and_the_rest_is_written(reference: Reference, tmp_path: Path,
                                                              make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (working size 256 x 59712 at --resolution 256: 15 Mpx, refused
    before any resizing) fail with one line each; a 1 x 1 image succeeds (a 1 x 1 guide), as does a fine one."""
    _, strip = run_bad_folder("pidinet", tmp_path, make_photo, "--models-dir", str(reference.models_dir),
                              "--device", "cpu", "--resolution", "256")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 59712x256 at --resolution 256 has "
        "15,286,272 pixels, over the pidinet limit of 8,388,608 (use a smaller --resolution or raise --max-working-pixels)"
    )
