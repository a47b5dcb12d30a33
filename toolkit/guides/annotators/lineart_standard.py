"""Standard line art (no network): how much darker each pixel is than its Gaussian-blurred surroundings,
white lines on black. Bit-exact with controlnet_aux's ``LineartStandardDetector`` (numpy arrays in,
``output_type="np"``, its first channel).

Pipeline (the reference's, step for step, in float32):

1. working image = ``resize_image(image, resolution)`` (default 512, as the reference's detect resolution;
   ``--resolution 0`` keeps the input size);
2. ``g = GaussianBlur(x, sigma)`` of the RGB image ``x`` as float32; ``d = min over channels of (g - x)``
   clipped to [0, 255] (how much darker than its surroundings, in the channel darkening least);
3. ``d / max(16, median of d over the pixels above --intensity-threshold) * 127``, clipped and truncated to
   uint8 (16 when no pixel is above the threshold);
4. the guide is resized back to the input size with ``cv2.INTER_CUBIC``, as the reference does (not
   INTER_LINEAR like the network annotators: that is what keeps it bit-exact).

``intensity_map`` (steps 2-3 on a working image) is shared with ``anyline``.

The working size is checked before anything of that size is allocated (``--max-working-pixels``), as for
canny: about 50 bytes a working pixel at the peak (float32 image, blur, difference, the minimum and its mask).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..imaging import resize_image, resize_to
from ..options import option
from ..weights.union_models import UnionMode
from .base import Annotator, AnnotatorOptions
from .learned import check_working_pixels

#: Working pixels allowed by default: 2**25 (33.5 Mpx, about 1.7 GB at 50 bytes a working pixel).
DEFAULT_MAX_WORKING_PIXELS = 1 << 25

#: The floor of the normaliser: a median darkness below 16 levels is taken as 16 (faint images stay faint).
MIN_NORMALISER = 16.0
#: The grey level a pixel as dark as the median reaches.
MEDIAN_LEVEL = 127


def intensity_map(image: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """The standard line-art map (H, W) uint8 of an RGB uint8 working image (H, W, 3): steps 2-3 of the
    module docstring, exactly as controlnet_aux computes them."""
    x = image.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), sigma)
    g -= x
    # min over the channel axis as two element-wise minima: the same values, without numpy's slow
    # reduction over an axis of length 3.
    darkness = np.minimum(np.minimum(g[..., 0], g[..., 1]), g[..., 2])
    np.clip(darkness, 0, 255, out=darkness)
    above = darkness[darkness > threshold]
    normaliser = max(MIN_NORMALISER, float(np.median(above))) if above.size else MIN_NORMALISER
    # In float32 as the reference: its median is a float32 scalar and the division is done in float32.
    darkness /= np.float32(normaliser)
    darkness *= np.float32(MEDIAN_LEVEL)
    np.clip(darkness, 0, 255, out=darkness)
    return darkness.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class LineartStandardOptions(AnnotatorOptions):
    resolution: int = option(512, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    sigma: float = option(6.0, "Gaussian blur sigma: the width of the surroundings a pixel is compared with.",
                          min=0.01, max=1000.0)
    intensity_threshold: float = option(8.0, "Darkness (grey levels) above which pixels count for the median.",
                                        min=0.0, max=255.0)
    max_working_pixels: int | None = option(
        None, "Refuse images whose working size (after --resolution) has more pixels.", min=1,
        default_text=f"{DEFAULT_MAX_WORKING_PIXELS:,}",
    )
    """Refuse an image whose working size has more pixels (None: ``DEFAULT_MAX_WORKING_PIXELS``)."""


class LineartStandardAnnotator(Annotator):
    """Darkness relative to a Gaussian blur, normalised by its median (controlnet_aux's lineart_standard)."""

    name = "lineart-standard"
    summary = "Standard line art (no network): darkness against a Gaussian blur, white lines on black."
    Options = LineartStandardOptions
    options: LineartStandardOptions
    # No ControlNet of its own: SD 1.5's lineart ControlNet expects dark lines on white from its generator.
    union_modes = (
        UnionMode("xinsir", "thin line"),
    )
    controlnets = ()

    def annotate(self, image: np.ndarray) -> np.ndarray:
        limit = self.options.max_working_pixels
        check_working_pixels(self.name, image.shape[0], image.shape[1], self.options.resolution,
                             DEFAULT_MAX_WORKING_PIXELS if limit is None else limit)
        working = resize_image(image, self.options.resolution)
        guide = intensity_map(working, self.options.sigma, self.options.intensity_threshold)
        return resize_to(guide, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
