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


def test_missing_and_corrupt_files_are_one_line_errors(tmp_path: Path, guides_cli) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    missing = guides_cli("compare", tmp_path / "a.png", tmp_path / "nope.png")
    assert missing.exit_code == 1 and "nope.png: no such file" in missing.stderr, missing.output
    corrupt = guides_cli("compare", tmp_path / "a.png", tmp_path / "bad.png")
    assert corrupt.exit_code == 1 and "bad.png" in corrupt.stderr and "Traceback" not in corrupt.output


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
