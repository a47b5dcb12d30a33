"""Depth guides with ZoeDepth (ZoeD_N, ``ZoeD_M12_N.pt``): near = white, as ``refs/cutecat_guide_depth.png``.

Inference is the original ``ZoeDepth.infer_pil`` on the image at its own size (the network resizes
internally to about 384 x 512 and the prediction is resized back): RGB / 255, reflect padding of
int(sqrt(side / 2) * 3) pixels (``--no-pad`` skips it: borders may show the NYU training data's frame
artefacts) and the average with the prediction of the mirrored image (``--no-flip`` skips it: half the
work, slightly noisier depth). ``--resolution N`` resizes the image first as the other annotators do.

Formats (``--format``):

* ``rgba`` (default): the original ZoeDepth colouring (``zoedepth.utils.misc.colorize``): depth scaled
  between its 2nd and 85th percentiles, matplotlib's ``gray_r`` colormap as bytes, RGBA with alpha 255.
  Computed here without matplotlib, equal to it value for value (tests/annotators/test_depth.py).
* ``gray``: the same grey level as one channel.
* ``metric16``: 16-bit depth in metres * 256 (the original ``infer_pil(output_type="pil")``), for datasets
  that want metric depth; depths beyond 256 m saturate at 65535.

Memory: the weights are 345 M parameters, 1.38 GB in fp32 (memory-mapped from the checkpoint: page cache
that processes share). Measured on CPU at fp32 for one 512 x 512 image with padding and flip: peak RSS
3.0 GB (controlnet_aux's ZoeDetector: 3.5 GB), about 0.5 GB of it activations. fp16/bf16 (estimated, not
measured: no GPU here): 0.69 GB of backbone weights plus about 0.3 GB per 512 x 512 image of a batch
(flip doubles the batch inside); the small metric head stays fp32. See bench/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..options import option
from ..weights.declarations import ANNOTATORS_REPO, MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch

if TYPE_CHECKING:
    from ..nets.zoedepth import ZoeDepth

log = logging.getLogger(__name__)

FORMATS = ("rgba", "gray", "metric16")
MIN_PADDED_SIDE = 5
"""Reflect padding by int(sqrt(side / 2) * 3) needs a side of at least 5 pixels."""
MAX_NETWORK_AREA = 5
"""The network's input may have at most this many times its nominal area (384 x 512). ZoeDepth scales an
image as little as possible towards that size, keeping the aspect ratio, so a very elongated image (a
300 x 100000 strip runs at 384 x 128000) would give the BEiT tens of thousands of tokens and attention
matrices of hundreds of GB; 5x (about 3,800 tokens, a 7:1 panorama) keeps them under about 2 GB."""
_INVALID_DEPTH = -99.0
_BACKGROUND = 128
"""The original colouring marks depth == -99 as invalid and paints it grey (128, 128, 128, 255)."""


#: SD 1.5's depth ControlNet (guide kind ``depth``): every depth annotator's guide (near = white) is meant for it.
DEPTH_CONTROLNET = ControlNet(
    repo="lllyasviel/control_v11f1p_sd15_depth",
    # stated: https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/539f99181d33db39cf1af2e517cd8056785f0a87/diffusion_pytorch_model.fp16.safetensors
    revision="539f99181d33db39cf1af2e517cd8056785f0a87",
    licence="OpenRAIL (ControlNet v1.1)",
    approx_size=1_450 * MB,
    kind="depth",
    in_reference_suite=True,
)


@dataclasses.dataclass(frozen=True)
class DepthOptions(ModelOptions):
    resolution: int = option(0, "Resize first: short side to N, sides to multiples of 64 (0: the network resizes internally).", min=0)
    """0: run on the image at its own size (the network resizes internally)."""
    format: str = option(
        "rgba", "rgba: ZoeDepth's colouring (near = white); gray: one channel; metric16: 16-bit metres * 256.",
        choices=FORMATS,
    )
    """rgba (ZoeDepth's colouring), gray (one channel) or metric16 (16-bit metres * 256)."""
    flip: bool = option(
        True, "Average with the mirrored image's prediction (--no-flip: twice as fast, a little noisier).",
    )
    """Average with the prediction of the mirrored image (the original's default)."""
    pad: bool = option(
        True, "Reflect-pad before predicting (--no-pad: slightly faster, may show border artefacts).",
    )
    """Reflect-pad before predicting and crop back (the original's default)."""


# ------------------------------------------------------------------------------------------- colouring


def _gray_r_bytes() -> np.ndarray:
    """matplotlib's ``gray_r`` lookup table as bytes, built the way matplotlib builds it.

    ``LinearSegmentedColormap`` interpolates its segment data ((0, 1, 1), (1, 0, 0)) at 256 points and
    ``Colormap(..., bytes=True)`` truncates ``lut * 255`` to uint8, so some levels repeat (not 255 - i).
    """
    n = 256
    x = np.array([0.0, 1.0]) * (n - 1)
    xind = (n - 1) * np.linspace(0, 1, n) ** 1.0
    distance = (xind[1:-1] - x[0]) / (x[1] - x[0])
    lut = np.concatenate([[1.0], distance * (0.0 - 1.0) + 1.0, [0.0]])
    return (np.clip(lut, 0.0, 1.0) * 255).astype(np.uint8)


GRAY_R = _gray_r_bytes()


def colormap_levels(value: np.ndarray) -> np.ndarray:
    """Lookup-table index (0..255) of each value, as matplotlib's ``Colormap.__call__`` computes it:
    ``value * 256`` truncated, below 0 -> the "under" colour (index 0), 1 and above -> index 255."""
    scaled = np.asarray(value) * 256
    return np.clip(np.floor(scaled), 0, 255).astype(np.uint8)


def _normalised(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(depth - p2) / (p85 - p2) over the valid pixels, and the invalid mask (original ``colorize``)."""
    invalid = depth == _INVALID_DEPTH
    valid = depth[~invalid] if invalid.any() else depth
    if valid.size == 0:
        return np.zeros_like(depth), invalid
    vmin = np.percentile(valid, 2)
    vmax = np.percentile(valid, 85)
    value = (depth - vmin) / (vmax - vmin) if vmin != vmax else depth * 0.0
    return value, invalid


def colorize(depth: np.ndarray) -> np.ndarray:
    """ZoeDepth's colouring of a metric depth map (H, W): RGBA uint8, near = white, alpha 255."""
    value, invalid = _normalised(depth)
    gray = GRAY_R[colormap_levels(value)]
    rgba = np.empty(depth.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = gray[..., None]
    rgba[..., 3] = 255
    rgba[invalid, :3] = _BACKGROUND
    return rgba


def grayscale(depth: np.ndarray) -> np.ndarray:
    """The grey level of ``colorize`` as one channel (H, W) uint8."""
    value, invalid = _normalised(depth)
    gray = GRAY_R[colormap_levels(value)]
    gray[invalid] = _BACKGROUND
    return gray


def metric16(depth: np.ndarray) -> np.ndarray:
    """Depth in metres * 256 as uint16 (the original ``infer_pil(output_type="pil")``), saturating."""
    return np.clip(depth * 256, 0, 65535).astype(np.uint16)


RENDERERS = {"rgba": colorize, "gray": grayscale, "metric16": metric16}


# ------------------------------------------------------------------------------------------- annotator


class DepthAnnotator(LearnedAnnotator):
    """ZoeD_N metric depth, rendered as ``options.format``; one forward per batch of equal-size images.

    The guide has the working image's size (the input's by default: ``resolution`` 0)."""

    name = "depth"
    summary = "Depth (ZoeDepth ZoeD_N), near = white."
    #: 67 Mpx: the network runs at about 384 x 512; at the working size only the padded, flipped input and
    #: the prediction (about 70 bytes a pixel).
    default_max_working_pixels = 1 << 26
    refuses_cpu_fp16 = False
    Options = DepthOptions
    options: DepthOptions
    checkpoints = (
        Checkpoint(
            name="depth",
            repo=ANNOTATORS_REPO,
            filename="ZoeD_M12_N.pt",
            # no public source names ZoeD_M12_N.pt at a commit of lllyasviel/Annotators: main (not pinned)
            container="model_dict",
            # the 24 relative_position_index tables saved by the old timm it was trained with: checked against
            # the ones the BEiT computes, then dropped
            has_saved_computed_buffers=True,
            licence="MIT (isl-org/ZoeDepth)",
            used_by="depth",
            size=1_443_406_099,
            description="ZoeD_N (MiDaS BEiT-L/16-384 backbone)",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "depth"),
        UnionMode("instantx", "depth"),
    )
    controlnets = (DEPTH_CONTROLNET,)

    def load(self) -> Any:
        """``ZoeD_M12_N.pt``, loaded strictly into our ZoeD_N (CPU, fp32; see ``load_network``)."""
        return load_network(checkpoint=str(self.checkpoint_file("depth")))

    def to_device(self, model: Any) -> Any:
        """The network on the device; the MiDaS core runs at ``dtype``, the metric head stays fp32 (its
        log-binomial and attractor arithmetic loses too much in half precision)."""
        import torch

        model = model.to(self.device).eval()
        model.core.to(self.dtype)
        for module in model.head_modules():
            module.to(torch.float32)
        return model

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        """The depth rendered as ``options.format``, at the working size."""
        return RENDERERS[self.options.format](prediction)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Metric depth (B, H, W) float32 in metres of RGB uint8 images (B, H, W, 3) of one size."""
        import torch

        from ..nets.zoedepth import infer_depth

        check_rgb_batch(images, "depth")
        self.check_working_size(*images.shape[1:3])
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div(255)
        depth = infer_depth(self.model, batch, pad=self.options.pad, flip=self.options.flip)
        depth = depth[:, 0].cpu().numpy()
        self.check_finite(depth)
        return depth

    def prepare(self, image: np.ndarray) -> WorkingImage:
        """The working image, refused (InputError: that file fails, not its batch) when it is too small to
        pad or too elongated for the network."""
        item = super().prepare(image)
        self.check_working_size(*item.pixels.shape[:2])
        return item

    def check_working_size(self, height: int, width: int) -> None:
        """Refuse (InputError) a working image too small for the reflect padding, or one the network would
        run at over ``MAX_NETWORK_AREA`` times its nominal size: extreme aspect ratios, which
        ``--resolution`` does not change."""
        from ..nets.zoedepth import network_input_size, padding_for

        if self.options.pad and min(height, width) < MIN_PADDED_SIDE:
            raise InputError(
                None,
                f"image is {width}x{height}: depth with padding needs at least {MIN_PADDED_SIDE}x{MIN_PADDED_SIDE} "
                f"pixels (use --no-pad or --resolution)",
            )
        config = self.model.config
        pad_h, pad_w = padding_for(height, width) if self.options.pad else (0, 0)
        net_h, net_w = network_input_size(height + 2 * pad_h, width + 2 * pad_w, config)
        limit = MAX_NETWORK_AREA * config.net_height * config.net_width
        if net_h * net_w > limit:
            raise InputError(
                None,
                f"{width}x{height} image: the depth network would run at {net_w}x{net_h} ({net_h * net_w:,} pixels, "
                f"over its limit of {limit:,}): the aspect ratio is too extreme; crop the image",
            )


def load_network(models_dir: str | None = None, checkpoint: str | None = None) -> ZoeDepth:
    """Find ``ZoeD_M12_N.pt`` (``checkpoint``, else the models folder, else the hub cache) and load it strictly
    into our ZoeD_N (CPU, fp32, eval mode), with the declared container and key filters: the file's 24
    ``relative_position_index`` tables are checked against the ones the BEiT computes and dropped; any other
    difference is a WeightsError."""
    from ..nets.zoedepth import zoed_n
    from ..weights.load import load_checkpoint_into
    from ..weights.resolve import resolve_checkpoint

    (declared,) = DepthAnnotator.checkpoints
    path = Path(resolve_checkpoint(declared.name, explicit=checkpoint, models_dir=models_dir))
    log.info("depth: loading %s", path)
    return load_checkpoint_into(zoed_n, path, container=declared.container, key_filters=declared.key_filters)
