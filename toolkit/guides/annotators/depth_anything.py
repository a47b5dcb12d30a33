"""Depth guides with Depth Anything V2 (``--model small|base|large``): min-max normalised relative depth,
near = white, at the input size; for SD 1.5's depth ControlNet (guide kind ``depth``, as ``guides depth``).

Pipeline (the original ``DepthAnythingV2.infer_image`` and ``run.py``):

1. ``--resolution N`` (default 0: off) first resizes the image as the other annotators do (ControlNet's
   short side to N, multiples of 64); the guide then has that working size;
2. RGB / 255 as float32, resized with ``cv2.INTER_CUBIC`` (as the original's ``Resize``) to the network
   input: aspect kept, both sides scaled by the larger of S / height and S / width (``--input-size S``,
   default 518: the short side becomes S), each rounded to a multiple of 14 and never under S
   (``keep_aspect_ratio=True, ensure_multiple_of=14, resize_method="lower_bound"``); ImageNet mean/std;
3. the network (``guides.nets.depth_anything``) on the device, batched: images whose network input
   shapes are equal share a forward; its relative depth (B, h, w) is resized bilinearly with
   align_corners=True to each image's working size (as ``infer_image``), in float32;
4. ``--format``:

   * ``gray`` (default): ``(d - min) / (max - min) * 255`` truncated to uint8, one channel (``run.py
     --grayscale``): larger = nearer = white;
   * ``rgba``: that grey in R, G and B with alpha 255 (the layout of ``guides depth``'s rgba guide and of
     ``refs/cutecat_guide_depth.png``);
   * ``raw16``: ``(d - min) / (max - min) * 65535`` rounded to uint16: the same normalised depth with
     256 times the levels, for datasets (not metric: Depth Anything V2's relative depth has no unit).

   A depth map of one value (a flat image through a real network) gives a black guide.

Weights (``--weights``): ``hf`` (default) is the transformers layout of
``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf`` (``model.safetensors``, memory-mapped); ``original``
is the authors' ``depth_anything_v2_vit{s,b,l}.pth`` from ``depth-anything/Depth-Anything-V2-{Small,Base,Large}``.
Both hold the same weights; only the key layout differs. In a flat models folder the three ``-hf`` files,
all called ``model.safetensors`` on the hub, go as ``depth_anything_v2_vit{s,b,l}.safetensors`` (or as
``Depth-Anything-V2-{Small,Base,Large}-hf/model.safetensors``); ``guides models download --to DIR`` writes
them so. Licences differ: Small is Apache-2.0, Base and Large are CC-BY-NC-4.0 (non-commercial use only;
their download prints a warning line).

Size limit: the network input's pixels (after the aspect-keeping resize, which blows a thin strip up:
a 3 x 700 strip runs at 120862 x 518) are refused over ``--max-working-pixels`` (default 2^23, about
43,000 tokens: roughly 10 GB at fp32 for the large model), before anything of that size is allocated.

Precision: fp32 (default), bf16 (CPU or GPU), fp16 (GPU; refused on the CPU, no fast kernels).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from ..errors import InputError
from ..options import option
from ..weights.declarations import MB, Checkpoint
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .depth import DEPTH_CONTROLNET
from .learned import LearnedAnnotator, check_working_pixels, working_size

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MODELS = ("small", "base", "large")
WEIGHTS = ("hf", "original")
FORMATS = ("gray", "rgba", "raw16")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_SIZE_LETTER = {"small": "s", "base": "b", "large": "l"}
_APPROX_BYTES = {"small": 99 * MB, "base": 390 * MB, "large": 1_340 * MB}
# Stated by public download manifests (each fetching https://huggingface.co/REPO/resolve/COMMIT/FILE and
# checking these bytes and LFS sha256 digests): (revision, size, sha256) per (model, weights). The rest
# stay on main, at an approximate size: no source found names them at a commit.
_PINNED: dict[tuple[str, str], tuple[str, int | None, str]] = {
    ("small", "hf"): ("5426e4f0f36572d16453bbda7a8389317b1bef99", 99_173_660,
                      "3152477ce0d8d6978d76b995120de97cb5b928701fd0f817769f59e249a16b70"),
    ("large", "hf"): ("7581137eff8d4e94f6e796d3baea0e9fa79b22d2", 1_341_322_868,
                      "4e01e34ed5549b529b70b92d53226bc370f03041977b390d3dde45d47f516cf9"),
    ("small", "original"): ("03876f8651c73a60fe4c2c48294e09fcb6838fcf", 99_218_434,
                            "715fade13be8f229f8a70cc02066f656f2423a59effd0579197bbf57860e1378"),
}


def _pin(model: str, weights: str) -> dict[str, object]:
    """The Checkpoint fields of a pinned file (revision, size, sha256), else its approximate size."""
    if (model, weights) not in _PINNED:
        return {"approx_size": _APPROX_BYTES[model]}
    revision, size, sha256 = _PINNED[model, weights]
    return {"revision": revision, "size": size, "sha256": sha256}


_LICENCES = {
    "small": ("Apache-2.0 (Depth Anything V2 Small model card)", False),
    "base": ("CC-BY-NC-4.0 (Depth Anything V2 Base model card)", True),
    "large": ("CC-BY-NC-4.0 (Depth Anything V2 Large model card)", True),
}


@dataclasses.dataclass(frozen=True)
class DepthAnythingOptions(ModelOptions):
    resolution: int = option(0, "Resize first: short side to N, sides to multiples of 64 (0: off, the guide has the input size).", min=0)
    """0: the image as it is (the network input is made by ``input_size``); N: ControlNet's resize first."""
    model: str = option("large", "Depth Anything V2 size: small (Apache-2.0), base or large (CC-BY-NC-4.0).",
                        choices=MODELS)
    """small (24.8 M parameters), base (97.5 M) or large (335 M)."""
    weights: str = option("hf", "Checkpoint layout: hf (the -hf repos' model.safetensors) or original (the authors' .pth).",
                          choices=WEIGHTS)
    """hf: ``depth-anything/Depth-Anything-V2-*-hf`` (``model.safetensors``); original: the authors' ``.pth``."""
    input_size: int = option(518, "Network input: short side to N (sides multiples of 14, aspect kept), as the original.",
                             min=14, max=8192)
    """The original's ``input_size``: the short side of the network input (the long side follows the aspect)."""
    format: str = option("gray", "gray: min-max depth, near = white; rgba: the same as RGBA; raw16: 16-bit min-max depth.",
                         choices=FORMATS)
    """gray (uint8), rgba (grey RGB + alpha 255) or raw16 (uint16, 0..65535)."""


@dataclasses.dataclass(frozen=True)
class NetworkInput:
    """A prepared item: the normalised network input (h, w, 3) float32 and the guide's size (H, W)."""

    pixels: np.ndarray
    output_size: tuple[int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        """Items of equal network input shape share a ``predict`` batch."""
        return self.pixels.shape


def _checkpoints() -> tuple[Checkpoint, ...]:
    found: list[Checkpoint] = []
    for model in MODELS:
        title = model.capitalize()
        letter = _SIZE_LETTER[model]
        licence, non_commercial = _LICENCES[model]
        found.append(Checkpoint(
            name=f"depth-anything-v2-{model}",
            repo=f"depth-anything/Depth-Anything-V2-{title}-hf",
            filename="model.safetensors",
            container="safetensors",
            licence=licence,
            non_commercial=non_commercial,
            local_name=f"depth_anything_v2_vit{letter}.safetensors",
            **_pin(model, "hf"),  # type: ignore[arg-type]
            description=f"Depth Anything V2 {title}, transformers layout",
            when=(("model", model), ("weights", "hf")),
        ))
    for model in MODELS:
        title = model.capitalize()
        licence, non_commercial = _LICENCES[model]
        found.append(Checkpoint(
            name=f"depth-anything-v2-{model}-original",
            repo=f"depth-anything/Depth-Anything-V2-{title}",
            filename=f"depth_anything_v2_vit{_SIZE_LETTER[model]}.pth",
            container="state_dict",
            licence=licence,
            non_commercial=non_commercial,
            **_pin(model, "original"),  # type: ignore[arg-type]
            description=f"Depth Anything V2 {title}, the authors' file",
            when=(("model", model), ("weights", "original")),
        ))
    return tuple(found)


def normalised(depth: np.ndarray, levels: float) -> np.ndarray:
    """``(d - min) / (max - min) * levels`` in float32 (zeros for a constant map)."""
    low, high = depth.min(), depth.max()
    if not high > low:
        return np.zeros(depth.shape, dtype=np.float32)
    return (depth - low) / (high - low) * np.float32(levels)


def gray(depth: np.ndarray) -> np.ndarray:
    """The original run.py's grey guide: min-max to 0..255, truncated to uint8 (near = white)."""
    return normalised(depth, 255.0).astype(np.uint8)


def rgba(depth: np.ndarray) -> np.ndarray:
    """``gray`` as R = G = B with alpha 255."""
    level = gray(depth)
    out = np.empty(level.shape + (4,), dtype=np.uint8)
    out[..., :3] = level[..., None]
    out[..., 3] = 255
    return out


def raw16(depth: np.ndarray) -> np.ndarray:
    """Min-max to 0..65535, rounded to uint16."""
    return np.rint(normalised(depth, 65535.0)).astype(np.uint16)


RENDERERS = {"gray": gray, "rgba": rgba, "raw16": raw16}


class DepthAnythingAnnotator(LearnedAnnotator):
    """Depth Anything V2 relative depth as a guide; one forward per batch of equal network input shapes."""

    name = "depth-anything"
    summary = "Depth (Depth Anything V2 small/base/large), near = white."
    #: 8.4 M network-input pixels (about 43,000 tokens): roughly 10 GB at fp32 with the large model
    #: (estimated from the head's 32-channel full-size maps and SDPA's memory-efficient CPU kernel).
    default_max_working_pixels = 1 << 23
    Options = DepthAnythingOptions
    options: DepthAnythingOptions
    checkpoints = _checkpoints()
    union_modes = (
        UnionMode("xinsir", "depth"),
        UnionMode("instantx", "depth"),
    )
    controlnets = (DEPTH_CONTROLNET,)

    # ------------------------------------------------------------------ loading

    def load(self) -> Any:
        """The selected checkpoint, loaded strictly (CPU, fp32): ``hf`` through ``from_hf_keys``,
        ``original`` as it is (its keys are the network's)."""
        from ..nets.depth_anything import builder, from_hf_keys
        from ..weights.load import load_checkpoint_into

        (name,) = type(self).checkpoint_names(self.options)
        declared = {checkpoint.name: checkpoint for checkpoint in type(self).checkpoints}[name]
        path = self.checkpoint_file(name)
        log.info("%s: loading %s", self.name, path)
        filters = (from_hf_keys,) if self.options.weights == "hf" else ()
        return load_checkpoint_into(builder(self.options.model), path, container=declared.container,
                                    key_filters=filters)

    def to_device(self, model: Any) -> Any:
        from ..nets.depth_anything import for_inference, to_channels_last

        model = for_inference(model).to(self.device, self.dtype).eval()  # folded in fp32, then cast
        return to_channels_last(model) if self.device.type in ("cpu", "cuda") else model

    # ------------------------------------------------------------------ sizes

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (height, width) for an image of that working size."""
        from ..nets.depth_anything import network_input_size

        return network_input_size(height, width, self.options.input_size)

    def check_network_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input size of a working image, refused (InputError) over the pixel limit."""
        net_h, net_w = self.network_size(height, width)
        limit = self.options.max_working_pixels or self.default_max_working_pixels
        if net_h * net_w > limit:
            raise InputError(
                None,
                f"{width}x{height} image: network input {net_w}x{net_h} at --input-size {self.options.input_size} "
                f"has {net_h * net_w:,} pixels, over the {self.name} limit of {limit:,} (the aspect ratio is too "
                f"extreme: crop the image, or use a smaller --input-size or raise --max-working-pixels)",
            )
        return net_h, net_w

    def batch_key(self, image: np.ndarray) -> Hashable:
        height, width = working_size(image.shape[0], image.shape[1], self.options.resolution)
        return self.network_size(height, width)

    def item_key(self, item: Any) -> Hashable:
        return tuple(item.shape)

    # ------------------------------------------------------------------ stages

    def prepare(self, image: np.ndarray) -> NetworkInput:
        """The normalised network input (float32, ImageNet mean/std) of one RGB uint8 image."""
        from ..imaging import resize_image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(None, f"{self.name} needs RGB uint8 images, got {image.dtype} of shape {image.shape}")
        if self.options.resolution > 0:  # the ControlNet resize of a strip is refused before it is made
            limit = self.options.max_working_pixels or self.default_max_working_pixels
            check_working_pixels(self.name, image.shape[0], image.shape[1], self.options.resolution, limit)
            image = resize_image(image, self.options.resolution)
        height, width = image.shape[:2]
        net_h, net_w = self.check_network_size(height, width)
        pixels = image.astype(np.float32) / np.float32(255.0)
        if (net_h, net_w) != (height, width):
            pixels = cv2.resize(pixels, (net_w, net_h), interpolation=cv2.INTER_CUBIC)
        pixels = (pixels - MEAN) / STD
        return NetworkInput(np.ascontiguousarray(pixels, dtype=np.float32), (height, width))

    def predict(self, items: list[NetworkInput]) -> list[np.ndarray]:
        """One forward on the stacked inputs, each depth resized (bilinear, align_corners=True) to its size."""
        import torch
        import torch.nn.functional as F

        batch = np.stack([item.pixels for item in items])
        with torch.inference_mode():
            depth = self.forward_tensor(batch)
            outputs = []
            for index, item in enumerate(items):
                one = depth[index : index + 1, None]
                if tuple(one.shape[2:]) != item.output_size:
                    one = F.interpolate(one, size=item.output_size, mode="bilinear", align_corners=True)
                outputs.append(one[0, 0].cpu().numpy())
        return outputs

    def forward_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """Relative depth (B, h, w) float32 on the device of normalised inputs (B, h, w, 3)."""
        import torch

        tensor = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).to(self.dtype)
        depth = self.model(tensor).float()
        self.check_finite(depth)
        return depth

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Relative depth (B, h, w) float32 of normalised network inputs (B, h, w, 3) float32."""
        import torch

        with torch.inference_mode():
            return self.forward_tensor(np.ascontiguousarray(images, dtype=np.float32)).cpu().numpy()

    def render(self, prediction: np.ndarray, item: Any) -> np.ndarray:
        return RENDERERS[self.options.format](prediction)

    def finish(self, item: NetworkInput, output: np.ndarray) -> np.ndarray:
        return self.render(output, item)
