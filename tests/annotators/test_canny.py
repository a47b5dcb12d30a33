"""Canny: bit-exact with the reference guide and with cv2.imread + cv2.Canny on any photo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import guides
from guides.annotators.canny import DEFAULT_MAX_WORKING_PIXELS
from guides.errors import InputError
from guides.imaging import DEFAULT_MAX_PIXELS, resize_image


def test_reference_guide_bit_exact(refs: Path) -> None:
    ours = np.asarray(guides.canny(refs / "cutecat_init.png"))
    reference = np.asarray(Image.open(refs / "cutecat_guide_canny.png"))
    assert ours.shape == reference.shape == (512, 512)
    differing = int((ours != reference).sum())
    assert differing == 0, f"{differing} pixels differ from cutecat_guide_canny.png"


@pytest.mark.parametrize(
    "name, mode, save_kwargs",
    [
        ("rgb.png", "RGB", {}),
        ("gray.png", "L", {}),
        ("rgb.jpg", "RGB", {"quality": 85}),
        ("gray.jpg", "L", {"quality": 85}),
        ("rgb.webp", "RGB", {"lossless": True}),
        ("rgb.bmp", "RGB", {}),
        ("rgb.tif", "RGB", {}),
    ],
)
def test_equals_opencv_on_generated_photos(tmp_path: Path, make_photo, name: str, mode: str, save_kwargs: dict) -> None:
    path = tmp_path / name
    Image.fromarray(make_photo(len(name))).convert(mode).save(path, **save_kwargs)
    expected = cv2.Canny(cv2.imread(str(path)), 100, 200)
    ours = np.asarray(guides.canny(path))
    assert expected.any(), "the test image must have edges"
    assert ours.dtype == np.uint8 and ours.shape == expected.shape
    assert set(np.unique(ours)) <= {0, 255}
    assert int((ours != expected).sum()) == 0


def test_exif_orientation_equals_opencv(tmp_path: Path, make_photo) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(make_photo(3, 64, 96)).save(path, exif=exif.tobytes(), quality=90)
    expected = cv2.Canny(cv2.imread(str(path)), 100, 200)
    ours = np.asarray(guides.canny(path))
    assert ours.shape == (96, 64) == expected.shape
    assert np.array_equal(ours, expected)


def test_thresholds_and_array_input_in_rgb_order(make_photo) -> None:
    rgb = make_photo(5)
    ours = np.asarray(guides.canny(rgb, low=50, high=120))
    expected = cv2.Canny(np.ascontiguousarray(rgb[:, :, ::-1]), 50, 120)
    assert np.array_equal(ours, expected)
    assert not np.array_equal(ours, np.asarray(guides.canny(rgb)))


def test_transparent_pixels_are_composited_on_white(tmp_path: Path, make_photo) -> None:
    rgba = np.dstack([make_photo(6), np.full((96, 128), 255, np.uint8)])
    rgba[:, :64, 3] = 0  # left half fully transparent -> white, so no edges there
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    ours = np.asarray(guides.canny(path))
    assert not ours[:, :62].any()
    white_left = rgba[:, :, :3].copy()
    white_left[:, :64] = 255
    assert np.array_equal(ours, cv2.Canny(np.ascontiguousarray(white_left[:, :, ::-1]), 100, 200))


@pytest.mark.parametrize("size, resolution, expected", [((96, 128), 256, (256, 320)), ((600, 800), 512, (512, 704))])
def test_resolution_resizes_like_controlnet(make_photo, size, resolution, expected) -> None:
    rgb = make_photo(7, *size)
    ours = np.asarray(guides.canny(rgb, resolution=resolution))
    assert ours.shape == expected
    resized = resize_image(rgb, resolution)
    interpolation = cv2.INTER_LANCZOS4 if resolution > min(size) else cv2.INTER_AREA
    assert np.array_equal(resized, cv2.resize(rgb, expected[::-1], interpolation=interpolation))
    assert np.array_equal(ours, cv2.Canny(cv2.cvtColor(resized, cv2.COLOR_RGB2BGR), 100, 200))


def test_loaded_annotator_is_reusable(make_photo) -> None:
    annotator = guides.load("canny", low=10, high=20)
    first, second = annotator.annotate_batch([make_photo(1), make_photo(2)])
    assert np.array_equal(first, np.asarray(guides.canny(make_photo(1), low=10, high=20)))
    assert not np.array_equal(first, second)


# ------------------------------------------------------------------------- working-size guard (2.6)


def test_extreme_strip_at_a_resolution_is_one_failed_file(tmp_path: Path, make_photo) -> None:
    """1 x 100000 at --resolution 512 would be 512 x 51200000 (78 GB of BGR): refused before any resize,
    as one failure line, and the batch goes on."""
    strip = tmp_path / "strip.png"
    Image.new("L", (1, 100_000), 128).save(strip)
    good = tmp_path / "good.png"
    Image.fromarray(make_photo(4)).save(good)
    reason = ("1x100000 image: working size 512x51200000 at --resolution 512 has 26,214,400,000 pixels, over the "
              f"canny limit of {DEFAULT_MAX_WORKING_PIXELS:,} (use a smaller --resolution or raise --max-working-pixels)")
    with pytest.raises(InputError) as info:
        guides.canny(strip, resolution=512)
    assert str(info.value) == reason
    script = Path(sys.executable).parent / "guides"
    done = subprocess.run([str(script), "canny", "-q", "--resolution", "512", str(strip), str(good)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("failed")] == [f"failed: {strip}: {reason}"]
    assert "OpenCV" not in done.stderr and "Traceback" not in done.stderr
    assert Image.open(tmp_path / "good.canny.png").size == (704, 512)


def test_max_working_pixels_option(tmp_path: Path, make_photo) -> None:
    rgb = make_photo(5)  # 128 x 96: 12288 pixels at its own size, 256 x 320 = 81920 at 256
    assert DEFAULT_MAX_WORKING_PIXELS == DEFAULT_MAX_PIXELS
    assert np.array_equal(np.asarray(guides.canny(rgb, max_working_pixels=12288)), np.asarray(guides.canny(rgb)))
    with pytest.raises(InputError, match=r"128x96 image: working size 128x96 at its own size has 12,288 pixels, over the canny limit of 12,287"):
        guides.canny(rgb, max_working_pixels=12287)
    with pytest.raises(InputError, match=r"working size 320x256 at --resolution 256 has 81,920 pixels"):
        guides.canny(rgb, resolution=256, max_working_pixels=81919)
    photo = tmp_path / "p.png"
    Image.fromarray(rgb).save(photo)
    script = str(Path(sys.executable).parent / "guides")
    for command in (["canny"], ["run", "canny", "-o", str(tmp_path / "out")]):
        done = subprocess.run([script, *command, "-q", "--max-working-pixels", "1000", str(photo)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1 and "over the canny limit of 1,000" in done.stderr, (command, done.stderr)


def test_importing_canny_imports_no_torch() -> None:
    code = "import sys, guides.annotators.canny, guides; guides.canny(__import__('numpy').zeros((8, 8, 3), 'uint8')); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "False\n", done.stderr
