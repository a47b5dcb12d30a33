"""Low quality: shrunk, enlarged and JPEG-compressed, the InstantX/Shakker union model's "low quality"
condition, RGB at the input size.

Formula:

1. working image as ``guides.annotators.degradations`` says (``--resolution 0``, the default, keeps the size);
2. down by ``--factor`` (default 4) with INTER_AREA and up again with INTER_CUBIC, exactly as ``tile``;
3. JPEG at ``--quality`` (default 30): ``cv2.imencode(".jpg", bgr, [IMWRITE_JPEG_QUALITY, q])`` and
   ``cv2.imdecode`` (OpenCV's libjpeg, its default 4:2:0 chroma subsampling), back to RGB;
4. back to the input size with INTER_CUBIC when ``--resolution`` changed the size.

``--jitter J`` (default 0: off) draws the JPEG quality of each image uniformly from ``quality - J`` to
``quality + J`` (clamped to 1..100) with ``numpy.random.RandomState([seed, h0, h1])``, ``h0, h1`` the
first 8 bytes of the BLAKE2b digest of the working image's shape and pixels: the same image gets the same
quality in every run and in any folder order, different images differ, ``--seed`` changes all of them.

No SD 1.5 ControlNet of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np

from ..options import option
from ..weights.union_models import UnionMode
from .degradations import ConditionAnnotator, ConditionOptions, down_up


@dataclasses.dataclass(frozen=True)
class LowQualityOptions(ConditionOptions):
    factor: float = option(4.0, "Shrink each side by this factor (INTER_AREA), then enlarge back (INTER_CUBIC).",
                           min=1.0, max=1024.0)
    quality: int = option(30, "JPEG quality of the compression step.", min=1, max=100)
    jitter: int = option(0, "Draw each image's JPEG quality from quality +- N (0: off), from --seed and the image.",
                         min=0, max=99)
    seed: int = option(0, "Seed of the quality jitter.", min=0, max=2**32 - 1)


def jpeg_quality(image: np.ndarray, quality: int, jitter: int, seed: int) -> int:
    """The JPEG quality of ``image``: ``quality``, or with ``jitter`` a draw seeded by ``seed`` and the pixels."""
    if jitter == 0:
        return quality
    digest = hashlib.blake2b(repr(image.shape).encode() + image.tobytes(), digest_size=8).digest()
    words = np.frombuffer(digest, dtype="<u4")
    draw = np.random.RandomState([seed, int(words[0]), int(words[1])]).randint(-jitter, jitter + 1)
    return int(min(100, max(1, quality + draw)))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 image through OpenCV's JPEG encoder at ``quality`` and back."""
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.cvtColor(cv2.imdecode(buffer, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class LowQualityAnnotator(ConditionAnnotator):
    """Down and up by ``factor``, then a JPEG round trip at ``quality`` (optionally jittered per image)."""

    name = "low-quality"
    summary = "Low quality (no network): shrunk, enlarged and JPEG-compressed, RGB: the union models' low quality."
    Options = LowQualityOptions
    options: LowQualityOptions
    union_modes = (UnionMode("instantx", "low quality"),)

    def formula(self, working: np.ndarray) -> np.ndarray:
        o = self.options
        return jpeg(down_up(working, o.factor), jpeg_quality(working, o.quality, o.jitter, o.seed))
