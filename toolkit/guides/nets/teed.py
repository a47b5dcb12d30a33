"""TEED, the "Tiny and Efficient Edge Detector" (Soria, Pomboza-Junez, Sappa, ICCV workshops 2023): a
58K-parameter edge network, the one of controlnet_aux's ``TEEDdetector`` (``fal-ai/teed`` ``5_model.pth``)
and, with MistoLine's retrained weights (``MTEED.pth``), of ``AnylineDetector``.

Written to load those files unchanged: the module names below are the checkpoints' key layout
(``block_1.conv1.weight``, ``dblock_3.denselayer1.conv2.bias``, ``up_block_3.features.5.weight``,
``block_cat.DWconv1.weight``, ...). Activations hold no keys.

Layout (input RGB in 0..255, no normalisation, sides multiples of 4; the annotators pad to multiples of 8):

* ``block_1``: 3x3 stride-2 conv to 16 channels, Smish, 3x3 conv, Smish (1/2 resolution);
* ``block_2``: 3x3 conv to 32, Smish, 3x3 conv (1/2), then a 3x3 stride-2 max pool (1/4), to which the
  stride-2 1x1 projection of ``block_1`` (``side_1``) is added;
* ``dblock_3``: one dense layer at 1/4 on (that sum, the 1x1 projection ``pre_dense_3`` of the pooled map):
  ``0.5 * (conv3x3_pad0(Smish(conv3x3_pad2(Smish(a)))) + b)``, 48 channels;
* three upsampling heads (``up_block_{1,2,3}``: 1x1 conv, Smish, stride-2 transposed conv, once from 1/2,
  twice from 1/4) give one full-resolution edge logit map each;
* ``block_cat`` ("double fusion") fuses the three: depthwise 3x3 conv of Smish(maps) to 24 channels
  (``a``), depthwise 3x3 conv of Smish(a) (``b``), ``Smish(sum over channels of (a + b))``.

``forward`` returns the four logit maps (three heads, fusion), (B, 1, H, W) each, as the reference does.

Smish (Wang, Ren, Wang 2022) is ``x * tanh(log(1 + sigmoid(x)))``. With ``s = sigmoid(x)``,
``tanh(log(1 + s)) = ((1 + s)^2 - 1) / ((1 + s)^2 + 1) = s (s + 2) / (s (s + 2) + 2)``: one exponential
instead of three transcendental functions (equal up to float rounding). The fusion's channel sum of the
second depthwise convolution is one 24-to-1 convolution (a depthwise conv summed over its channels), so its
24 full-resolution output channels are never stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def smish(x: torch.Tensor) -> torch.Tensor:
    """``x * tanh(log(1 + sigmoid(x)))``, computed as ``x * s (s + 2) / (s (s + 2) + 2)``, ``s = sigmoid(x)``."""
    t = torch.sigmoid(x)
    t.mul_(t + 2)  # s (s + 2)
    return t.div_(t + 2).mul_(x)  # two full-size temporaries instead of five


class DoubleConv(nn.Module):
    """``conv1`` (3x3, optionally strided), Smish, ``conv2`` (3x3), and Smish when ``last_activation``."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 last_activation: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, padding=1)
        self.last_activation = last_activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(smish(self.conv1(x)))
        return smish(x) if self.last_activation else x


class Projection(nn.Module):
    """A 1x1 convolution (key ``conv``), optionally strided."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DenseLayer(nn.Module):
    """``0.5 * (conv2(Smish(conv1(Smish(a)))) + b)`` on a pair ``(a, b)``; conv1 pads by 2, conv2 by 0."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=2)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.conv2(smish(self.conv1(smish(a)))) + b)


class DenseBlock(nn.Module):
    """TEED's dense block: one ``DenseLayer`` (key ``denselayer1``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.denselayer1 = DenseLayer(in_channels, out_channels)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.denselayer1(a, b)


class Smish(nn.Module):
    """Smish as a module (a slot in ``UpBlock.features``; no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


class UpBlock(nn.Module):
    """``stages`` x (1x1 conv, Smish, stride-2 transposed conv): 16 channels between stages, 1 at the end.

    Kernel 2 (padding 0) for one stage, kernel 4 (padding 1) for two, as the checkpoints were trained.
    """

    _PADDING = {1: 0, 2: 1}

    def __init__(self, in_channels: int, stages: int) -> None:
        super().__init__()
        kernel = 2**stages
        layers: list[nn.Module] = []
        for index in range(stages):
            out_channels = 1 if index == stages - 1 else 16
            layers += [
                nn.Conv2d(in_channels, out_channels, 1),
                Smish(),
                nn.ConvTranspose2d(out_channels, out_channels, kernel, stride=2, padding=self._PADDING[stages]),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DoubleFusion(nn.Module):
    """The fusion of the three head maps into one (keys ``DWconv1`` 3 -> 24 grouped, ``DWconv2`` depthwise 24)."""

    def __init__(self, in_channels: int = 3, expand: int = 8) -> None:
        super().__init__()
        channels = in_channels * expand
        self.DWconv1 = nn.Conv2d(in_channels, channels, 3, padding=1, groups=in_channels)
        self.DWconv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.DWconv1(smish(x))
        # sum_c DWconv2(Smish(first))_c is one convolution from 24 channels to 1 with DWconv2's kernels.
        second = self.DWconv2
        summed_kernel = second.weight.transpose(0, 1)  # (1, 24, 3, 3)
        summed_bias = second.bias.sum().reshape(1) if second.bias is not None else None
        fused = F.conv2d(smish(first), summed_kernel, summed_bias, padding=1)
        return smish(fused + first.sum(dim=1, keepdim=True))


class TED(nn.Module):
    """TEED; ``forward`` gives the logit maps of the three heads and of the fusion, (B, 1, H, W) each."""

    def __init__(self) -> None:
        super().__init__()
        self.block_1 = DoubleConv(3, 16, 16, stride=2)
        self.block_2 = DoubleConv(16, 32, 32, last_activation=False)
        self.dblock_3 = DenseBlock(32, 48)
        self.side_1 = Projection(16, 32, stride=2)
        self.pre_dense_3 = Projection(32, 48)
        self.up_block_1 = UpBlock(16, 1)
        self.up_block_2 = UpBlock(32, 1)
        self.up_block_3 = UpBlock(48, 2)
        self.block_cat = DoubleFusion(3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"TEED needs (B, 3, H, W) with H and W multiples of 4, got {tuple(x.shape)}")
        block_1 = self.block_1(x)
        block_2 = self.block_2(block_1)
        pooled = F.max_pool2d(block_2, kernel_size=3, stride=2, padding=1)
        block_3 = self.dblock_3(pooled + self.side_1(block_1), self.pre_dense_3(pooled))
        heads = [self.up_block_1(block_1), self.up_block_2(block_2), self.up_block_3(block_3)]
        return [*heads, self.block_cat(torch.cat(heads, dim=1))]

    def edge_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of the four logit maps, (B, H, W): what the detectors turn into the edge map
        (``sigmoid``), summed in the reference's order (heads 1, 2, 3, then the fusion)."""
        maps = self.forward(x)
        total = maps[0][:, 0] + maps[1][:, 0]
        total += maps[2][:, 0]
        total += maps[3][:, 0]
        return total.div_(4)


def teed_network() -> TED:
    """The network of ``5_model.pth`` and ``MTEED.pth``."""
    return TED()
