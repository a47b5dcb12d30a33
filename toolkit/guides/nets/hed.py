"""lllyasviel's HED network for ControlNet 1.1's soft-edge annotator (``ControlNetHED.pth``): an
Apache-2.0 re-implementation of holistically-nested edge detection (Xie and Tu, 2015) on RGB input.

Written to load ``ControlNetHED.pth`` from ``lllyasviel/Annotators`` unchanged: the module names and
``nn.Sequential`` indices below are the checkpoint's key layout (``norm``, ``block1.convs.0.weight``,
``block3.projection.bias``, ...).

Layout: a learned per-channel offset ``norm`` (1, 3, 1, 1) is subtracted from the input (RGB, 0..255, not
divided by 255); five VGG-like stages of 3x3 convolutions with ReLU (64 x 2, 128 x 2, 256 x 3, 512 x 3,
512 x 3 channels), each stage after the first starting with a 2x2 max pool; every stage ends in a 1x1
projection to one channel, its "side output" (edge logits at 1, 1/2, 1/4, 1/8 and 1/16 of the input size).

``HedNetwork.side_outputs`` gives those five maps. ``HedNetwork.forward`` fuses them as ControlNet's
annotator does: each side output resized bilinearly (half-pixel centres, the sampling of OpenCV's
``INTER_LINEAR``) to the input size, the five averaged, then a sigmoid: edge probabilities (B, H, W).
ControlNet does that fusion in NumPy (float32 resizes, a float64 sigmoid); here it stays on the device, in
float32.

Speed on the CPU: ``to_channels_last`` puts the weights in channels-last memory format; with an input in
that format (``forward`` converts it) every convolution runs on oneDNN's fast NHWC kernels, about 0.75x the
time of the plain NCHW network on 1-2 cores, exact up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: (input channels, output channels, convolutions) of the five stages.
STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
#: Each stage after the first halves the size: the coarsest side output is 1/16 of the input.
DOWNSAMPLING = 2 ** (len(STAGES) - 1)


class SideOutputStage(nn.Module):
    """(max pool 2x2 unless first,) ``convs`` (3x3, padding 1, each followed by a ReLU), then ``projection``
    (1x1 to one channel); keys ``convs.{i}.*`` and ``projection.*``."""

    def __init__(self, in_channels: int, out_channels: int, convolutions: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.convs = nn.Sequential(*(
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1)
            for index in range(convolutions)
        ))
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features for the next stage, side output logits)."""
        if self.pool:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu_(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    """ControlNet's HED (``ControlNetHED_Apache2``'s architecture and keys). Input: RGB 0..255 floats
    (B, 3, H, W), H and W at least 16 (four 2x2 poolings); other sizes are pooled with floor rounding."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for index, (in_channels, out_channels, convolutions) in enumerate(STAGES, start=1):
            self.add_module(f"block{index}", SideOutputStage(in_channels, out_channels, convolutions, pool=index > 1))

    def stages(self) -> list[SideOutputStage]:
        return [getattr(self, f"block{index}") for index in range(1, len(STAGES) + 1)]

    def side_outputs(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The five side outputs (B, 1, h, w) of ``image`` (RGB 0..255), finest first."""
        x = image - self.norm
        outputs = []
        for stage in self.stages():
            x, side = stage(x)
            outputs.append(side)
        return outputs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Edge probabilities (B, H, W) float32 of ``image`` (B, 3, H, W) RGB 0..255: the side outputs
        resized bilinearly to H x W, averaged, through a sigmoid."""
        height, width = image.shape[2:]
        if image.device.type in ("cpu", "cuda"):
            image = image.contiguous(memory_format=torch.channels_last)
        total: torch.Tensor | None = None
        for side in self.side_outputs(image):
            side = side.float()
            if side.shape[2:] != (height, width):
                side = F.interpolate(side, size=(height, width), mode="bilinear", align_corners=False)
            total = side if total is None else total.add_(side)
        assert total is not None
        return torch.sigmoid_(total[:, 0].div_(len(STAGES)))


def to_channels_last(model: HedNetwork) -> HedNetwork:
    """``model`` with its convolution weights in channels-last memory format (oneDNN's fast layout)."""
    return model.to(memory_format=torch.channels_last)


def hed_network() -> HedNetwork:
    """An untrained ``HedNetwork`` (the factory ``load_checkpoint_into`` builds)."""
    return HedNetwork()
