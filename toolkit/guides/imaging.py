"""The one place that reads, converts, resizes and writes images.

Reading follows OpenCV so that guides equal what ``cv2.imread`` + an OpenCV annotator give:
opaque images are decoded by ``cv2.imdecode(IMREAD_COLOR)`` (EXIF orientation applied, 16-bit
scaled by >> 8, grayscale and CMYK expanded, exactly as ``cv2.imread``). Images with transparency are
composited on white the way ControlNet's ``HWC3`` does. Everything returned is RGB ``uint8`` (H, W, 3).

The formats read are ``IMAGE_FORMATS`` (the same set whether a file is named or found in a folder).
The only pixel limit is ``max_pixels`` (``--max-pixels``): files are identified with Pillow's own
format plugins but without ``Image.open``'s decompression-bomb check, whose limit is the process-wide
``PIL.Image.MAX_IMAGE_PIXELS`` (about 179 Mpx) and which ``--max-pixels`` could not raise (nothing
process-wide is changed). Images OpenCV would refuse (over its ``OPENCV_IO_MAX_IMAGE_*`` limits, or
PNGs with a side over libpng's 1,000,000) are decoded by Pillow. One case remains where Pillow's limit
applies: its TIFF decoder checks it again, so a TIFF with transparency (decoded by Pillow) over
``2 * MAX_IMAGE_PIXELS`` is refused with a message naming that limit.

Damaged files never reach OpenCV, whose C decoders print raw ``libpng error:``-style lines: a PNG
whose chunks are cut short, fail their CRC or lack IEND is refused (one pass of ``zlib.crc32``, about
2% of the decoding time of a 512 x 512 photo); JPEG, BMP, TIFF and AVIF files cut short go to Pillow,
which decodes or refuses them.

Bad files raise ``InputError`` with a one-line reason; nothing here prints or logs tracebacks.
"""

from __future__ import annotations

import functools
import importlib
import io
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import InputError, OutputError, UsageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

#: The image formats read (Pillow's names) and, for each, the suffixes walked in folders (lower case).
#: A file named explicitly is read when its content is one of these formats, whatever its suffix;
#: anything else is refused as ``unsupported image format``. GIF and MPO give their first frame. AVIF
#: is read only when ``avif_supported()``; otherwise .avif files are still listed and each is refused
#: with that reason, so a folder's AVIF photos are never skipped silently.
IMAGE_FORMATS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jfif"),
    "MPO": (".mpo",),
    "WEBP": (".webp",),
    "BMP": (".bmp",),
    "TIFF": (".tif", ".tiff"),
    "GIF": (".gif",),
    "AVIF": (".avif",),
})

#: Suffixes walked in folders (lower case): those of ``IMAGE_FORMATS``.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(suffix for suffixes in IMAGE_FORMATS.values() for suffix in suffixes)

#: Default pixel limit: 16384 x 16384. Larger files are refused as probable decompression bombs.
DEFAULT_MAX_PIXELS = 16384 * 16384

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}

#: Pillow plugins tried, in order, to identify a file (MPO files are opened by the JPEG plugin).
_OPENERS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "AVIF")

#: OpenCV's own decoding limits (environment variables read by OpenCV, with its defaults).
_OPENCV_LIMITS = (("OPENCV_IO_MAX_IMAGE_WIDTH", 1 << 20), ("OPENCV_IO_MAX_IMAGE_HEIGHT", 1 << 20),
                  ("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
#: libpng refuses wider or taller images unless the reader raises its user limits (OpenCV does not).
_LIBPNG_MAX_SIDE = 1_000_000


@functools.cache
def avif_supported() -> bool:
    """Whether the installed Pillow decodes AVIF (``PIL.features.check("avif")``), checked once."""
    from PIL import features

    return "avif" in features.modules and bool(features.check("avif"))


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, turning OS errors into one-line ``InputError``s."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except IsADirectoryError:
        raise InputError(path, "is a folder, not an image file") from None
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except PermissionError:
        raise InputError(path, "cannot read: permission denied") from None
    except OSError as error:
        raise InputError(path, f"cannot read: {error.strerror or error}") from None


def decode_image(data: bytes, name: str | os.PathLike = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H, W, 3); see the module docstring for the rules."""
    return _decode(data, name, max_pixels, keep_alpha=False)


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode one image file to RGB uint8 (H, W, 3)."""
    return decode_image(read_bytes(path), path, max_pixels)


def to_rgb_array(image: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Accept a path, a PIL image or a numpy array; return RGB uint8 (H, W, 3).

    Numpy arrays are taken as RGB (H, W, 3), RGBA (H, W, 4) or grayscale (H, W), ``uint8`` or
    ``uint16`` (scaled by >> 8), or ``bool``. PIL images are converted by mode; alpha is composited on
    white. Paths are read with ``load_image`` (EXIF orientation applied).
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, max_pixels)
    if isinstance(image, Image.Image):
        rgb = pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        rgb = array_to_rgb(image)
    else:
        raise UsageError(f"expected a path, a PIL image or a numpy array, got {type(image).__name__}")
    _check_array_size(rgb, max_pixels)
    return rgb


def load_mask(mask: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an inpainting mask as grayscale uint8 (H, W); values >= 128 mean "repaint".

    What transparency means: a mask that has transparent pixels and whose colour is the same
    everywhere it is visible (white or black strokes on a transparent layer, a solid colour faded by
    alpha) is its alpha channel: opaque repaints, transparent keeps. Any other mask is its grey level
    (``cv2.COLOR_RGB2GRAY``), with transparency composited on white as for photos: white repaints,
    black keeps, and an erased (transparent) area of a picture repaints. Accepts what ``to_rgb_array``
    accepts; (H, W, 4) arrays are RGBA.
    """
    if isinstance(mask, (str, os.PathLike)):
        pixels = _decode(read_bytes(mask), mask, max_pixels, keep_alpha=True)
    elif isinstance(mask, Image.Image):
        pixels = _pil_to_rgba(mask) if _pil_has_alpha(mask) else pil_to_rgb(mask)
    elif isinstance(mask, np.ndarray):
        if mask.ndim == 3 and mask.shape[2] == 4:
            pixels = _array_to_uint8(mask)
        else:
            pixels = array_to_rgb(mask)
    else:
        raise UsageError(f"expected a path, a PIL image or a numpy array, got {type(mask).__name__}")
    _check_array_size(pixels, max_pixels)
    return mask_to_gray(pixels)


def mask_to_gray(mask: np.ndarray) -> np.ndarray:
    """Grayscale, RGB or RGBA mask (uint8, uint16 or bool) -> grayscale uint8 (H, W) by the rule of
    ``load_mask``."""
    mask = _array_to_uint8(mask)
    if mask.ndim == 2:
        return mask
    if mask.ndim != 3 or mask.shape[2] not in (3, 4):
        raise UsageError(f"masks must be (H, W), (H, W, 3) or (H, W, 4), got shape {mask.shape}")
    if mask.shape[2] == 4:
        alpha = mask[:, :, 3]
        if not (alpha == 255).all():
            visible = mask[:, :, :3][alpha > 0]
            if visible.size == 0 or (visible == visible[0]).all():
                return np.ascontiguousarray(alpha)
        mask = composite_alpha_on_white(mask)
    return cv2.cvtColor(np.ascontiguousarray(mask), cv2.COLOR_RGB2GRAY)


def _check_array_size(array: np.ndarray, max_pixels: int) -> None:
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise UsageError(f"the image has no pixels ({array.shape[1]}x{array.shape[0]})")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise UsageError(f"the image has {array.shape[0] * array.shape[1]:,} pixels, over the limit of {max_pixels:,}")


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8:
        raise UsageError(f"image arrays must be uint8, uint16 or bool, got {array.dtype}")
    return array


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Normalise a user array (RGB/RGBA/gray, uint8/uint16/bool) to RGB uint8 (H, W, 3)."""
    array = _array_to_uint8(array)
    if array.ndim == 2:
        return np.ascontiguousarray(np.repeat(array[:, :, None], 3, axis=2))
    if array.ndim == 3 and array.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(array, 3, axis=2))
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[2] == 4:
        return composite_alpha_on_white(array)
    raise UsageError(f"image arrays must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to RGB uint8, compositing alpha on white (ControlNet's HWC3)."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return array_to_rgb(np.asarray(image, dtype=np.uint16))
    elif mode in ("I", "F"):
        raise UsageError(f"cannot interpret {mode!r} (32-bit) images as photos; convert them to 8 or 16 bit first")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")  # CMYK, YCbCr, 1, LAB, HSV
    return array_to_rgb(np.asarray(image))


def _pil_has_alpha(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info)


def _pil_to_rgba(image: Image.Image) -> np.ndarray:
    """A PIL image with transparency as straight-alpha RGBA uint8 (H, W, 4)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGBA")))


def composite_alpha_on_white(rgba: np.ndarray) -> np.ndarray:
    """ControlNet's ``HWC3`` for 4 channels: ``color * a + 255 * (1 - a)`` in float32, truncated."""
    color = rgba[:, :, 0:3].astype(np.float32)
    alpha = rgba[:, :, 3:4].astype(np.float32) / 255.0
    blended = color * alpha + 255.0 * (1.0 - alpha)
    return blended.clip(0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """ControlNet's ``resize_image``: short side to ``resolution``, both sides rounded to multiples of 64.

    INTER_AREA when shrinking (or keeping the scale), INTER_LANCZOS4 when enlarging. ``0`` returns the
    image unchanged.
    """
    if resolution <= 0:
        return image
    height, width = image.shape[:2]
    scale = float(resolution) / min(height, width)
    new_height = int(np.round(height * scale / 64.0)) * 64
    new_width = int(np.round(width * scale / 64.0)) * 64
    interpolation = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)


def resize_to(image: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize to ``(width, height)``; a no-op when the size already matches."""
    if image.shape[1] == size[0] and image.shape[0] == size[1]:
        return image
    return cv2.resize(image, size, interpolation=interpolation)


def encode_png(guide: np.ndarray) -> bytes:
    """Encode a guide array as PNG: (H, W) L or 16-bit, (H, W, 3) RGB, (H, W, 4) RGBA."""
    if guide.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"guides must be uint8 or uint16, got {guide.dtype}")
    if guide.ndim == 3 and guide.shape[2] == 3:
        guide = cv2.cvtColor(guide, cv2.COLOR_RGB2BGR)
    elif guide.ndim == 3 and guide.shape[2] == 4:
        guide = cv2.cvtColor(guide, cv2.COLOR_RGBA2BGRA)
    elif guide.ndim != 2:
        raise TypeError(f"guides must be (H, W), (H, W, 3) or (H, W, 4), got shape {guide.shape}")
    ok, buffer = cv2.imencode(".png", guide)
    if not ok:
        raise RuntimeError("OpenCV could not encode the guide as PNG")
    return buffer.tobytes()


def to_pil(guide: np.ndarray) -> Image.Image:
    """Wrap a guide array as a PIL image (L, I;16, RGB or RGBA: Pillow picks the mode from the dtype)."""
    return Image.fromarray(guide)


#: Marks temporary files (``.NAME.guides-tmp-HOST-PID-TOKEN``); folder walks skip any name containing it.
TEMP_MARK = ".guides-tmp-"


def host_tag() -> str:
    """This machine's name as it appears in temporary file names (characters other than letters,
    digits, ``.``, ``_`` and ``-`` replaced by ``_``, at most 64)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", _hostname() or "localhost")[:64] or "localhost"


def _hostname() -> str:
    """``socket.gethostname()``; on POSIX the same name from ``os.uname`` without importing socket (start-up)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def temp_path(target: str | os.PathLike) -> Path:
    """A hidden temporary name beside ``target`` naming this host and process.

    The host is in the name because output folders may be shared between machines (the Ray engine
    needs a shared filesystem): ``remove_stale_temp_files`` only ever removes its own host's files.
    """
    target = Path(target)
    return target.parent / f".{target.name}{TEMP_MARK}{host_tag()}-{os.getpid()}-{os.urandom(4).hex()}"


def commit_temp(temp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Flush ``temp`` to disk (``fsync``) and rename it to ``target``, so that after a crash ``target``
    is either the old file or the complete new one, never an empty or partial file."""
    handle = os.open(temp, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
    os.replace(temp, target)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, ``fsync`` it and rename it into place.

    A run killed mid-write leaves at worst a hidden ``.NAME.guides-tmp-HOST-PID-*`` file, never a
    partial ``NAME``; ``remove_stale_temp_files`` clears those of this host's dead processes when a
    batch starts.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_name = str(temp_path(path))
        handle = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OutputError(path, f"cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException as error:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise OutputError(path, f"cannot write: {error.strerror or error}") from None
        raise


def remove_stale_temp_files(folder: str | os.PathLike) -> int:
    """Delete the temporary files that killed runs of this host left in ``folder``.

    Only names ``temp_path`` makes with this host's ``host_tag`` and the PID of a process that no
    longer exists are removed: another machine's files (a shared folder) and names without a host
    (older versions) are left alone, since their process cannot be checked from here.
    """
    removed = 0
    own_host = host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_MARK not in entry.name:
            continue
        parts = entry.name.split(TEMP_MARK, 1)[1].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != own_host or not parts[1].isdigit() or _process_alive(int(parts[1])):
            continue
        try:
            os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def write_png_atomic(path: str | os.PathLike, guide: np.ndarray) -> None:
    """Encode ``guide`` as PNG and write it atomically to ``path``."""
    write_atomic(path, encode_png(guide))


def _decode(data: bytes, name: str | os.PathLike, max_pixels: int, keep_alpha: bool) -> np.ndarray:
    """RGB uint8 (H, W, 3); with ``keep_alpha`` an image with transparency comes back RGBA (H, W, 4)."""
    if not data:
        raise InputError(name, "empty file (0 bytes)")
    header = _open_header(data, name, max_pixels)
    if header.format == "PNG":
        damage = _png_damage(data)
        if damage:  # refused whichever decoder would read it (Pillow does not check IDAT CRCs)
            raise InputError(name, f"corrupt or truncated image ({damage})")
    has_alpha = _pil_has_alpha(header) if keep_alpha else (
        header.mode in _ALPHA_MODES or (header.mode == "P" and "transparency" in header.info))
    if not has_alpha and header.format != "GIF" and _opencv_decodes(header) and _intact(header, data, name):
        try:
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV 5 raises for some files it cannot read; Pillow decides
            bgr = None
        if bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3:
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decode_with_pillow(header, name, keep_alpha and has_alpha)


def _open_header(data: bytes, name: str | os.PathLike, max_pixels: int) -> ImageFile.ImageFile:
    """Identify the image and check its size against ``max_pixels`` without decoding the pixels."""
    try:
        header = _identify(data, name)
    except InputError:
        raise
    except Image.DecompressionBombError:  # a plugin's own check (GIF frames larger than the screen)
        raise InputError(name, f"image is over Pillow's own limit of {_pillow_limit():,} pixels "
                               "(PIL.Image.MAX_IMAGE_PIXELS x 2), which --max-pixels does not change") from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise InputError(name, f"corrupt or truncated image ({first_line(error)})") from None
    width, height = header.size
    if width <= 0 or height <= 0:
        raise InputError(name, f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise InputError(
            name,
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(a possible decompression bomb); raise --max-pixels to allow it",
        )
    return header


def _identify(data: bytes, name: str | os.PathLike) -> ImageFile.ImageFile:
    """``Image.open``'s identification loop over Pillow's registered format plugins, restricted to
    ``IMAGE_FORMATS`` and without its decompression-bomb check (see the module docstring)."""
    prefix = data[:16]
    claimed = False  # a plugin of ours recognised the signature: never name another format then
    for format_name in _OPENERS:
        registered = _opener(format_name)
        if registered is None:
            continue
        factory, accept = registered
        verdict = accept(prefix) if accept else True
        if isinstance(verdict, str):  # Pillow recognises the format but was built without its codec
            raise InputError(name, f"unsupported image format: {format_name} "
                                   f"(the installed Pillow has no {format_name} support)")
        if not verdict:
            continue
        claimed = True
        try:
            image = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format: as Image.open
            continue
        if image.format not in IMAGE_FORMATS:
            raise InputError(name, _unsupported(image.format))
        return image
    if prefix[4:12] in (b"ftypavif", b"ftypavis") and not avif_supported():  # a Pillow without the AVIF plugin
        raise InputError(name, "unsupported image format: AVIF (the installed Pillow has no AVIF support)")
    raise InputError(name, _unsupported(None if claimed else _other_format(data)))


#: The Pillow plugin module of each format of ``_OPENERS``.
_PLUGIN_MODULES = {"PNG": "PngImagePlugin", "JPEG": "JpegImagePlugin", "WEBP": "WebPImagePlugin",
                   "BMP": "BmpImagePlugin", "TIFF": "TiffImagePlugin", "GIF": "GifImagePlugin",
                   "AVIF": "AvifImagePlugin"}


def _opener(format_name: str) -> tuple | None:
    """Pillow's (factory, accept) of ``format_name``, its plugin imported on first need (importing a plugin
    registers it in ``Image.OPEN``, as ``Image.open`` does): a folder of PNGs imports the PNG plugin only,
    not all seven (about 20 ms of start-up). None when this Pillow has no such plugin (AVIF before 11.2)."""
    registered = Image.OPEN.get(format_name)
    if registered is None:
        try:
            importlib.import_module(f"PIL.{_PLUGIN_MODULES[format_name]}")
        except ImportError:
            return None
        registered = Image.OPEN.get(format_name)
    return registered


def _other_format(data: bytes) -> str | None:
    """The name of a format Pillow knows but ``IMAGE_FORMATS`` does not include, if ``data`` is one."""
    Image.init()  # every Pillow plugin, only to name the format in the message
    prefix = data[:16]
    for format_name in Image.ID:
        if format_name in _OPENERS or format_name not in Image.OPEN:
            continue
        factory, accept = Image.OPEN[format_name]
        try:
            if accept is None or accept(prefix) is not True:  # formats without a signature (TGA...): unnamed
                continue
            return factory(io.BytesIO(data), "").format or format_name
        except Exception:  # noqa: BLE001 - not this format
            continue
    return None


def _unsupported(format_name: str | None) -> str:
    if format_name is None:
        return "not an image, or an unsupported image format"
    readable = [name for name in IMAGE_FORMATS if name != "AVIF" or avif_supported()]
    return f"unsupported image format: {format_name} (read: {', '.join(readable)})"


def _opencv_decodes(header: ImageFile.ImageFile) -> bool:
    """Whether ``cv2.imdecode`` will decode an image of this size: OpenCV refuses (printing a line)
    images over its ``OPENCV_IO_MAX_IMAGE_WIDTH/HEIGHT/PIXELS`` limits, and libpng PNGs with a side
    over 1,000,000 pixels. Pillow decodes those instead (``max_pixels`` is still the limit)."""
    width, height = header.size
    limits = [_environment_size(variable, default) for variable, default in _OPENCV_LIMITS]
    if width > limits[0] or height > limits[1] or width * height > limits[2]:
        return False
    return header.format != "PNG" or max(width, height) <= _LIBPNG_MAX_SIDE


def _environment_size(variable: str, default: int) -> int:
    """A size OpenCV reads from the environment (plain integers; anything else counts as 0, so the
    image goes to Pillow rather than risk OpenCV refusing it)."""
    value = os.environ.get(variable)
    if value is None:
        return default
    return int(value) if value.strip().isdigit() else 0


def _intact(header: ImageFile.ImageFile, data: bytes, name: str | os.PathLike) -> bool:
    """False when the file is visibly cut short, so that OpenCV's C decoders never see it (they print
    raw lines on stderr); Pillow then decodes it or raises. A look at the header or the file's end
    (damaged PNGs are refused before this, by ``_png_damage``)."""
    if header.format in ("JPEG", "MPO"):
        if not _jpeg_has_end(data):
            _check_decodes_fully(header, name)  # truncated (refused here) or trailing data (fine)
        return True
    if header.format == "BMP":
        return _bmp_complete(data)
    if header.format == "TIFF":
        return _tiff_complete(header, len(data))
    if header.format == "AVIF":
        return _boxes_complete(data)
    return True


def _png_damage(data: bytes) -> str | None:
    """Why a PNG's chunk structure is broken (a chunk cut short, a CRC mismatch, no IEND), or None.
    Data after IEND is allowed, as libpng allows it."""
    position, end = 8, len(data)
    view = memoryview(data)
    while position + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        stop = position + 12 + length
        if length > 0x7FFFFFFF or stop > end:
            return f"truncated in the {kind.decode('latin-1')!r} chunk"
        (crc,) = struct.unpack_from(">I", data, stop - 4)
        if zlib.crc32(view[position + 4 : stop - 4]) != crc:  # libpng: an error (critical) or a warning line
            return f"CRC error in the {kind.decode('latin-1')!r} chunk"
        if kind == b"IEND":
            return None
        position = stop
    return "truncated: no IEND chunk"


def _jpeg_has_end(data: bytes) -> bool:
    """True when the JPEG's end-of-image marker is at the end (ignoring trailing padding)."""
    return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


def _check_decodes_fully(header: ImageFile.ImageFile, name: str | os.PathLike) -> None:
    """JPEGs without a final EOI are either truncated or carry trailing data; let Pillow decide."""
    try:
        header.load()
    except Exception as error:  # noqa: BLE001
        raise InputError(name, f"corrupt or truncated image ({first_line(error)})") from None


def _bmp_complete(data: bytes) -> bool:
    """An uncompressed BMP holds all its rows (OpenCV logs an error for a short one); other
    compressions cannot be sized from the header and are left to OpenCV."""
    if len(data) < 54:
        return False
    (offset,) = struct.unpack_from("<I", data, 10)
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size < 40:
        return True
    width, height, _planes, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    if compression not in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS
        return True
    stride = (abs(width) * bits + 31) // 32 * 4
    return len(data) >= offset + stride * abs(height)


def _tiff_complete(header: ImageFile.ImageFile, size: int) -> bool:
    """Every strip or tile of the first image lies inside the file."""
    tags = getattr(header, "tag_v2", None)
    if tags is None:
        return True
    offsets = tags.get(273) or tags.get(324)  # StripOffsets or TileOffsets
    counts = tags.get(279) or tags.get(325)  # StripByteCounts or TileByteCounts
    if not offsets or not counts:
        return False
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    return len(offsets) == len(counts) and all(o + c <= size for o, c in zip(offsets, counts))


def _boxes_complete(data: bytes) -> bool:
    """The top-level ISO-BMFF boxes of an AVIF file end inside the file."""
    position, end = 0, len(data)
    while position + 8 <= end:
        size, = struct.unpack_from(">I", data, position)
        if size == 1:
            if position + 16 > end:
                return False
            (size,) = struct.unpack_from(">Q", data, position + 8)
        elif size == 0:
            return True
        if size < 8 or position + size > end:
            return False
        position += size
    return position == end


def _decode_with_pillow(image: ImageFile.ImageFile, name: str | os.PathLike, keep_alpha: bool = False) -> np.ndarray:
    """Decode an identified image with Pillow: RGB, or RGBA when ``keep_alpha``."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _pil_to_rgba(image) if keep_alpha else pil_to_rgb(image)
    except UsageError as error:
        raise InputError(name, str(error)) from None
    except Image.DecompressionBombError:  # a plugin's own check at load (TIFF, GIF frames)
        width, height = image.size
        raise InputError(
            name,
            f"image is {width}x{height} = {width * height:,} pixels, over Pillow's own limit of {_pillow_limit():,} "
            f"for decoding this {image.format} file (PIL.Image.MAX_IMAGE_PIXELS x 2), which --max-pixels does not change",
        ) from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a corrupt file to the user
        raise InputError(name, f"corrupt or truncated image ({first_line(error)})") from None


def _pillow_limit() -> int:
    return 2 * int(Image.MAX_IMAGE_PIXELS or 0)


def first_line(error: BaseException, limit: int | None = 160) -> str:
    """The first line of an error's message (its type's name when empty), cut to ``limit`` characters
    (``None``: whole): what one-line failure messages quote of a library's exception."""
    text = str(error).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
