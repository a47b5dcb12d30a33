"""Canny edges with OpenCV: white edges on black, single channel, values 0/255.

Bit-exact with ``cv2.Canny(cv2.imread(path), low, high)``: OpenCV's Canny on a colour image takes the
strongest gradient over the channels, and ties resolve by channel order, so we feed BGR exactly as
``cv2.imread`` gives it (the reference guide was made that way; RGB order differs in a few pixels).

The working size (after ``--resolution``) is checked before anything of that size is allocated, as for
the learned annotators: ``resolution`` enlarges extreme aspect ratios enormously (a 1 x 100000 strip at
512 becomes 512 x 51200000, 78 GB of BGR), and such an image is one failed file, not an OpenCV crash.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..imaging import DEFAULT_MAX_PIXELS, resize_image
from ..options import option
from ..weights.declarations import MB, ControlNet
from ..weights.union_models import UnionMode
from .base import Annotator, AnnotatorOptions
from .learned import check_working_pixels

#: Working pixels allowed by default: the ``--max-pixels`` default (2**28, 16384 x 16384). Canny needs
#: about 20 bytes a working pixel at its peak (BGR copy, 16-bit Sobel gradients of three channels, edge
#: map, output), so about 5 GB at this limit; an image ``--max-pixels`` lets in passes at resolution 0.
DEFAULT_MAX_WORKING_PIXELS = DEFAULT_MAX_PIXELS


@dataclasses.dataclass(frozen=True)
class CannyOptions(AnnotatorOptions):
    low: int = option(100, "Lower hysteresis threshold.", min=0, max=10_000)
    high: int = option(200, "Upper hysteresis threshold.", min=0, max=10_000)
    max_working_pixels: int | None = option(
        None, "Refuse images whose working size (after --resolution) has more pixels.", min=1,
        default_text=f"{DEFAULT_MAX_WORKING_PIXELS:,}",
    )
    """Refuse an image whose working size has more pixels (None: ``DEFAULT_MAX_WORKING_PIXELS``)."""


class CannyAnnotator(Annotator):
    """``cv2.Canny`` on the BGR image (optionally resized first as ControlNet does)."""

    name = "canny"
    summary = "Canny edges (OpenCV), white on black."
    Options = CannyOptions
    options: CannyOptions
    union_modes = (
        UnionMode("xinsir", "thin line"),
        UnionMode("instantx", "canny"),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15_canny",
            # stated: https://huggingface.co/lllyasviel/control_v11p_sd15_canny/resolve/115a470d547982438f70198e353a921996e2e819/diffusion_pytorch_model.fp16.safetensors
            # (imaginAIry's ControlNet configs and download scripts), and cache snapshots of that commit loaded
            # with ControlNetModel.from_pretrained
            revision="115a470d547982438f70198e353a921996e2e819",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            in_reference_suite=True,
        ),
    )

    def annotate(self, image: np.ndarray) -> np.ndarray:
        limit = self.options.max_working_pixels
        check_working_pixels("canny", image.shape[0], image.shape[1], self.options.resolution,
                             DEFAULT_MAX_WORKING_PIXELS if limit is None else limit)
        image = resize_image(image, self.options.resolution)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        return cv2.Canny(bgr, self.options.low, self.options.high)
