"""M-LSD annotator: parity with controlnet_aux's ``MLSDdetector`` (network, segments, guide), options,
decoding conventions, batching, errors, CLI and API.

The real ``mlsd_large_512_fp32.pth`` is not available here. A random ``MobileV2_MLSD_Large`` would find
200 tiny segments (its centre scores all sit near 0.5) or, once its outputs are merely scaled, lines only
along the image border (zero padding dominates random features), with saturated, tied scores. So the
fixture calibrates it the way data-dependent initialisation does: every batch norm gets the statistics of
its input on the reference cat (one training-mode pass with momentum 1, random affine parameters; variances
floored at 0.01 so that no nearly constant channel amplifies float rounding), then
the head's centre map is standardised (interior std 2, median -10: only the strongest peaks pass the 0.1
threshold) and its four displacement maps too (std 8 half-resolution pixels, zero mean). The reference
then finds dozens of segments of varied lengths and directions on photos, which the tests assert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from tests.annotators.parity import Capture, agreement, assert_batches_match_singles
from guides.annotators.learned import pad_to_multiple
from guides.annotators.mlsd import MlsdAnnotator, MlsdOptions
from guides.errors import DeviceError, InputError, UsageError, WeightsError
from guides.registry import get
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.cli_testing import invoke

CHECKPOINT = "mlsd_large_512_fp32.pth"
NETWORK_BOUND = 2e-5
"""Largest difference allowed between our (folded, channels-last) network's maps and the reference's,
relative to the largest value of the reference's maps (measured: 4e-6)."""
GUIDE_SHARE = 0.999
"""Share of guide pixels within 1 level of the reference pipeline's guide."""
CENTRE_STD, CENTRE_MEDIAN, DISPLACEMENT_STD = 2.0, -10.0, 8.0
VARIANCE_FLOOR = 0.01


def _network_input(image: np.ndarray) -> torch.Tensor:
    """The reference's network input for a working image: RGB and ones, / 127.5 - 1 (float32)."""
    stacked = np.concatenate([image, np.ones(image.shape[:2] + (1,))], axis=-1)
    return torch.from_numpy(stacked.transpose(2, 0, 1)[None].astype(np.float32) / 127.5 - 1.0)


def calibrated_reference(seed: int, image: np.ndarray) -> torch.nn.Module:
    """A random ``MobileV2_MLSD_Large`` calibrated on ``image`` (512 x 512) as the module docstring says."""
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    torch.manual_seed(seed)
    model = MobileV2_MLSD_Large()
    batch = _network_input(image)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
        model.train()(batch)
        for module in model.modules():  # no channel amplified more than 10x: float rounding stays small
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.clamp_(min=VARIANCE_FLOOR)
        maps = model.eval()(batch)[0, :5, 8:-8, 8:-8]  # interior: away from the padded border
        head = model.block23.conv3
        scale = CENTRE_STD / maps[0].std()
        head.weight[7] *= scale
        head.bias[7] = (head.bias[7] - maps[0].median()) * scale + CENTRE_MEDIAN
        for index in range(1, 5):
            scale = DISPLACEMENT_STD / maps[index].std()
            head.weight[7 + index] *= scale
            head.bias[7 + index] = (head.bias[7 + index] - maps[index].mean()) * scale
    return model


@dataclass
class Reference:
    model: torch.nn.Module
    models_dir: Path


@pytest.fixture(scope="module")
def reference(refs: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The calibrated reference network saved as a plain state dict under the hub file name."""
    cat = guides.to_rgb_array(refs / "cutecat_init.png")
    model = calibrated_reference(0, cat)
    folder = tmp_path_factory.mktemp("mlsd-models")
    torch.save(model.state_dict(), folder / CHECKPOINT)
    return Reference(model, folder)


@pytest.fixture(scope="module")
def annotator(reference: Reference) -> MlsdAnnotator:
    """Loaded through the registry and the weights contract (models folder)."""
    return get("mlsd").load(models_dir=str(reference.models_dir), device="cpu")  # type: ignore[return-value]


def reference_pipeline(model: torch.nn.Module, image: np.ndarray, resolution: int, monkeypatch: pytest.MonkeyPatch,
                       thr_v: float = 0.1, thr_d: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """controlnet_aux's detector at ``resolution``: its guide resized to the input size (INTER_LINEAR),
    and the segments its ``pred_lines`` returned (int, as it draws them; (0, 4) when it found none)."""
    import controlnet_aux.mlsd as reference_mlsd
    from controlnet_aux.mlsd import MLSDdetector

    found: list[np.ndarray] = []
    original = reference_mlsd.pred_lines

    def recording(*args: Any, **kwargs: Any) -> np.ndarray:
        lines = original(*args, **kwargs)
        found.append(np.array([[int(value) for value in line] for line in lines], np.int64).reshape(-1, 4))
        return lines

    monkeypatch.setattr(reference_mlsd, "pred_lines", recording)
    with torch.no_grad():
        out = MLSDdetector(model)(image, thr_v=thr_v, thr_d=thr_d, detect_resolution=resolution,
                                  image_resolution=resolution, output_type="np")
    monkeypatch.setattr(reference_mlsd, "pred_lines", original)
    assert out.ndim == 3 and (out[..., 0] == out[..., 2]).all()
    guide = cv2.resize(out[..., 0], (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    return guide, (found[0] if found else np.zeros((0, 4), np.int64))


def ours_with_segments(annotator: MlsdAnnotator, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our guide and segments from one network run (the engine's prepare/predict/finish)."""
    item = annotator.prepare(image)
    (prediction,) = annotator.predict([item])
    return annotator.finish(item, prediction), annotator.segments(prediction)


def assert_same_segments(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same count and the same integer coordinates (as sets: both are in score order, which ties may
    permute)."""
    assert ours.shape == theirs.shape, f"{len(ours)} segments, the reference found {len(theirs)}"
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))


# ---------------------------------------------------------------------------------------------- parity


def test_network_matches_reference(reference: Reference, annotator: MlsdAnnotator, make_photo) -> None:
    """Same input tensor (RGB / 127.5 - 1 and the constant fourth channel) and the same five maps the
    decoder reads (our batch norms folded, channels-last), at a non-square working size."""
    image = make_photo(40, 192, 256)
    small = MlsdAnnotator(MlsdOptions(resolution=192, device="cpu"), model=annotator.model)
    working = small.prepare(image).pixels
    ours = Capture(annotator.model)
    small.forward(working[None])
    with torch.no_grad():
        theirs = reference.model(_network_input(working))
    assert ours.input is not None and ours.output is not None
    assert torch.equal(ours.input, _network_input(working)), "pre-processing differs"
    assert ours.output.shape == (1, 5, 96, 128)
    diff = (ours.output - theirs[:, :5]).abs().max().item()
    assert diff <= NETWORK_BOUND * theirs[:, :5].abs().max().item(), f"maps differ by {diff:.3g}"


def test_plain_kernels_compute_the_same_maps(annotator: MlsdAnnotator, make_photo,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Off the CPU (or without oneDNN) each folded convolution runs as ``conv2d`` then its activation:
    forced here, the same maps as the fused oneDNN kernels."""
    from guides.nets import mlsd as network

    batch = _network_input(resize_image_to_64(make_photo(41, 128, 192))).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fused = annotator.model(batch)
        monkeypatch.setattr(network, "_fused_kernel_available", lambda dtype: False)
        plain = annotator.model(batch)
    assert (fused - plain).abs().max().item() <= NETWORK_BOUND * fused.abs().max().item()


def resize_image_to_64(image: np.ndarray) -> np.ndarray:
    """Crop to sides that are multiples of 64 (a working size)."""
    return np.ascontiguousarray(image[: image.shape[0] // 64 * 64, : image.shape[1] // 64 * 64])


@pytest.mark.parametrize("which", ["cat", "nonsquare"])
def test_guide_and_segments_match_reference(reference: Reference, annotator: MlsdAnnotator, refs: Path,
                                            make_photo, monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """The reference cat (512 x 512) and a non-square photo (``kitchen_dog.png`` cropped to 400 x 512,
    working size 512 x 640): the same segments as the reference's ``pred_lines`` and the same guide, at
    the input size."""
    if which == "cat":
        image = guides.to_rgb_array(refs / "cutecat_init.png")
    else:
        image = np.ascontiguousarray(guides.to_rgb_array(refs / "kitchen_dog.png")[:, 56:456])
        assert image.shape == (512, 400, 3)
    expected, their_segments = reference_pipeline(reference.model, image, 512, monkeypatch)
    guide, segments = ours_with_segments(annotator, image)

    assert guide.shape == image.shape[:2] and guide.dtype == np.uint8
    assert 20 <= len(their_segments) < 200, f"{len(their_segments)} segments: the test needs real structure"
    lengths = np.hypot(*(their_segments[:, :2] - their_segments[:, 2:]).T)
    assert np.percentile(lengths, 90) > 2 * np.percentile(lengths, 10) > 10, "segments of varied lengths"
    assert (expected > 0).mean() > 0.01, "the reference guide has too few lit pixels"
    assert_same_segments(segments, their_segments)
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"only {share:.5f} of pixels within 1 level (max diff {worst})"


@pytest.mark.parametrize("score, distance", [(0.3, 0.1), (0.1, 25.0), (0.0, 0.0)])
def test_thresholds_match_reference(reference: Reference, annotator: MlsdAnnotator, make_photo,
                                    monkeypatch: pytest.MonkeyPatch, score: float, distance: float) -> None:
    """``score_threshold``/``distance_threshold`` are the reference's ``thr_v``/``thr_d`` (0 keeps every
    centre: all 200)."""
    image = make_photo(22, 200, 260)
    options = MlsdOptions(resolution=256, device="cpu", score_threshold=score, distance_threshold=distance)
    ours = MlsdAnnotator(options, model=annotator.model)
    default = MlsdAnnotator(MlsdOptions(resolution=256, device="cpu"), model=annotator.model)
    expected, their_segments = reference_pipeline(reference.model, image, 256, monkeypatch, thr_v=score, thr_d=distance)
    guide, segments = ours_with_segments(ours, image)
    _, default_segments = ours_with_segments(default, image)
    assert_same_segments(segments, their_segments)
    assert len(segments) != len(default_segments), "the thresholds should change the segments found"
    if score == 0.0:
        assert len(segments) == 200
    share, worst = agreement(guide, expected)
    assert share >= GUIDE_SHARE, f"{share:.5f} within 1 level (max {worst})"


# -------------------------------------------------------------------------------- decoding conventions


class KnownMaps(torch.nn.Module):
    """Stands in for the network: a centre logit of -20 everywhere (score 2e-9) except at ``centres``
    ((y, x) -> logit, displacements start x, y, end x, y), at half the input's size."""

    def __init__(self, centres: dict[tuple[int, int], tuple[float, float, float, float, float]], maps: int = 9) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the reference asks the model for its device
        self.centres = centres
        self.maps = maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], self.maps, x.shape[2] // 2, x.shape[3] // 2, dtype=x.dtype, device=x.device)
        out[:, 0] = -20.0
        for (y, x_), values in self.centres.items():
            out[:, :5, y, x_] = torch.tensor(values, dtype=x.dtype)
        return out

    def prepare_for_inference(self) -> KnownMaps:
        return KnownMaps(self.centres, maps=5)


def known_annotator(network: KnownMaps, resolution: int = 256, **options: Any) -> MlsdAnnotator:
    return MlsdAnnotator(MlsdOptions(resolution=resolution, device="cpu", **options), model=network)


def test_no_lines_gives_a_black_guide(monkeypatch: pytest.MonkeyPatch, make_photo) -> None:
    """A map with no centre above the threshold: an all-black guide, as the reference (which fails on its
    empty segment list and returns its black canvas)."""
    network = KnownMaps({})
    image = make_photo(23, 200, 300)
    guide = known_annotator(network).annotate(image)
    assert guide.shape == (200, 300) and not guide.any()
    expected, segments = reference_pipeline(network, image, 256, monkeypatch)
    assert not expected.any() and len(segments) == 0


def test_flat_image_matches_reference(reference: Reference, annotator: MlsdAnnotator,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat grey image: whatever the (random) network finds there, the same guide as the reference."""
    image = np.full((128, 128, 3), 128, np.uint8)
    ours = MlsdAnnotator(MlsdOptions(resolution=128, device="cpu"), model=annotator.model)
    expected, their_segments = reference_pipeline(reference.model, image, 128, monkeypatch)
    guide, segments = ours_with_segments(ours, image)
    assert_same_segments(segments, their_segments)
    assert np.array_equal(guide, expected)


def test_known_centres_draw_known_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoints are 2 * (centre + displacement) truncated toward zero, drawn 1 px wide at 255; a score
    at the threshold, a segment no longer than the distance threshold and a centre that is not the
    maximum of its 3 x 3 neighbourhood are dropped; lines leaving the image are clipped."""
    centres = {
        (20, 30): (3.0, -10.25, 0.5, 12.75, -0.5),  # kept: (39.5, 41) .. (85.5, 39) -> (39, 41) .. (85, 39)
        (3, 2): (2.0, -2.3, -4.0, 10.0, 1.0),  # kept: (-0.6, -2) .. (24, 8): toward zero, -0.6 -> 0
        (100, 10): (0.0, -5.6, -5.6, 5.6, 5.6),  # kept: (8, 188) .. (31, 211)
        (101, 10): (-0.5, 0.0, 0.0, 30.0, 0.0),  # not a peak: its neighbour (100, 10) scores higher
        (60, 60): (-2.1972246, 0.0, 0.0, 20.0, 0.0),  # score 0.1 (float32): not above the threshold
        (70, 90): (5.0, 0.0, 0.0, 0.05, 0.05),  # length 0.07: not above 0.1
        (5, 120): (1.0, -5.0, 0.0, 200.0, 0.0),  # runs off the right edge: clipped
    }
    network = KnownMaps(centres)
    annotator = known_annotator(network)
    image = np.zeros((256, 256, 3), np.uint8)
    item = annotator.prepare(image)
    (prediction,) = annotator.predict([item])
    segments = annotator.segments(prediction)
    assert sorted(map(tuple, segments.tolist())) == sorted([(39, 41, 85, 39), (0, -2, 24, 8), (8, 188, 31, 211), (230, 10, 640, 10)])
    drawn = np.zeros((256, 256), np.uint8)
    for x0, y0, x1, y1 in segments.tolist():
        cv2.line(drawn, (x0, y0), (x1, y1), 255, 1)
    guide = annotator.finish(item, prediction)
    assert np.array_equal(guide, drawn) and set(np.unique(guide)) == {0, 255}
    expected, their_segments = reference_pipeline(network, image, 256, monkeypatch)
    assert_same_segments(segments, their_segments)
    assert np.array_equal(guide, expected)


def test_guide_is_resized_to_the_input_with_inter_linear(make_photo) -> None:
    network = KnownMaps({(30, 40): (3.0, -20.0, -7.0, 20.0, 7.0)})
    image = make_photo(24, 150, 190)  # working size 256 x 320
    annotator = known_annotator(network)
    item = annotator.prepare(image)
    assert item.pixels.shape == (256, 320, 3)
    (prediction,) = annotator.predict([item])
    working = annotator.draw(annotator.segments(prediction), (256, 320))
    guide = annotator.finish(item, prediction)
    assert np.array_equal(guide, cv2.resize(working, (190, 150), interpolation=cv2.INTER_LINEAR))
    assert len(np.unique(guide)) > 2, "grey edges where the size changes"


# ------------------------------------------------------------------------------ batching, sizes, dtypes


def test_batches_equal_single_images(annotator: MlsdAnnotator, make_photo) -> None:
    """Two working sizes among four images, batches of 2: grouped, order kept, same guides."""
    images = [make_photo(30, 64, 96), make_photo(31, 130, 70), make_photo(32, 66, 99), make_photo(33, 128, 64)]
    batched = MlsdAnnotator(MlsdOptions(resolution=128, batch_size=2, device="cpu"), model=annotator.model)
    single = MlsdAnnotator(MlsdOptions(resolution=128, device="cpu"), model=annotator.model)
    assert batched.batch_key(images[0]) == batched.batch_key(images[2]) == (128, 192)
    assert batched.batch_key(images[1]) == batched.batch_key(images[3]) == (256, 128)
    assert_batches_match_singles(batched, single, images, max_diff=0)


def test_resolution_zero_pads_to_multiples_of_16_and_ignores_the_padding(make_photo) -> None:
    """At its own size (45 x 70) the image is reflect-padded to 48 x 80 for the network; a centre in the
    padding (half-resolution row 23 = image row 46) is ignored, one inside is kept; tiny images work."""
    network = KnownMaps({(22, 10): (3.0, 0.0, 0.0, 20.0, 0.0), (23, 20): (4.0, 0.0, 0.0, 10.0, 0.0)})
    keep = known_annotator(network, resolution=0)
    image = make_photo(25, 45, 70)
    assert pad_to_multiple(image[None], 16, 16).shape[1:3] == (48, 80)
    item = keep.prepare(image)
    (prediction,) = keep.predict([item])
    assert keep.segments(prediction).tolist() == [[20, 44, 60, 44]]
    guide = keep.finish(item, prediction)
    assert guide.shape == (45, 70) and guide[44, 20:61].all() and guide.sum() == 41 * 255
    for tiny in ((1, 1), (2, 3), (7, 5)):
        assert known_annotator(KnownMaps({}), resolution=0).annotate(make_photo(26, *tiny)).shape == tiny


def test_bf16_within_bound_of_fp32(annotator: MlsdAnnotator, reference: Reference, make_photo) -> None:
    """bf16 (3 significant digits) moves centres across the thresholds and endpoints across integers:
    bound on the segments found. Measured with these weights at 256 x 320: 77 segments in fp32, 76 in
    bf16, 94% of the fp32 ones found again within 2 px (every endpoint coordinate)."""
    image = make_photo(27, 256, 320)
    fp32 = MlsdAnnotator(MlsdOptions(resolution=256, device="cpu"), model=annotator.model)
    bf16 = get("mlsd").load(models_dir=str(reference.models_dir), device="cpu", precision="bf16", resolution=256)
    _, exact = ours_with_segments(fp32, image)
    guide, approximate = ours_with_segments(bf16, image)
    assert guide.shape == (256, 320) and len(exact) >= 20
    assert abs(len(approximate) - len(exact)) <= 0.15 * len(exact)
    close = [np.abs(approximate - segment).max(axis=1).min() <= 2 for segment in exact] if len(approximate) else [False]
    assert np.mean(close) >= 0.8, f"only {np.mean(close):.2f} of the fp32 segments found again in bf16"


# ------------------------------------------------------------------------------------ errors, CLI, API


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": -1}, UsageError, "resolution must be 0 or more"),
        ({"score_threshold": 1.5}, UsageError, "score_threshold"),
        ({"score_threshold": -0.1}, UsageError, "score_threshold"),
        ({"distance_threshold": -1.0}, UsageError, "distance_threshold"),
        ({"precision": "fp16", "device": "cpu"}, DeviceError, "use --precision bf16 or fp32"),
        ({"thickness": 3}, UsageError, "unknown option(s) thickness"),
    ],
)
def test_bad_options_are_refused(reference: Reference, options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        get("mlsd").load(models_dir=str(reference.models_dir), **options)
    assert message in str(raised.value)


def test_bad_image_is_an_input_error(annotator: MlsdAnnotator) -> None:
    with pytest.raises(InputError, match="RGB uint8"):
        annotator.forward(np.zeros((1, 16, 16, 3), np.float32))


def test_missing_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as raised:
        get("mlsd").load(models_dir=str(tmp_path), device="cpu")
    assert CHECKPOINT in str(raised.value)


def test_cli_and_python_api(reference: Reference, tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(28, 150, 200)
    Image.fromarray(image).save(photo)
    out = tmp_path / "lines.png"
    result = invoke("mlsd", str(photo), "--models-dir", str(reference.models_dir), "--resolution", "256",
                    "--device", "cpu", "--score-threshold", "0.2", "--distance-threshold", "5", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (200, 150)
    direct = get("mlsd").load(models_dir=str(reference.models_dir), device="cpu", resolution=256,
                              score_threshold=0.2, distance_threshold=5.0)
    assert np.array_equal(np.asarray(written), direct.annotate(image)) and np.asarray(written).any()
    api = guides.load("mlsd", models_dir=str(reference.models_dir), device="cpu", resolution=256,
                      score_threshold=0.2, distance_threshold=5.0).annotate(image)
    assert np.array_equal(api, np.asarray(written))
    unknown = invoke("mlsd", str(photo), "--models-dir", str(reference.models_dir), "--thickness", "3", "-q")
    assert unknown.exit_code == 2 and "--thickness" in unknown.output
    (tmp_path / "empty").mkdir()
    missing = invoke("mlsd", str(photo), "--models-dir", str(tmp_path / "empty"), "-q")
    assert missing.exit_code == 2 and CHECKPOINT in missing.output


def test_folder_with_bad_files_fails_those_files_only(reference: Reference, tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (working size 512 x 119488 at --resolution 512: 61 Mpx, refused
    before any resizing) fail with one line each; a 1 x 1 image succeeds (working size 512 x 512, guide
    1 x 1) and the fine image is written (the same working size: one batch of two)."""
    _, strip = run_bad_folder("mlsd", tmp_path, make_photo, "--models-dir", str(reference.models_dir), "--device", "cpu",
                              "--batch-size", "2")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has "
        "61,177,856 pixels, over the mlsd limit of 16,777,216 (use a smaller --resolution or raise --max-working-pixels)"
    ), strip
