"""``guides compare`` and ``guides.diffusion.compare``: the numbers of piq on the same files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import piq
import pytest
import torch
from guides.diffusion.compare import compare_arrays, compare_files, difference_image
from guides.errors import UsageError
from PIL import Image


def _piq_on_files(first: Path, second: Path) -> tuple[float, float]:
    """The reference suite's computation, written out independently: PIL RGB -> [0, 1] NCHW -> piq."""
    x, y = (
        torch.tensor(np.array(Image.open(path).convert("RGB")).astype(np.float32)).permute(2, 0, 1).unsqueeze(0) / 255.0
        for path in (first, second)
    )
    return float(piq.psnr(x, y)), float(piq.ssim(x, y))


@pytest.fixture
def image_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    base = cv2.GaussianBlur(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8), (0, 0), 3)
    noisy = (base.astype(np.int16) + rng.integers(-12, 13, base.shape)).clip(0, 255).astype(np.uint8)
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(base).save(first)
    Image.fromarray(noisy).save(second)
    return first, second


def test_cli_json_equals_piq_on_the_same_files(image_pair, guides_cli) -> None:
    first, second = image_pair
    result = guides_cli("compare", first, second, "--json")
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)
    psnr, ssim = _piq_on_files(first, second)
    assert abs(ours["psnr"] - psnr) < 0.01, (ours, psnr)
    assert abs(ours["ssim"] - ssim) < 1e-4, (ours, ssim)
    assert 20 < ours["psnr"] < 40 and 0.3 < ours["ssim"] < 1.0, ours  # a real, partial difference
    assert ours["differing_pixels"] > 0 and 0 < ours["max_abs_difference"] <= 12


def test_cli_text_output_and_thresholds(image_pair, guides_cli) -> None:
    first, second = image_pair
    psnr, ssim = _piq_on_files(first, second)
    result = guides_cli("compare", first, second)
    assert result.exit_code == 0
    assert f"PSNR {psnr:.4f} dB" in result.stdout and f"SSIM {ssim:.6f}" in result.stdout, result.stdout
    assert guides_cli("compare", first, second, "--min-psnr", psnr - 1, "--min-ssim", ssim - 0.01).exit_code == 0
    assert guides_cli("compare", first, second, "--min-psnr", psnr + 1).exit_code == 1
    assert guides_cli("compare", first, second, "--min-ssim", min(ssim + 0.01, 1.0)).exit_code == 1


def test_identical_files_give_piq_maximum(image_pair) -> None:
    first, _ = image_pair
    metrics = compare_files(first, first)
    assert metrics.psnr == pytest.approx(80.0)  # piq: -10 log10(0 + 1e-8)
    assert metrics.ssim == pytest.approx(1.0, abs=1e-6)
    assert metrics.differing_pixels == 0 and metrics.max_abs_difference == 0
    assert metrics.passes()


def test_reference_images_equal_piq(refs: Path) -> None:
    first, second = refs / "expected_controlnet_canny.png", refs / "expected_controlnet_depth.png"
    metrics = compare_files(first, second)
    psnr, ssim = _piq_on_files(first, second)
    assert abs(metrics.psnr - psnr) < 0.01 and abs(metrics.ssim - ssim) < 1e-4, (metrics, psnr, ssim)


def test_size_mismatch_is_a_usage_error(tmp_path: Path, guides_cli) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    Image.new("RGB", (64, 32)).save(tmp_path / "b.png")
    with pytest.raises(UsageError, match="64x64 but .* is 64x32"):
        compare_files(tmp_path / "a.png", tmp_path / "b.png")
    result = guides_cli("compare", tmp_path / "a.png", tmp_path / "b.png")
    assert result.exit_code == 2 and "same size" in result.stderr, result.output


def test_missing_and_unreadable_files_exit_2_with_one_line(tmp_path: Path, guides_cli) -> None:
    """A file given to compare that is missing, unreadable or not an image: one line naming it, exit 2
    (exit 1 means "below the threshold", so a broken file must not look like a bad score)."""
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    reasons = {
        tmp_path / "nope.png": "no such file",
        tmp_path / "bad.png": "corrupt or truncated image",
        tmp_path / "a.png" / "under-a-file.png": "cannot read",  # an OS error on open (works as root too)
    }
    for path, reason in reasons.items():
        for args in ((tmp_path / "a.png", path), (path, tmp_path / "a.png")):
            result = guides_cli("compare", *args, "--min-psnr", "10")
            assert result.exit_code == 2, (path, result.output)
            [line] = result.stderr.splitlines()
            assert line.startswith(f"error: {path}: {reason}"), line
            assert result.stdout == "", result.output


def test_below_threshold_exits_1_and_help_documents_the_exit_codes(image_pair, guides_cli) -> None:
    first, second = image_pair
    psnr, ssim = _piq_on_files(first, second)
    below = guides_cli("compare", first, second, "--json", "--min-psnr", psnr + 0.5, "--min-ssim", ssim - 0.1)
    assert below.exit_code == 1 and json.loads(below.stdout)["psnr"] == pytest.approx(psnr, abs=0.01), below.output
    assert below.stderr == ""
    words = " ".join(guides_cli("compare", "--help").stdout.split())
    assert "1 below a threshold, 2 a missing or unreadable file or images of different sizes" in words, words
    assert "never resized" in words


def test_difference_image_and_grayscale_inputs(tmp_path: Path) -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    b = a.copy()
    b[3, 4] = (10, 0, 200)
    diff = difference_image(a, b)
    assert diff[3, 4].tolist() == [40, 0, 255] and int(diff.sum()) == 295
    # An L guide and the same values stored as RGB compare as identical.
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray, "L").save(tmp_path / "l.png")
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "rgb.png")
    assert compare_files(tmp_path / "l.png", tmp_path / "rgb.png").differing_pixels == 0
    with pytest.raises(UsageError):
        compare_arrays(a, b[:8])
