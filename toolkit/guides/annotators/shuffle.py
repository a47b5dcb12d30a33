"""Content shuffle: controlnet_aux's ``ContentShuffleDetector`` (random smooth flow fields, remap), seeded.

Formula (controlnet_aux 0.0.10, step for step):

1. working image = ControlNet's ``resize_image(image, resolution)`` (default 512, the reference's detect
   resolution; ``--resolution 0`` keeps the input size); ``H, W`` its size;
2. two noise fields, x first: ``u = rng.uniform(0, 1, (H // 256 + 2, W // 256 + 2))`` (float64), resized to
   ``(W + 512, H + 512)`` with INTER_CUBIC, cropped to ``[256:256 + H, 256:256 + W]``, then ``u -= u.min()``
   and ``u /= u.max()`` (the reference's ``make_noise_disk(H, W, 1, 256)``);
3. ``map_x = (u_x * (W - 1)).astype(float32)``, ``map_y = (u_y * (H - 1)).astype(float32)``;
   ``cv2.remap(working, map_x, map_y, INTER_LINEAR)``;
   (OpenCV's remap takes sides under 32767 px: a longer working side fails with one line);
4. back to the input size with INTER_LINEAR (the reference resizes to its ``image_resolution`` the same
   way; ours goes to the input size, so every guide has its input's size). RGB (H, W, 3) uint8.

``rng`` is ``numpy.random.RandomState(seed)`` made afresh for every image (``--seed``, default 0): the
reference draws from NumPy's global stream unseeded, and its draws after ``np.random.seed(seed)`` are exactly
ours. No global RNG state is touched. Every image of one working size gets the same flow fields, so an
annotator computes them once per working size (kept for up to 8 sizes of at most 4 Mpx).

ControlNet: ``lllyasviel/control_v11e_sd15_shuffle``; no union mode.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from ..errors import InputError
from ..options import option
from ..weights.declarations import MB, ControlNet
from .degradations import ConditionAnnotator, ConditionOptions

#: The noise cell in working pixels (the reference's ``f`` default).
CELL = 256
#: Working pixels allowed by default: 2**25 (33.5 Mpx): about 40 bytes a working pixel at the peak (the two
#: float64 noise fields, the float32 maps, image and output), so about 1.3 GB.
SHUFFLE_MAX_WORKING_PIXELS = 1 << 25
#: ``cv2.remap`` asserts that every side is under SHRT_MAX (32767).
REMAP_MAX_SIDE = 32767
#: An annotator keeps the flow maps of up to 8 working sizes of at most 4 Mpx (32 MB each at most): a folder
#: of same-size photos computes them once.
CACHED_SIZES = 8
CACHED_PIXELS = 1 << 22


@dataclasses.dataclass(frozen=True)
class ShuffleOptions(ConditionOptions):
    resolution: int = option(512, "Resize first: short side to N, sides to multiples of 64 (0 keeps the size).", min=0)
    seed: int = option(0, "Seed of the flow fields (numpy RandomState; the same for every image).",
                       min=0, max=2**32 - 1)


def noise_field(rng: np.random.RandomState, height: int, width: int) -> np.ndarray:
    """A smooth (height, width) float64 field in [0, 1]: cubic-upsampled uniform noise on a 256-px grid."""
    coarse = rng.uniform(0.0, 1.0, size=(height // CELL + 2, width // CELL + 2))
    field = cv2.resize(coarse, (width + 2 * CELL, height + 2 * CELL), interpolation=cv2.INTER_CUBIC)
    field = field[CELL:CELL + height, CELL:CELL + width]
    field -= field.min()
    field /= field.max()
    return field


def flow_maps(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The float32 remap maps (x, y) of a working size: steps 2-3 of the module docstring, x drawn first."""
    rng = np.random.RandomState(seed)
    map_x = (noise_field(rng, height, width) * float(width - 1)).astype(np.float32)
    map_y = (noise_field(rng, height, width) * float(height - 1)).astype(np.float32)
    map_x.flags.writeable = map_y.flags.writeable = False
    return map_x, map_y


class ShuffleAnnotator(ConditionAnnotator):
    """The working image remapped through two seeded random flow fields."""

    name = "shuffle"
    summary = "Content shuffle (no network): the image remapped by seeded random flow fields, for the shuffle ControlNet."
    Options = ShuffleOptions
    options: ShuffleOptions
    back_interpolation = cv2.INTER_LINEAR
    max_working_pixels = SHUFFLE_MAX_WORKING_PIXELS
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11e_sd15_shuffle",
            # imaginAIry's configs pin commit 8cf275970f984acf5cc0fdfa537db8be098936a3 for the fp16 safetensors
            # only; no public source states it for diffusion_pytorch_model.safetensors: main.
            revision="main",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
        ),
    )

    def __init__(self, options: ShuffleOptions | None = None) -> None:
        super().__init__(options)
        #: (height, width) -> the read-only flow maps of that working size (they depend on the seed and size only).
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def formula(self, working: np.ndarray) -> np.ndarray:
        height, width = working.shape[:2]
        if max(height, width) >= REMAP_MAX_SIDE:
            raise InputError(None, f"working size {width}x{height}: OpenCV's remap takes sides under "
                                   f"{REMAP_MAX_SIDE} px (use a smaller --resolution)")
        maps = self._maps.get((height, width))
        if maps is None:
            maps = flow_maps(self.options.seed, height, width)
            if len(self._maps) < CACHED_SIZES and height * width <= CACHED_PIXELS:
                self._maps[(height, width)] = maps  # equal values whichever thread stores them
        return cv2.remap(working, maps[0], maps[1], cv2.INTER_LINEAR)
