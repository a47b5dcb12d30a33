"""The one place that reads, converts, resizes and writes images.

Reading follows OpenCV so that guides equal what ``cv2.imread`` + an OpenCV annotator give:
opaque images are decoded by ``cv2.imdecode(IMREAD_COLOR)`` (EXIF orientation applied, 16-bit
scaled by >> 8, grayscale and CMYK expanded, exactly as ``cv2.imread``). Images with transparency are
composited on white the way ControlNet's ``HWC3`` does. Everything returned is RGB ``uint8`` (H, W, 3).

Bad files raise ``InputError`` with a one-line reason; nothing here prints or logs tracebacks.
"""

from __future__ import annotations

import io
import os
import secrets
import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError, OutputError, UsageError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

#: Suffixes walked in folders (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

#: Default pixel limit: 16384 x 16384. Larger files are refused as probable decompression bombs.
DEFAULT_MAX_PIXELS = 16384 * 16384

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


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
    if not data:
        raise InputError(name, "empty file (0 bytes)")
    header = _open_header(data, name, max_pixels)
    has_alpha = header.mode in _ALPHA_MODES or (header.mode == "P" and "transparency" in header.info)
    if not has_alpha and header.format != "GIF":
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3:
            if header.format == "JPEG" and not _jpeg_has_end(data):
                _check_decodes_fully(data, name)
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _decode_with_pillow(data, name)


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
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UsageError(f"the image has no pixels ({rgb.shape[1]}x{rgb.shape[0]})")
    if rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise UsageError(f"the image has {rgb.shape[0] * rgb.shape[1]:,} pixels, over the limit of {max_pixels:,}")
    return rgb


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """Normalise a user array (RGB/RGBA/gray, uint8/uint16/bool) to RGB uint8 (H, W, 3)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UsageError(f"image arrays must be uint8, uint16 or bool, got {array.dtype}")
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


TEMP_MARK = ".guides-tmp-"


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    A run killed mid-write leaves at worst a hidden ``.NAME.guides-tmp-PID-*`` file, never a partial
    ``NAME``; ``remove_stale_temp_files`` clears those of dead processes when a batch starts.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp_name = str(path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        handle = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OutputError(path, f"cannot write: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
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
    """Delete the temporary files that killed runs left in ``folder`` (not those of live processes)."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if TEMP_MARK not in entry.name:
            continue
        pid_text = entry.name.split(TEMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and _process_alive(int(pid_text)):
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


def _open_header(data: bytes, name: str | os.PathLike, max_pixels: int) -> Image.Image:
    """Identify the image and check its size without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputError(name, f"image is too large (over {max_pixels:,} pixels, a possible decompression bomb); raise --max-pixels to allow it") from None
    except UnidentifiedImageError:
        raise InputError(name, "not an image, or an unsupported image format") from None
    except Exception as error:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise InputError(name, f"corrupt or truncated image ({_short(error)})") from None
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


def _decode_with_pillow(data: bytes, name: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            return pil_to_rgb(image)
    except UsageError as error:
        raise InputError(name, str(error)) from None
    except Exception as error:  # noqa: BLE001 - any decoder failure is a corrupt file to the user
        raise InputError(name, f"corrupt or truncated image ({_short(error)})") from None


def _jpeg_has_end(data: bytes) -> bool:
    """True when the JPEG's end-of-image marker is at the end (ignoring trailing padding)."""
    return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


def _check_decodes_fully(data: bytes, name: str | os.PathLike) -> None:
    """JPEGs without a final EOI are either truncated or carry trailing data; let Pillow decide."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as error:  # noqa: BLE001
        raise InputError(name, f"corrupt or truncated image ({_short(error)})") from None


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]
