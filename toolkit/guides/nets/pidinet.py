"""PiDiNet, the pixel-difference edge detector of "Pixel Difference Networks for Efficient Edge Detection"
(Su, Liu, Yu, Hu, Liao, Qiu, Pietikainen, Liu; ICCV 2021), in the configuration ControlNet's soft-edge
annotator uses: ``table5_pidinet.pth`` from ``lllyasviel/Annotators`` (the paper's table 5 model:
``carv4`` pixel-difference layout, 60 base channels, dilation module of 24 channels, spatial attention).

Written to load that checkpoint unchanged (after its ``module.`` prefix is stripped): the attribute names
below are its key layout (``init_block.weight``, ``block2_1.shortcut.bias``, ``dilations.0.conv2_3.weight``,
``attentions.1.conv1.bias``, ``conv_reduces.3.conv.weight``, ``classifier.weight``, ...).

Layout: a 3x3 stem (3 -> 60), four stages of residual blocks (3 blocks of 60 channels at full resolution;
then 4 blocks each of 120, 240, 240 channels, every stage opened by a 2x2 max-pool and a 1x1 shortcut).
A block is ``x + conv1x1(relu(depthwise3x3(x)))``. The depthwise convolutions (and the stem) of each stage
are pixel-difference convolutions, in the order central, angular, radial, vanilla (``carv4``):

* central (``cd``): ``sum_i w_i (x_i - x_center)``: a 3x3 kernel whose centre is ``w_center - sum(w)``;
* angular (``ad``): ``sum_i w_i (x_i - x_next(i))`` around the ring (clockwise): the kernel ``w - w[perm]``;
* radial (``rd``): the outer ring of a 5x5 window minus the inner ring, weighted by 8 of the 9 trained
  taps (the flattened ``weight[1:]``, as PiDiNet's code has it): a 5x5 kernel (padding 2);
* vanilla (``cv``): the 3x3 kernel itself.

Each is linear in its weights, so ``fold_pixel_differences()`` turns them, once after loading, into plain
convolutions (the paper's "convert" step); until then they are folded on every call (same results).

Each stage's output goes through a side head: the dilation module (ReLU, 1x1 to 24 channels, the sum of
four 3x3 convolutions of dilation 5, 7, 9, 11), spatial attention (ReLU, 1x1 to 4, 3x3 to 1, sigmoid; the
map is multiplied in) and a 1x1 reduction to one channel, bilinearly upsampled to the input size. A 1x1
classifier mixes the four maps; the output is its sigmoid. The side heads are computed on one-channel maps
(``reduce(x * attention) = attention * reduce_weights . x + bias``, exact up to rounding) and only the
fused output is returned: the reference also returns the sigmoid of each side map, which ControlNet's
annotator drops.

Input: (B, 3, H, W) in [0, 1], channels in BGR order (the reference annotator flips RGB images before the
network), H and W of at least 8 (three 2x2 max-pools, rounding down like ``MaxPool2d``). Output: (B, 1, H, W) edge probabilities.
Activations are kept in channels-last memory format, oneDNN's fast layout for the depthwise and 1x1
convolutions on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BASE_CHANNELS = 60
DILATION_CHANNELS = 24
ATTENTION_CHANNELS = 4
DILATIONS = (5, 7, 9, 11)
#: The pixel-difference kind of the stem and of each of the 15 blocks (table 5's ``carv4`` layout).
LAYOUT = ("cd", "ad", "rd", "cv") * 4

# Ring order of a 3x3 window, flattened row by row (0 1 2 / 3 4 5 / 6 7 8): the angular difference takes
# each tap minus its clockwise predecessor on the ring around the centre (the centre minus itself).
_ANGULAR_PARTNER = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# Radial difference: 8 of the 9 trained taps, the flattened weights[1:] (as PiDiNet defines it: tap 0 is
# unused, whatever its value), placed on the outer ring of a 5x5 kernel (positive) and on its inner ring
# (negative), both in row-major order; the centre is 0.
_RADIAL_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_RADIAL_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


def pixel_difference_kernel(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """The plain convolution kernel equal to pixel-difference convolution ``kind`` with 3x3 ``weight``
    (out, in, 3, 3): 3x3 for ``cv``/``cd``/``ad`` (padding 1), 5x5 for ``rd`` (padding 2)."""
    if kind == "cv":
        return weight
    if kind == "cd":
        kernel = weight.clone()
        kernel[:, :, 1, 1] -= weight.sum(dim=(2, 3))
        return kernel
    flat = weight.flatten(2)
    if kind == "ad":
        return (flat - flat[:, :, list(_ANGULAR_PARTNER)]).view_as(weight)
    if kind == "rd":
        kernel = flat.new_zeros(weight.shape[0], weight.shape[1], 25)
        ring = flat[:, :, 1:]
        kernel[:, :, list(_RADIAL_OUTER)] = ring
        kernel[:, :, list(_RADIAL_INNER)] = -ring
        return kernel.view(weight.shape[0], weight.shape[1], 5, 5)
    raise ValueError(f"unknown pixel-difference kind {kind!r} (cv, cd, ad or rd)")


class PixelDifferenceConv(nn.Module):
    """A bias-free pixel-difference convolution (stride 1, same size) holding its 3x3 ``weight`` as
    trained; ``folded()`` is the equivalent plain ``nn.Conv2d``."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, groups: int = 1) -> None:
        super().__init__()
        if kind not in ("cv", "cd", "ad", "rd"):
            raise ValueError(f"unknown pixel-difference kind {kind!r} (cv, cd, ad or rd)")
        self.kind = kind
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))

    @property
    def padding(self) -> int:
        return 2 if self.kind == "rd" else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = pixel_difference_kernel(self.kind, self.weight)
        return F.conv2d(x, kernel, padding=self.padding, groups=self.groups)

    @torch.no_grad()
    def folded(self) -> nn.Conv2d:
        kernel = pixel_difference_kernel(self.kind, self.weight)
        out_channels, in_per_group, size, _ = kernel.shape
        conv = nn.Conv2d(in_per_group * self.groups, out_channels, size, padding=self.padding,
                         groups=self.groups, bias=False, device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        return conv


class Block(nn.Module):
    """``x + conv2(relu(conv1(x)))``, conv1 a depthwise pixel-difference convolution; a downsampling block
    max-pools first and adds a 1x1 projection (``shortcut``) of the pooled input."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, downsample: bool = False) -> None:
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1: nn.Module = PixelDifferenceConv(kind, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = F.max_pool2d(x, 2)
        y = self.conv2(self.conv1(x).relu_())
        return y.add_(self.shortcut(x) if self.downsample else x)


class DilationModule(nn.Module):
    """CDCM: ReLU, 1x1 to ``channels`` (with bias), then the sum of four dilated 3x3 convolutions."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1)
        for index, dilation in enumerate(DILATIONS, start=1):
            setattr(self, f"conv2_{index}", nn.Conv2d(channels, channels, 3, padding=dilation,
                                                      dilation=dilation, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        total = self.conv2_1(x)
        for index in range(2, len(DILATIONS) + 1):
            total.add_(getattr(self, f"conv2_{index}")(x))
        return total


class SpatialAttention(nn.Module):
    """CSAM's attention map (B, 1, H, W): sigmoid(conv3x3(conv1x1(relu(x)))); CSAM multiplies it in."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, ATTENTION_CHANNELS, 1)
        self.conv2 = nn.Conv2d(ATTENTION_CHANNELS, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    """The 1x1 reduction of a side output to one channel (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """The table-5 PiDiNet (see the module doc); ``forward`` returns the fused edge probabilities."""

    def __init__(self) -> None:
        super().__init__()
        c = BASE_CHANNELS
        self.init_block: nn.Module = PixelDifferenceConv(LAYOUT[0], 3, c)
        stages = ((c, c, 3), (c, 2 * c, 4), (2 * c, 4 * c, 4), (4 * c, 4 * c, 4))
        layer = 1
        for stage, (in_channels, out_channels, blocks) in enumerate(stages, start=1):
            for index in range(1, blocks + 1):
                downsample = stage > 1 and index == 1
                block = Block(LAYOUT[layer], in_channels if downsample else out_channels, out_channels, downsample)
                setattr(self, f"block{stage}_{index}", block)
                layer += 1
        self.stage_channels = tuple(out_channels for _, out_channels, _ in stages)
        self.stage_blocks = tuple(blocks for _, _, blocks in stages)
        self.dilations = nn.ModuleList(DilationModule(ch, DILATION_CHANNELS) for ch in self.stage_channels)
        self.attentions = nn.ModuleList(SpatialAttention(DILATION_CHANNELS) for _ in self.stage_channels)
        self.conv_reduces = nn.ModuleList(MapReduce(DILATION_CHANNELS) for _ in self.stage_channels)
        self.classifier = nn.Conv2d(len(self.stage_channels), 1, 1)

    @torch.no_grad()
    def fold_pixel_differences(self) -> PiDiNet:
        """Replace every pixel-difference convolution by the plain convolution it equals (in place)."""
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, PixelDifferenceConv):
                    setattr(module, name, child.folded())
        return self

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each of the four stages."""
        x = self.init_block(x)
        outputs = []
        for stage, blocks in enumerate(self.stage_blocks, start=1):
            for index in range(1, blocks + 1):
                x = getattr(self, f"block{stage}_{index}")(x)
            outputs.append(x)
        return outputs

    def side_logits(self, stage: int, features: torch.Tensor) -> torch.Tensor:
        """A stage's one-channel edge logits before the classifier, at the stage's resolution:
        ``conv_reduce(dilated * attention) = attention * (weights . dilated) + bias``."""
        dilated = self.dilations[stage](features)
        attention = self.attentions[stage](dilated)
        reduce = self.conv_reduces[stage].conv
        reduced = F.conv2d(dilated, reduce.weight)
        return reduced.mul_(attention).add_(reduce.bias.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        x = x.contiguous(memory_format=torch.channels_last)
        weights = self.classifier.weight.flatten()
        logits = self.classifier.bias.view(1, 1, 1, 1).expand(x.shape[0], 1, height, width)
        for stage, features in enumerate(self.stages(x)):
            side = self.side_logits(stage, features)
            if side.shape[2:] != (height, width):
                side = F.interpolate(side, (height, width), mode="bilinear", align_corners=False)
            logits = logits + weights[stage] * side
        return torch.sigmoid(logits.contiguous())


def pidinet() -> PiDiNet:
    """The network of ``table5_pidinet.pth`` (pixel-difference convolutions not folded: load, then fold)."""
    return PiDiNet()
