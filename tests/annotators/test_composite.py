"""The inpainting composite: bit-exact with the reference target; thresholds, colours, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import guides
from guides.errors import UsageError


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
