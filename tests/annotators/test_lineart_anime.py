"""Anime lineart annotator: parity with controlnet_aux's ``LineartAnimeDetector`` pipeline at the full-size
network, the 256-multiple network size, polarity, options, batching, bf16, errors, CLI and API.

Random weights saved as ``netG.pth`` in its public on-disk format (a plain state dict whose keys carry
``nn.DataParallel``'s ``module.`` prefix) prove wiring and parity, not line quality: the real weights are
not available here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.parity import Capture, agreement, assert_batches_match_singles
from guides.annotators.lineart_anime import LineartAnimeAnnotator, LineartAnimeOptions, network_size
from guides.errors import DeviceError, InputError, UsageError, WeightsError
from guides.registry import get
from tests.cli_testing import invoke

GUIDE_SHARE = 0.999
"""Share of guide pixels within 1 level of the reference pipeline's guide."""
NETWORK_BOUND = 1e-4
"""Largest difference between our network's output (tanh, [-1, 1]) and the reference's: measured 1.7e-5."""
HEAD_SCALE = 0.2
"""The reference's outermost transposed convolution is scaled down: with random weights its tanh saturates
(a map of mostly 0 and 255); scaled, the guide spans about 200 grey levels."""


@dataclass
class Reference:
    network: torch.nn.Module
    models_dir: Path


def _reference_network(seed: int) -> torch.nn.Module:
    from controlnet_aux.lineart_anime import UnetGenerator as ReferenceGenerator

    torch.manual_seed(seed)
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    model = ReferenceGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False).eval()
    with torch.no_grad():
        head = model.model.model[3]
        head.weight.mul_(HEAD_SCALE)
        head.bias.mul_(HEAD_SCALE)
    return model


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The full-size reference generator (UnetGenerator(3, 1, 8, 64), 54.4 M parameters), saved as
    ``netG.pth`` the way the public file is: a state dict with ``module.`` key prefixes."""
    folder = tmp_path_factory.mktemp("lineart-anime-models")
    network = _reference_network(0)
    torch.save({f"module.{key}": value for key, value in network.state_dict().items()}, folder / "netG.pth")
    return Reference(network, folder)


@pytest.fixture(scope="module")
def annotator(reference: Reference) -> LineartAnimeAnnotator:
    """Loaded through the registry and the weights contract (models folder, module prefix stripped)."""
    return get("lineart-anime").load(models_dir=str(reference.models_dir), device="cpu")  # type: ignore[return-value]


def detector_output(model: torch.nn.Module, image: np.ndarray, resolution: int) -> np.ndarray:
    """controlnet_aux's detector (its working size, 256-multiple cubic resizes, white lines on black),
    its working-size result resized to the input size the way we resize (INTER_LINEAR)."""
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    out = LineartAnimeDetector(model)(image, detect_resolution=resolution, image_resolution=resolution, output_type="np")
    assert out.ndim == 3 and (out[..., 0] == out[..., 2]).all()
    return cv2.resize(out[..., 0], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("which", ["cat-512x512", "photo-600x750"])
def test_guide_matches_reference_pipeline(reference: Reference, annotator: LineartAnimeAnnotator, refs: Path,
                                          make_photo, which: str) -> None:
    """The reference cat (network at 512 x 512, no resize) and a photo whose working image is 512 x 640
    (network at 512 x 768: cubic resizes both ways)."""
    if which.startswith("cat"):
        image = guides.to_rgb_array(refs / "cutecat_init.png")
        network_shape = (1, 3, 512, 512)
    else:
        image = make_photo(21, 600, 750)
        network_shape = (1, 3, 512, 768)
    theirs_net, ours_net = Capture(reference.network), Capture(annotator.model)
    expected = 255 - detector_output(reference.network, image, 512)
    guide = annotator.annotate(image)

    assert guide.shape == image.shape[:2] and guide.dtype == np.uint8
    assert theirs_net.input is not None and ours_net.input is not None
    assert tuple(ours_net.input.shape) == network_shape
    assert torch.equal(ours_net.input, theirs_net.input), "pre-processing (cubic resize, /127.5 - 1) differs"
    network_diff = (ours_net.output - theirs_net.output).abs().max().item()
    assert network_diff <= NETWORK_BOUND, f"network outputs differ by {network_diff:.3g}"
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"
    levels, spread = len(np.unique(expected)), float(expected.std())
    assert levels >= 150 and spread >= 15, f"reference guide too uniform: {levels} grey levels, std {spread:.1f}"


def test_invert_matches_controlnet_aux(reference: Reference, annotator: LineartAnimeAnnotator, make_photo) -> None:
    """``--invert`` is controlnet_aux's output (white lines on black); the default is its inverse."""
    image = make_photo(22, 100, 140)
    inverted = LineartAnimeAnnotator(LineartAnimeOptions(resolution=64, invert=True, device="cpu"), model=annotator.model)
    plain = LineartAnimeAnnotator(LineartAnimeOptions(resolution=64, device="cpu"), model=annotator.model)
    got = inverted.annotate(image)
    share, worst = agreement(got, detector_output(reference.network, image, 64))
    assert share >= GUIDE_SHARE, f"--invert: {share:.5f} within 1 level (max {worst})"
    assert np.array_equal(got, 255 - plain.annotate(image))


def test_cpu_paths_equal_the_layer_stack() -> None:
    """Our network's CPU forward (channels-last, fused norms, prepacked oneDNN weights, the phase form of
    the one-channel transposed convolution), with and without packing, against the layer stack as defined
    (``reference_forward``) and against controlnet_aux's module, on a small five-level U-Net and two batch
    shapes other than the packing size."""
    from controlnet_aux.lineart_anime import UnetGenerator as ReferenceGenerator

    from guides.nets.unet_generator import UnetGenerator

    torch.manual_seed(3)
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    theirs = ReferenceGenerator(3, 1, 5, 8, norm_layer=norm).eval()
    ours = UnetGenerator(3, 1, 5, 8).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    plain_cpu = UnetGenerator(3, 1, 5, 8).eval().to(memory_format=torch.channels_last)
    plain_cpu.load_state_dict(theirs.state_dict())
    ours = ours.to(memory_format=torch.channels_last)
    assert ours.pack_weights(64)
    for shape in ((1, 3, 64, 96), (2, 3, 32, 64)):
        x = torch.rand(shape) * 2 - 1
        with torch.inference_mode():
            expected = theirs(x.clone())
            for got in (ours.reference_forward(x), ours(x), plain_cpu(x)):
                assert got.shape == expected.shape
                assert (got - expected).abs().max().item() <= 1e-5


def test_network_size_rounds_sides_up_to_256() -> None:
    assert network_size(512, 512) == (512, 512)
    assert network_size(512, 640) == (512, 768)
    assert network_size(1, 1) == (256, 256)
    assert network_size(257, 256) == (512, 256)
    assert network_size(64, 1000) == (256, 1024)


class RedChannel(torch.nn.Module):
    """Stands in for the generator: its output (tanh range, 1 = paper) is the input's red channel, so a
    grey drawing of dark lines on white is its own line map."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the detector asks the model for its device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].clone()


def test_guide_is_the_raw_output_dark_lines_on_white() -> None:
    """Network output 1 = paper: our guide is ``out * 127.5 + 127.5`` (paper 255, lines 0), not inverted;
    controlnet_aux gives its inverse, and ``--invert`` gives exactly that."""
    from controlnet_aux.lineart_anime import LineartAnimeDetector

    drawing = np.full((256, 512, 3), 255, np.uint8)
    cv2.line(drawing, (10, 20), (500, 200), (0, 0, 0), 3)
    cv2.circle(drawing, (200, 90), 40, (0, 0, 0), 2)
    drawing[200:240, 20:90] = 128  # a mid-grey patch: the scaling, not just black and white
    network = RedChannel()
    ours = LineartAnimeAnnotator(LineartAnimeOptions(resolution=256, device="cpu"), model=network).annotate(drawing)
    inverted = LineartAnimeAnnotator(LineartAnimeOptions(resolution=256, invert=True, device="cpu"), model=network).annotate(drawing)
    assert ours.shape == (256, 512) and ours.dtype == np.uint8
    lines = drawing[..., 0] == 0
    assert (ours[lines] == 0).all() and (ours[drawing[..., 0] == 255] == 255).all(), "dark lines on white paper"
    assert np.array_equal(ours[200:240, 20:90], np.full((40, 70), 128, np.uint8))
    theirs = LineartAnimeDetector(network)(drawing, detect_resolution=256, image_resolution=256, output_type="np")
    assert np.array_equal(theirs[..., 0], 255 - ours), "the reference pipeline's guide is the inverse of ours"
    assert np.array_equal(inverted, theirs[..., 0])


def test_batches_equal_single_images(annotator: LineartAnimeAnnotator, make_photo) -> None:
    """Two working sizes among four images, batches of 2: grouped, order kept, same guides."""
    images = [make_photo(30, 64, 96), make_photo(31, 130, 70), make_photo(32, 66, 99), make_photo(33, 128, 64)]
    batched = LineartAnimeAnnotator(LineartAnimeOptions(resolution=64, batch_size=2, device="cpu"), model=annotator.model)
    single = LineartAnimeAnnotator(LineartAnimeOptions(resolution=64, device="cpu"), model=annotator.model)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2]) == (64, 128)
    assert batched.batch_key(images[1]) == batched.batch_key(images[3]) == (128, 64)
    assert_batches_match_singles(batched, single, images)


def test_resolution_zero_keeps_the_size(annotator: LineartAnimeAnnotator, make_photo) -> None:
    """``--resolution 0``: the input is the working image (the network runs at its sides rounded up to
    256, cubic-resized both ways); tiny images work and keep their size."""
    keep = LineartAnimeAnnotator(LineartAnimeOptions(resolution=0, device="cpu"), model=annotator.model)
    image = make_photo(24, 45, 70)
    guide = keep.annotate(image)
    assert guide.shape == (45, 70)
    raw = keep.forward(image[None])[0]
    assert raw.shape == (256, 256)
    expected = cv2.resize(raw, (70, 45), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    assert np.array_equal(guide, expected)
    for tiny in ((1, 1), (2, 3)):
        assert keep.annotate(make_photo(25, *tiny)).shape == tiny


def test_bf16_within_bound_of_fp32(annotator: LineartAnimeAnnotator, reference: Reference, make_photo) -> None:
    """bf16 runs on the CPU (oneDNN: AMX/avx512_bf16 or emulated). Bound on the uint8 guide: measured max 3,
    mean 0.3 levels with these weights (bf16 keeps 3 significant digits through 16 convolutions)."""
    image = make_photo(26, 128, 128)
    fp32 = LineartAnimeAnnotator(LineartAnimeOptions(resolution=128, device="cpu"), model=annotator.model).annotate(image)
    bf16 = get("lineart-anime").load(models_dir=str(reference.models_dir), device="cpu", precision="bf16", resolution=128)
    diff = np.abs(bf16.annotate(image).astype(int) - fp32)
    assert diff.max() <= 8 and diff.mean() <= 1.0, f"bf16: max {diff.max()}, mean {diff.mean():.3f}"


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": -1}, UsageError, "resolution must be 0 or more"),
        ({"batch_size": 0}, UsageError, "batch size must be between 1 and 1024, got 0"),
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"coarse": True}, UsageError, "unknown option(s) coarse"),
    ],
)
def test_bad_options_are_refused(reference: Reference, options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        get("lineart-anime").load(models_dir=str(reference.models_dir), **options)
    assert message in str(raised.value)


def test_bad_image_is_an_input_error(annotator: LineartAnimeAnnotator) -> None:
    with pytest.raises(InputError, match="RGB uint8"):
        annotator.forward(np.zeros((1, 8, 8, 3), np.float32))


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        get("lineart-anime").load(models_dir=str(tmp_path), device="cpu")
    assert "netG.pth" in str(raised.value)


def test_declared_checkpoint_and_controlnet() -> None:
    (checkpoint,) = LineartAnimeAnnotator.checkpoints
    assert (checkpoint.name, checkpoint.filename, checkpoint.container) == ("lineart-anime", "netG.pth", "state_dict")
    assert checkpoint.may_have_module_prefix and checkpoint.key_filters == ("strip_module_prefix",)
    assert checkpoint.size == 217_631_959 and checkpoint.sha256 is not None and len(checkpoint.sha256) == 64
    (controlnet,) = LineartAnimeAnnotator.controlnets
    assert controlnet.repo == "lllyasviel/control_v11p_sd15s2_lineart_anime"
    assert controlnet.kind_for("lineart-anime") == "lineart-anime"


def test_cli_and_python_api(reference: Reference, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(27, 70, 90)
    Image.fromarray(image).save(photo)
    out = tmp_path / "line.png"
    result = invoke("lineart-anime", str(photo), "--models-dir", str(reference.models_dir), "--resolution", "64",
                    "--device", "cpu", "--invert", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (90, 70)
    direct = get("lineart-anime").load(models_dir=str(reference.models_dir), device="cpu", resolution=64, invert=True)
    assert np.array_equal(np.asarray(written), direct.annotate(image))
    api = guides.lineart_anime(photo, models_dir=str(reference.models_dir), resolution=64, device="cpu", invert=True)
    assert np.array_equal(np.asarray(api), np.asarray(written))
    (tmp_path / "empty").mkdir()
    missing = invoke("lineart-anime", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and "netG.pth" in missing.output
    unknown = invoke("lineart-anime", str(photo), "--models-dir", str(reference.models_dir), "--coarse")
    assert unknown.exit_code == 2 and "--coarse" in unknown.output


def test_folder_with_bad_files_fails_those_files_only(reference: Reference, tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (at --resolution 512 a 512 x 119488 working image, 61 Mpx: refused
    before any resizing) fail with one line each; a 1 x 1 image succeeds (a 1 x 1 guide) and so does the
    fine one."""
    _, strip = run_bad_folder("lineart-anime", tmp_path, make_photo, "--models-dir", str(reference.models_dir),
                              "--device", "cpu")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has "
        "61,177,856 pixels, over the lineart-anime limit of 16,777,216 (use a smaller --resolution or raise "
        "--max-working-pixels)"
    )
