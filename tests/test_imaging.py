"""Decoding rules and bad input: every case is one InputError line, never a crash."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from guides.errors import InputError, OutputError, UsageError
from guides.imaging import (
    DEFAULT_MAX_PIXELS,
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    TEMP_MARK,
    commit_temp,
    composite_alpha_on_white,
    decode_image,
    host_tag,
    load_image,
    load_mask,
    remove_stale_temp_files,
    resize_image,
    temp_path,
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
    host = host_tag()
    dead = _dead_pid()
    own_dead = target.parent / f".g.png{TEMP_MARK}{host}-{dead}-abc123"
    own_live = target.parent / f".h.png{TEMP_MARK}{host}-{os.getpid()}-0a1b2c3d"
    other_host = target.parent / f".i.png{TEMP_MARK}other-node-{dead}-0a1b2c3d"  # a shared folder
    legacy = target.parent / f".j.png{TEMP_MARK}{dead}-0a1b2c3d"  # no host: its process cannot be checked
    for path in (own_dead, own_live, other_host, legacy):
        path.write_bytes(b"partial")
    write_atomic(target, b"done")
    assert target.read_bytes() == b"done"
    assert remove_stale_temp_files(target.parent) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([own_live.name, other_host.name, legacy.name, "g.png"])
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OutputError, match="cannot write"):
        write_atomic(blocker / "x.png", b"data")


def test_temp_names_carry_the_sanitised_host_and_are_synced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("guides.imaging._hostname", lambda: "node 7/gpu-a.example")
    assert host_tag() == "node_7_gpu-a.example"
    name = temp_path(tmp_path / "x.png").name
    assert name.startswith(f".x.png{TEMP_MARK}node_7_gpu-a.example-{os.getpid()}-")
    # a temp of this (renamed) host whose process is dead is removed; the hyphens in the host do not confuse it
    (tmp_path / f".y.png{TEMP_MARK}node_7_gpu-a.example-{_dead_pid()}-0a1b2c3d").write_bytes(b"")
    assert remove_stale_temp_files(tmp_path) == 1
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr("os.fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr("os.replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_atomic(tmp_path / "x.png", b"data")
    assert events == ["fsync", "replace"] and (tmp_path / "x.png").read_bytes() == b"data"
    temp = temp_path(tmp_path / "y.bin")
    temp.write_bytes(b"shard")
    events.clear()
    commit_temp(temp, tmp_path / "y.bin")
    assert events == ["fsync", "replace"] and (tmp_path / "y.bin").read_bytes() == b"shard" and not temp.exists()


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


# ------------------------------------------------------------------- limits that actually apply (2.1)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG built row by row: 196 Mpx is about 25 kB, never held decoded."""
    row = bytes(1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_pillow_bomb_limit_is_not_the_limit(tmp_path: Path) -> None:
    """14000 x 14000 = 196 Mpx: over Pillow's own error limit (2 x MAX_IMAGE_PIXELS, about 179 Mpx),
    under the 268 Mpx --max-pixels default. Only --max-pixels applies, and its message names it."""
    pillow_error_limit = 2 * Image.MAX_IMAGE_PIXELS
    assert 14000 * 14000 > pillow_error_limit and 14000 * 14000 < DEFAULT_MAX_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(_bilevel_png(14000, 14000))
    with pytest.raises(InputError) as info:  # under Pillow's limit: Pillow would have refused first
        load_image(path, max_pixels=190_000_000)
    assert str(info.value) == (
        f"{path}: image is 14000x14000 = 196,000,000 pixels, over the limit of 190,000,000 "
        "(a possible decompression bomb); raise --max-pixels to allow it"
    )
    from guides.imaging import _open_header

    header = _open_header(path.read_bytes(), path, DEFAULT_MAX_PIXELS)  # the default lets it through
    assert header.size == (14000, 14000) and header.format == "PNG"
    assert Image.MAX_IMAGE_PIXELS == pillow_error_limit // 2  # nothing process-wide was changed


def test_decoding_never_consults_pillows_global_limit(tmp_path: Path, make_photo, monkeypatch) -> None:
    """Every decoding path (OpenCV, Pillow for alpha, GIF and trailing-data JPEGs, masks) with Pillow's
    limit set far below the images: the same pixels as without it."""
    rgb = make_photo(8, 30, 40)
    rgba = np.dstack([rgb, np.full((30, 40), 255, np.uint8)])
    rgba[:, :10, 3] = 0
    files = {
        "rgb.png": _png_bytes(Image.fromarray(rgb)),
        "rgba.png": _png_bytes(Image.fromarray(rgba, "RGBA")),
        "pal.gif": _png_bytes(Image.fromarray(rgb).convert("P"), format="GIF"),
        "trailer.jpg": _png_bytes(Image.fromarray(rgb), format="JPEG") + b"TRAILER",
        "rgb.tif": _png_bytes(Image.fromarray(rgb), format="TIFF"),
    }
    expected = {name: decode_image(data) for name, data in files.items()}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would now refuse anything over 200 px
    for name, data in files.items():
        assert np.array_equal(decode_image(data, name), expected[name]), name
    assert np.array_equal(expected["rgba.png"][:, :10], np.full((30, 10, 3), 255, np.uint8))
    path = tmp_path / "mask.png"
    path.write_bytes(files["rgba.png"])
    assert load_mask(path).shape == (30, 40)
    # Pillow's TIFF decoder checks its own limit again while decoding (TIFFs with transparency are decoded
    # by Pillow): that is then the limit that applied, and the message says so
    with pytest.raises(InputError) as info:
        decode_image(_png_bytes(Image.fromarray(rgba, "RGBA"), format="TIFF"), "alpha.tif")
    assert str(info.value) == ("alpha.tif: image is 40x30 = 1,200 pixels, over Pillow's own limit of 200 for decoding "
                               "this TIFF file (PIL.Image.MAX_IMAGE_PIXELS x 2), which --max-pixels does not change")


def _run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_images_over_opencvs_limits_are_decoded_by_pillow_without_output(tmp_path: Path) -> None:
    """OpenCV refuses images over OPENCV_IO_MAX_IMAGE_PIXELS (read when it starts) and libpng PNGs with
    a side over 1,000,000 (printing libpng lines); our max_pixels allows them: Pillow decodes them."""
    small = tmp_path / "small.png"
    Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)).save(small)
    tall = tmp_path / "tall.png"
    tall.write_bytes(_bilevel_png(1, 1_000_001))
    code = (
        "import sys, numpy as np; from PIL import Image; from guides.imaging import load_image\n"
        f"a = load_image({str(small)!r}); assert np.array_equal(a, np.asarray(Image.open({str(small)!r}))), 'pixels'\n"
        f"b = load_image({str(tall)!r}); assert b.shape == (1_000_001, 1, 3) and not b.any(), b.shape\n"
        "print('ok')\n"
    )
    done = _run_python(code, {"OPENCV_IO_MAX_IMAGE_PIXELS": "100"})
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    assert done.stderr == ""


# ----------------------------------------------------------------------- damaged PNGs print nothing (2.8)


def _guides_script() -> Path:
    script = Path(sys.executable).parent / ("guides.exe" if os.name == "nt" else "guides")
    if not script.exists():
        pytest.fail(f"{script} is missing: install the package (pip install -e .) in {sys.prefix}", pytrace=False)
    return script


def test_damaged_pngs_are_one_failed_line_each_and_libpng_prints_nothing(tmp_path: Path, make_photo) -> None:
    data = _png_bytes(Image.fromarray(make_photo(9, 120, 160)))
    (tmp_path / "good.png").write_bytes(data)
    (tmp_path / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # inside IDAT: libpng said "bad adaptive filter value"
    (tmp_path / "crc.png").write_bytes(bytes(corrupt))
    no_end = data[: data.rindex(b"IEND") - 4]  # cut exactly before the IEND chunk
    (tmp_path / "noend.png").write_bytes(no_end)
    done = subprocess.run([str(_guides_script()), "canny", "-q", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "libpng" not in done.stderr and "Traceback" not in done.stderr
    failed = sorted(line for line in done.stderr.splitlines() if line.startswith("failed: "))
    assert failed == [
        f"failed: {tmp_path / 'crc.png'}: corrupt or truncated image (CRC error in the 'IDAT' chunk)",
        f"failed: {tmp_path / 'noend.png'}: corrupt or truncated image (truncated: no IEND chunk)",
        f"failed: {tmp_path / 'truncated.png'}: corrupt or truncated image (truncated in the 'IDAT' chunk)",
    ]
    assert (tmp_path / "good.canny.png").is_file()


def test_png_chunk_check_allows_trailing_data_and_refuses_bad_ancillary_crcs(make_photo) -> None:
    data = _png_bytes(Image.fromarray(make_photo(10)))
    assert np.array_equal(decode_image(data + b"trailing bytes after IEND"), decode_image(data))
    end = data.rindex(b"IEND") - 4
    bad_text = _chunk(b"tEXt", b"Comment\x00hello")[:-1] + b"\x00"
    with pytest.raises(InputError, match=r"corrupt or truncated image \(CRC error in the 'tEXt' chunk\)"):
        decode_image(data[:end] + bad_text + data[end:])


# ------------------------------------------------------------- the formats read: named = in folders (2.8)


def test_formats_read_are_the_same_named_and_in_folders(tmp_path: Path, make_photo) -> None:
    from guides.engines import walk_images

    rgb = make_photo(11, 24, 32)
    saves = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"lossless": True}, "BMP": {}, "TIFF": {}, "GIF": {}}
    if "AVIF" in Image.SAVE:
        saves["AVIF"] = {"quality": 90}
    for format_name, kwargs in saves.items():
        suffix = IMAGE_FORMATS[format_name][0]
        (tmp_path / f"x_{format_name}{suffix}").write_bytes(_png_bytes(Image.fromarray(rgb), format=format_name, **kwargs))
    (tmp_path / "icon.ico").write_bytes(_png_bytes(Image.fromarray(rgb), format="ICO"))
    (tmp_path / "picture.pcx").write_bytes(_png_bytes(Image.fromarray(rgb), format="PCX"))
    walked = {path.name for path in walk_images(tmp_path)}
    assert walked == {f"x_{name}{IMAGE_FORMATS[name][0]}" for name in saves}
    assert set(IMAGE_SUFFIXES) == {suffix for suffixes in IMAGE_FORMATS.values() for suffix in suffixes}
    for name in walked:
        image = load_image(tmp_path / name)
        assert image.shape == (24, 32, 3), name
        if name.endswith((".png", ".webp", ".bmp", ".tif")):  # lossless: exact
            assert np.array_equal(image, rgb), name
    for name, format_name in [("icon.ico", "ICO"), ("picture.pcx", "PCX")]:  # named: refused, with the format
        with pytest.raises(InputError) as info:
            load_image(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: unsupported image format: {format_name} (read: PNG, JPEG, MPO,")
    renamed = tmp_path / "really_a_png.jpg"  # the content decides, not the suffix
    renamed.write_bytes((tmp_path / "x_PNG.png").read_bytes())
    assert np.array_equal(load_image(renamed), rgb)


def test_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 6), color) for color in ((200, 10, 10), (10, 200, 10))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(path)
    assert image.shape == (6, 8, 3) and (image == (200, 10, 10)).all()


def test_avif_without_pillow_support_is_refused_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    from guides import imaging

    # the ftyp box of an AVIF file; what Pillow's AVIF plugin says when it was built without libavif
    data = struct.pack(">I", 20) + b"ftypavif" + b"\x00" * 8 + b"rest of the file"
    for format_name in imaging._OPENERS:  # import every plugin now, so that none replaces the one patched below
        imaging._opener(format_name)
    factory = Image.OPEN["AVIF"][0] if "AVIF" in Image.OPEN else None
    monkeypatch.setitem(Image.OPEN, "AVIF", (factory, lambda prefix: "image file could not be identified because AVIF support not installed"))
    with pytest.raises(InputError) as info:
        imaging.decode_image(data, "photo.avif")
    assert str(info.value) == "photo.avif: unsupported image format: AVIF (the installed Pillow has no AVIF support)"
    assert ".avif" in IMAGE_SUFFIXES  # still listed in folders, so each is refused rather than skipped


def test_a_png_folder_imports_only_the_png_plugin(tmp_path: Path) -> None:
    """Identification imports Pillow's format plugins on need (start-up): decoding a PNG in a fresh process
    imports PngImagePlugin and none of the later formats' plugins."""
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), np.full((4, 5, 3), 7, np.uint8))
    script = ("import sys, guides.imaging as i; i.load_image(sys.argv[1]); "
              "print(sorted(m for m in sys.modules if m.startswith('PIL.') and m.endswith('ImagePlugin')))")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['PIL.PngImagePlugin']", result.stdout + result.stderr
