"""Decoding rules and bad input: every case is one InputError line, never a crash."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from guides.errors import InputError, OutputError, UsageError
from guides.imaging import (
    composite_alpha_on_white,
    decode_image,
    load_image,
    remove_stale_temp_files,
    resize_image,
    to_rgb_array,
    write_atomic,
)


def _png_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def test_opaque_images_equal_cv2_imread(tmp_path: Path, make_photo) -> None:
    for name, mode in [("x.png", "RGB"), ("g.png", "L"), ("x.jpg", "RGB"), ("p.png", "P")]:
        path = tmp_path / name
        Image.fromarray(make_photo(1)).convert(mode).save(path)
        assert np.array_equal(load_image(path), cv2.imread(str(path))[:, :, ::-1]), name


def test_sixteen_bit_png_matches_opencv(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for shape in [(20, 30), (20, 30, 3)]:
        data = rng.integers(0, 65536, shape, dtype=np.uint16)
        path = tmp_path / f"d{len(shape)}.png"
        cv2.imwrite(str(path), data)
        assert np.array_equal(load_image(path), cv2.imread(str(path))[:, :, ::-1])


def test_alpha_is_composited_on_white_like_controlnet_hwc3() -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    expected = (rgba[:, :, :3].astype(np.float32) * (rgba[:, :, 3:] / np.float32(255.0))
                + 255.0 * (1.0 - rgba[:, :, 3:].astype(np.float32) / 255.0)).clip(0, 255).astype(np.uint8)
    assert np.array_equal(composite_alpha_on_white(rgba), expected)
    decoded = decode_image(_png_bytes(Image.fromarray(rgba, "RGBA")))
    assert np.array_equal(decoded, expected)
    la = decode_image(_png_bytes(Image.fromarray(rgba[:, :, [0, 3]], "LA")))
    assert la.shape == (8, 9, 3) and np.array_equal(la[:, :, 0], la[:, :, 2])


def test_palette_with_transparency_and_cmyk() -> None:
    palette = Image.new("P", (4, 3), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((0, 0), 0)
    decoded = decode_image(_png_bytes(palette, transparency=0))
    assert tuple(decoded[0, 0]) == (255, 255, 255) and tuple(decoded[1, 1]) == (10, 20, 30)
    cmyk = Image.new("CMYK", (5, 4), (0, 255, 255, 0))  # pure red
    decoded = decode_image(_png_bytes(cmyk, format="JPEG", quality=100))
    assert decoded.shape == (4, 5, 3) and decoded[..., 0].min() > 200 and decoded[..., 1:].max() < 60


def test_api_arrays_are_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(to_rgb_array(gray)[:, :, 1], gray)
    assert to_rgb_array(np.zeros((3, 4), np.uint16) + 512)[0, 0, 0] == 2
    assert to_rgb_array(Image.new("RGB", (4, 3), (1, 2, 3)))[0, 0].tolist() == [1, 2, 3]
    with pytest.raises(Exception, match="uint8, uint16 or bool"):
        to_rgb_array(np.zeros((3, 4), np.float32))
    with pytest.raises(UsageError, match=r"the image has no pixels \(0x5\)"):
        to_rgb_array(np.zeros((5, 0, 3), np.uint8))
    with pytest.raises(UsageError, match=r"the image has no pixels \(0x0\)"):
        to_rgb_array(Image.new("RGB", (0, 0)))
    with pytest.raises(UsageError, match="the image has 12 pixels, over the limit of 11"):
        to_rgb_array(gray, max_pixels=11)


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file (0 bytes)"),
        (b"this is not an image at all", "not an image, or an unsupported image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    ],
)
def test_bad_bytes_are_input_errors(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ") and reason in str(info.value)


@pytest.mark.parametrize("suffix, fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP")])
def test_truncated_files_are_refused(tmp_path: Path, make_photo, suffix: str, fmt: str) -> None:
    data = _png_bytes(Image.fromarray(make_photo(2, 200, 200)), format=fmt)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"corrupt or truncated|not an image"):
        load_image(path)


def test_corrupt_pixel_data_is_refused(tmp_path: Path, make_photo) -> None:
    data = bytearray(_png_bytes(Image.fromarray(make_photo(4, 120, 120))))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zero a stretch of the compressed IDAT stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"corrupt"):
        load_image(path)


def test_jpeg_with_trailing_data_still_loads(tmp_path: Path, make_photo) -> None:
    data = _png_bytes(Image.fromarray(make_photo(2)), format="JPEG")
    path = tmp_path / "trailer.jpg"
    path.write_bytes(data + b"MOTION-PHOTO-TRAILER" * 10)
    assert load_image(path).shape == (96, 128, 3)


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(InputError, match=r"3000x2000 = 6,000,000 pixels, over the limit of 1,000,000"):
        load_image(path, max_pixels=1_000_000)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 50 kB on disk, 400 Mpx decoded
    with pytest.raises(InputError, match="too large|over the limit"):
        load_image(bomb)


def test_missing_folder_and_unreadable(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path / "dir.png")
    locked = tmp_path / "locked.png"
    locked.write_bytes(b"x")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", deny)  # root can read any file; simulate the error
    with pytest.raises(InputError, match="cannot read: permission denied"):
        load_image(locked)


def test_resize_image_rounds_to_64() -> None:
    image = np.zeros((300, 500, 3), np.uint8)
    assert resize_image(image, 512).shape == (512, 832, 3)
    assert resize_image(image, 256).shape == (256, 448, 3)
    assert resize_image(image, 0) is image


def test_write_atomic_replaces_and_stale_temp_files_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "out" / "g.png"
    target.parent.mkdir()
    dead = _dead_pid()
    leftover = target.parent / f".g.png.guides-tmp-{dead}-abc123"
    leftover.write_bytes(b"partial")
    live = target.parent / f".h.png.guides-tmp-{os.getpid()}-xyz"
    live.write_bytes(b"being written by a live process")
    write_atomic(target, b"done")
    assert target.read_bytes() == b"done"
    assert remove_stale_temp_files(target.parent) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [live.name, "g.png"]
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(blocker / "x.png", b"data")


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_to_pil_modes() -> None:
    from guides.imaging import to_pil

    sixteen = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
    assert to_pil(sixteen).mode == "I;16" and np.array_equal(np.asarray(to_pil(sixteen)), sixteen)
    assert to_pil(np.zeros((3, 4), np.uint8)).mode == "L"
    assert to_pil(np.zeros((3, 4, 4), np.uint8)).mode == "RGBA"
