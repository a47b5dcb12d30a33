"""lineart-standard: bit-exact with controlnet_aux's ``LineartStandardDetector`` (its first channel), options,
working-size guard, bad inputs, CLI and API."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import guides
from guides.annotators.lineart_standard import DEFAULT_MAX_WORKING_PIXELS, LineartStandardAnnotator, intensity_map
from guides.errors import InputError, UsageError
from guides.registry import get
from tests.annotators.bad_folder_runs import FINE_PHOTO, run_bad_folder
from tests.cli_testing import invoke


def reference(image: np.ndarray, **kwargs: object) -> np.ndarray:
    """controlnet_aux's guide (H, W) of an RGB uint8 array (its three channels are equal)."""
    from controlnet_aux.lineart_standard import LineartStandardDetector

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the median of no pixel (flat images)
        out = LineartStandardDetector()(image, output_type="np", **kwargs)
    assert out.ndim == 3 and (out[..., 0] == out[..., 2]).all()
    return out[..., 0]


def assert_structured(guide: np.ndarray) -> None:
    levels = len(np.unique(guide))
    assert levels >= 50, f"reference guide too uniform for a meaningful comparison: {levels} grey levels"


@pytest.mark.parametrize("name", ["cutecat_init.png", "kitchen_dog.png"])
def test_bit_exact_on_the_reference_photos(refs: Path, name: str) -> None:
    image = guides.to_rgb_array(refs / name)
    expected = reference(image)
    assert_structured(expected)
    ours = get("lineart-standard").load().annotate(image)
    assert ours.dtype == np.uint8 and ours.shape == image.shape[:2]
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} pixels differ"


@pytest.mark.parametrize("height, width, resolution", [(600, 750, 512), (300, 200, 512), (130, 170, 256)],
                         ids=["nonsquare-shrunk", "portrait-enlarged", "small-at-256"])
def test_bit_exact_on_nonsquare_photos(make_photo, height: int, width: int, resolution: int) -> None:
    """Shrunk (INTER_AREA) and enlarged (LANCZOS4) working images, and the cubic resize back to the input size."""
    image = make_photo(41, height, width)
    expected = reference(image, detect_resolution=resolution)
    assert_structured(expected)
    ours = guides.load("lineart-standard", resolution=resolution).annotate(image)
    assert ours.shape == (height, width)
    assert np.array_equal(ours, expected), f"{int((ours != expected).sum())} pixels differ"


def test_resolution_zero_is_the_reference_at_the_input_size(make_photo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference has no "keep the size" (resolution 0 fails in its resize): with its resize made the
    identity, it computes at the input size, as ours does at ``--resolution 0``."""
    import controlnet_aux.lineart_standard as module

    image = make_photo(42, 190, 237)
    monkeypatch.setattr(module, "resize_image", lambda picture, resolution: picture)
    expected = reference(image)
    assert_structured(expected)
    ours = guides.load("lineart-standard", resolution=0).annotate(image)
    assert np.array_equal(ours, expected)
    # A 512 x 512 image at 512 is its own working image: the same guide as at resolution 0.
    square = make_photo(43, 512, 512)
    assert np.array_equal(guides.load("lineart-standard", resolution=0).annotate(square),
                          guides.load("lineart-standard").annotate(square))


@pytest.mark.parametrize("sigma, threshold", [(2.0, 3), (10.0, 20), (6.0, 0)])
def test_options_match_the_reference(refs: Path, sigma: float, threshold: int) -> None:
    image = guides.to_rgb_array(refs / "cutecat_init.png")
    expected = reference(image, guassian_sigma=sigma, intensity_threshold=threshold)
    ours = guides.load("lineart-standard", sigma=sigma, intensity_threshold=threshold).annotate(image)
    assert np.array_equal(ours, expected)
    assert not np.array_equal(ours, guides.load("lineart-standard").annotate(image)), "the options change the guide"


def test_flat_and_faint_images(make_photo) -> None:
    """No pixel above the threshold: the reference's median is NaN and its normaliser 16 (ours too)."""
    flat = np.full((100, 120, 3), 90, np.uint8)
    assert np.array_equal(guides.load("lineart-standard").annotate(flat), reference(flat))
    assert not guides.load("lineart-standard").annotate(flat).any()
    faint = (make_photo(44, 128, 128).astype(np.int16) // 40 + 100).astype(np.uint8)
    assert np.array_equal(guides.load("lineart-standard").annotate(faint), reference(faint))


def test_intensity_map_is_white_lines_on_black() -> None:
    drawing = np.full((128, 128, 3), 255, np.uint8)
    drawing[60:63, 10:120] = 0  # a dark line on white paper
    lines = intensity_map(drawing, 6.0, 8)
    assert lines[61, 20:110].min() > 100 and lines[:40].max() == 0


def test_declarations() -> None:
    assert LineartStandardAnnotator.name == "lineart-standard"
    assert LineartStandardAnnotator.checkpoints == () and LineartStandardAnnotator.controlnets == ()
    assert LineartStandardAnnotator.Options().resolution == 512


@pytest.mark.parametrize(
    "options, message",
    [({"sigma": 0}, "sigma"), ({"resolution": -1}, "resolution must be 0 or more"),
     ({"thickness": 3}, "unknown option(s) thickness")],
)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(UsageError) as raised:
        guides.load("lineart-standard", **options)
    assert message in str(raised.value)


def test_oversized_working_size_is_refused_before_resizing() -> None:
    with pytest.raises(InputError) as raised:
        guides.load("lineart-standard").annotate(np.zeros((3, 700, 3), np.uint8))
    assert str(raised.value) == (
        "700x3 image: working size 119488x512 at --resolution 512 has 61,177,856 pixels, over the lineart-standard "
        f"limit of {DEFAULT_MAX_WORKING_PIXELS:,} (use a smaller --resolution or raise --max-working-pixels)"
    )


def test_folder_with_bad_files(tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip fail with one line each; the 1 x 1 image (working size 512 x 512) and
    the fine photo are written; exit code 1."""
    out, strip = run_bad_folder("lineart-standard", tmp_path, make_photo)
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has 61,177,856 "
        f"pixels, over the lineart-standard limit of {DEFAULT_MAX_WORKING_PIXELS:,} (use a smaller --resolution or "
        "raise --max-working-pixels)"
    )
    assert np.array_equal(np.asarray(Image.open(out / "fine.png")), reference(make_photo(*FINE_PHOTO)))


def test_cli_equals_python_api(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    image = make_photo(48, 90, 70)
    Image.fromarray(image).save(photo)
    out = tmp_path / "lines.png"
    result = invoke("lineart-standard", str(photo), "--sigma", "3.5", "--intensity-threshold", "5",
                    "--resolution", "256", "-o", str(out), "-q")
    assert result.exit_code == 0, result.output
    written = Image.open(out)
    assert written.mode == "L" and written.size == (70, 90)
    api = guides.load("lineart-standard", sigma=3.5, intensity_threshold=5, resolution=256).annotate(image)
    assert np.array_equal(np.asarray(written), api)
    assert np.array_equal(api, reference(image, guassian_sigma=3.5, intensity_threshold=5, detect_resolution=256))
    unknown = invoke("lineart-standard", str(photo), "--thickness", "3", "-o", str(out), "-q")
    assert unknown.exit_code == 2
