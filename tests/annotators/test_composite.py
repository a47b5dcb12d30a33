"""The inpainting composite: bit-exact with the reference target; thresholds, colours, sizes."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import guides
from guides.errors import UsageError
from guides.imaging import composite_alpha_on_white, load_mask, mask_to_gray


def test_reference_target_bit_exact(refs: Path) -> None:
    ours = np.asarray(guides.composite(refs / "kitchen_dog.png", refs / "inpainting-mask.png"))
    reference = np.asarray(Image.open(refs / "inpainting-target.png").convert("RGB"))
    assert ours.shape == reference.shape == (512, 512, 3)
    differing = int((ours != reference).any(axis=2).sum())
    assert differing == 0, f"{differing} pixels differ from inpainting-target.png"


def _image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) + 1
    mask = np.array([[0, 127, 128, 255, 0]] * 4, dtype=np.uint8)
    return image, mask


def test_threshold_at_128_and_background_colour() -> None:
    image, mask = _image_and_mask()
    out = np.asarray(guides.composite(image, mask, background="#102030"))
    assert np.array_equal(out[:, [0, 1, 4]], image[:, [0, 1, 4]])  # < 128 keeps
    assert (out[:, [2, 3]] == [16, 32, 48]).all()  # >= 128 repaints


def test_invert_mask() -> None:
    image, mask = _image_and_mask()
    out = np.asarray(guides.composite(image, mask, invert_mask=True))
    assert (out[:, [0, 1, 4]] == 255).all()
    assert np.array_equal(out[:, [2, 3]], image[:, [2, 3]])


def test_mask_of_another_size_is_an_error_unless_resized() -> None:
    image, _ = _image_and_mask()
    small = np.zeros((2, 2), np.uint8)
    small[:, 1] = 255
    with pytest.raises(UsageError, match=r"mask is 2x2 but the image is 5x4; pass --resize-mask"):
        guides.composite(image, small)
    out = np.asarray(guides.composite(image, small, resize_mask=True))
    assert np.array_equal(out[:, :2], image[:, :2]) and (out[:, 3:] == 255).all()


def test_unknown_colour_is_a_usage_error() -> None:
    image, mask = _image_and_mask()
    with pytest.raises(UsageError, match="unknown colour 'notacolour'"):
        guides.composite(image, mask, background="notacolour")


# ------------------------------------------------------------------------ transparency in masks (2.7)


def _strokes(color: tuple[int, int, int]) -> np.ndarray:
    """A one-colour RGBA mask: opaque (and one anti-aliased column) over transparent pixels stored as 0."""
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[:, 3:, :3] = color
    rgba[:, 3:, 3] = 255
    rgba[:, 2, :3] = color
    rgba[:, 2, 3] = 128  # half-transparent edge: >= 128 repaints
    rgba[:, 1, :3] = color
    rgba[:, 1, 3] = 127
    return rgba


@pytest.mark.parametrize("color", [(255, 255, 255), (0, 0, 0), (255, 0, 0)])
def test_one_colour_mask_with_transparency_uses_its_alpha(tmp_path: Path, color, caplog) -> None:
    image, _ = _image_and_mask()
    path = tmp_path / "strokes.png"
    Image.fromarray(_strokes(color), "RGBA").save(path)
    assert np.array_equal(load_mask(path)[0], [0, 127, 128, 255, 255])
    for mask in (path, Image.open(path), _strokes(color)):
        out = np.asarray(guides.composite(image, mask))
        assert np.array_equal(out[:, :2], image[:, :2]) and (out[:, 2:] == 255).all()  # opaque repaints
    inverted = np.asarray(guides.composite(image, path, invert_mask=True))
    assert (inverted[:, :2] == 255).all() and np.array_equal(inverted[:, 2:], image[:, 2:])
    assert not caplog.records


def test_mask_with_varying_colour_uses_its_grey_level_on_white() -> None:
    """An erased (transparent) area of a picture is white, i.e. repainted; opaque colours keep their grey."""
    image, _ = _image_and_mask()
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[:, :, 3] = 255
    rgba[:, 0] = (10, 20, 30, 255)  # dark: keep
    rgba[:, 1] = (250, 250, 250, 255)  # light: repaint
    rgba[:, 2] = (40, 40, 40, 0)  # erased: white, repaint
    rgba[:, 3:] = (60, 10, 10, 255)
    assert np.array_equal(mask_to_gray(rgba)[0], cv2.cvtColor(composite_alpha_on_white(rgba), cv2.COLOR_RGB2GRAY)[0])
    out = np.asarray(guides.composite(image, rgba))
    assert np.array_equal(out[:, [0, 3, 4]], image[:, [0, 3, 4]]) and (out[:, [1, 2]] == 255).all()
    opaque = rgba.copy()
    opaque[:, 2, 3] = 255  # all opaque: the grey level, exactly as the RGB mask
    assert np.array_equal(mask_to_gray(opaque), cv2.cvtColor(np.ascontiguousarray(opaque[:, :, :3]), cv2.COLOR_RGB2GRAY))


def test_mask_repainting_everything_or_nothing_warns_naming_it(tmp_path: Path, caplog) -> None:
    image, _ = _image_and_mask()
    with caplog.at_level(logging.WARNING, logger="guides.annotators.composite"):
        guides.composite(image, np.full((4, 5), 255, np.uint8))
        path = tmp_path / "clear.png"
        Image.new("RGBA", (5, 4), (255, 255, 255, 0)).save(path)  # fully transparent: repaints nothing
        assert np.array_equal(np.asarray(guides.composite(image, path)), image)
    assert [record.getMessage().split(";")[0] for record in caplog.records] == [
        "mask: the mask repaints the whole image (no pixel is kept)",
        f"{path}: the mask repaints nothing (the result is the image itself)",
    ]


def test_cli_composite_reads_alpha_and_warns_in_one_line(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.png"
    Image.fromarray(make_photo(3, 4, 5)).save(photo)
    strokes = tmp_path / "strokes.png"
    Image.fromarray(_strokes((255, 255, 255)), "RGBA").save(strokes)
    out = tmp_path / "target.png"
    done = subprocess.run([str(Path(sys.executable).parent / "guides"), "composite", str(photo), str(strokes), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == f"{out}\n", done.stderr
    result = np.asarray(Image.open(out))
    assert np.array_equal(result[:, :2], make_photo(3, 4, 5)[:, :2]) and (result[:, 2:] == 255).all()
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (5, 4), (0, 0, 0, 255)).save(opaque)  # black everywhere: keeps everything
    done = subprocess.run([str(Path(sys.executable).parent / "guides"), "composite", str(photo), str(opaque), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and f"{opaque}: the mask repaints nothing" in warnings[0], done.stderr
