"""The line-art generator of "Learning to generate line drawings that convey geometry and semantics"
(Chan, Durand, Isola, CVPR 2022), as trained by lllyasviel for ControlNet's lineart annotator.

Written to load ``sk_model.pth`` (fine) and ``sk_model2.pth`` (coarse) from ``lllyasviel/Annotators``
unchanged: the module names and ``nn.Sequential`` indices below are the checkpoints' key layout
(``model0.1.weight``, ``model2.0.conv_block.5.bias``, ...). Instance normalisation has no learned
parameters, so padding, norm and activation layers hold no keys but keep their index slots.

Layout of ``Generator(3, 1, 3)``: 7x7 reflect-padded stem (64 channels), two stride-2 3x3 downsamples
(128, 256), three residual blocks at 1/4 resolution, two transposed-conv upsamples (128, 64), a
7x7 reflect-padded head to one channel and a sigmoid. Input: RGB in [0, 1], (B, 3, H, W) with H and W
multiples of 4 for an output of the input's size. Output: (B, 1, H, W) in [0, 1], 1 = paper white.

On the CPU, ``forward`` computes the same function as the layer stack with CPU-friendly substitutions
(exact up to float rounding; parity with the reference network is tested to 1e-4), about 0.65x the
time of the plain stack on 1-2 cores:

* every activation in channels-last memory format (oneDNN's fast layout: the stem, the stride-2 and
  the transposed convolutions run 1.5-2x faster than on NCHW), with
* instance norm computed in place on channels-last maps (``instance_norm_cl``: PyTorch's own
  channels-last norm kernels are fast but lose about 1e-4 relative accuracy), fused with the ReLU;
* the 7x7 head with a single output channel as a 1x7 convolution to 7 channels (one per kernel row)
  whose rows are summed at their offsets: a 1-channel 7x7 convolution is a poor fit for oneDNN.

On other devices (CUDA, MPS) ``forward`` is the plain layer stack, ``reference_forward``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.Module:
    # Affine-free, statistics-free instance norm: the checkpoints hold no norm parameters.
    return nn.InstanceNorm2d(channels)


class ResidualBlock(nn.Module):
    """x + (pad, conv3x3, norm, relu, pad, conv3x3, norm)(x); keys ``conv_block.{1,5}.*``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            _norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    """The informative-drawings generator; ``Generator(3, 1, 3)`` is the lineart network."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, residual_blocks: int = 3, sigmoid: bool = True) -> None:
        super().__init__()
        width = 64
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), _norm(width), nn.ReLU(inplace=True)
        )
        down: list[nn.Module] = []
        for factor in (1, 2):
            down += [
                nn.Conv2d(width * factor, width * factor * 2, 3, stride=2, padding=1),
                _norm(width * factor * 2),
                nn.ReLU(inplace=True),
            ]
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*(ResidualBlock(width * 4) for _ in range(residual_blocks)))
        up: list[nn.Module] = []
        for factor in (4, 2):
            up += [
                nn.ConvTranspose2d(width * factor, width * factor // 2, 3, stride=2, padding=1, output_padding=1),
                _norm(width * factor // 2),
                nn.ReLU(inplace=True),
            ]
        self.model3 = nn.Sequential(*up)
        head: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7)]
        if sigmoid:
            head.append(nn.Sigmoid())
        self.model4 = nn.Sequential(*head)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer stack as defined (slower on CPU; kept for tests and debugging)."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.reference_forward(x)
        h = x if x.is_contiguous(memory_format=torch.channels_last) else x.contiguous(memory_format=torch.channels_last)
        stem = self.model0[1]
        h = instance_norm_cl(stem(F.pad(h, (3, 3, 3, 3), mode="reflect")), relu=True)
        h = instance_norm_cl(self.model1[0](h), relu=True)
        h = instance_norm_cl(self.model1[3](h), relu=True)
        for block in self.model2:
            conv_a, conv_b = block.conv_block[1], block.conv_block[5]
            r = instance_norm_cl(conv_a(F.pad(h, (1, 1, 1, 1), mode="reflect")), relu=True)
            h = h + instance_norm_cl(conv_b(F.pad(r, (1, 1, 1, 1), mode="reflect")), relu=False)
        h = instance_norm_cl(self.model3[0](h), relu=True)
        h = instance_norm_cl(self.model3[3](h), relu=True)
        out = _single_channel_conv(h, self.model4[1], pad=3)
        return torch.sigmoid_(out) if len(self.model4) > 2 else out


def instance_norm_cl(h: torch.Tensor, relu: bool, eps: float = 1e-5) -> torch.Tensor:
    """Instance norm (no affine) of a channels-last map, in place, optionally followed by ReLU.

    PyTorch's CPU group/batch norm kernels for channels-last sum each channel's values sequentially
    and in one pass (sum and sum of squares), which loses about 1e-4 relative accuracy on a 512x512
    map. Here the statistics are two-level sums (blocks of at most 256 pixels in fp32, the block sums
    in fp64) and the variance is taken of the centred values: as accurate as the reference's instance
    norm, at about the cost of one group norm pass. ``h`` must be a fresh tensor (it is overwritten;
    the result is ``h`` itself when ``h`` is channels-last, else a channels-last copy).
    """
    h, scale = centre_channels(h, eps)
    flat = h.permute(0, 2, 3, 1).view(h.shape[0], -1, h.shape[1])
    flat.mul_(scale.to(h.dtype))
    if relu:
        flat.relu_()
    return h


def centre_channels(h: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics of ``instance_norm_cl``: ``h`` (fresh; a channels-last copy if it is not channels-last)
    with each channel's mean subtracted in place, and ``1 / sqrt(variance + eps)`` per channel, (B, 1, C)
    in fp64. Block sums in fp32 (also for bf16/fp16 maps), the sum of the block sums in fp64."""
    if not h.is_contiguous(memory_format=torch.channels_last):
        h = h.contiguous(memory_format=torch.channels_last)
    batch, channels, height, width = h.shape
    pixels = height * width
    block = math.gcd(pixels, 256)
    flat = h.permute(0, 2, 3, 1).view(batch, pixels, channels)
    blocks = flat.view(batch, pixels // block, block, channels)
    mean = blocks.sum(dim=2, dtype=torch.float32).double().sum(dim=1, keepdim=True).div_(pixels)
    flat.sub_(mean.to(h.dtype))
    norms = torch.linalg.vector_norm(blocks, dim=2, dtype=torch.float32).double()
    return h, norms.square_().sum(dim=1, keepdim=True).div_(pixels).add_(eps).rsqrt_()


def _single_channel_conv(h: torch.Tensor, conv: nn.Conv2d, pad: int) -> torch.Tensor:
    """``conv(reflect_pad(h, pad))`` for a square-kernel conv with one output channel, done row by row.

    A k x k kernel with one output is k row kernels (1 x k), one per kernel row: a 1 x k convolution to
    k channels (a shape oneDNN runs well) gives every row's contribution, and the output is their sum,
    each shifted down by its row index.
    """
    out_channels, channels, kh, kw = conv.weight.shape
    if out_channels != 1 or conv.stride != (1, 1) or conv.padding != (0, 0) or conv.dilation != (1, 1) or kh != kw:
        return conv(F.pad(h, (pad,) * 4, mode="reflect"))
    height = h.shape[2]
    rows = conv.weight[0].permute(1, 0, 2).unsqueeze(2)  # (kh, channels, 1, kw): kernel row ky as an output channel
    per_row = F.conv2d(F.pad(h, (pad,) * 4, mode="reflect"), rows)  # (B, kh, H + kh - 1, W)
    out = per_row[:, 0:1, 0:height].clone()
    if conv.bias is not None:
        out += conv.bias.view(1, 1, 1, 1)
    for ky in range(1, kh):
        out += per_row[:, ky : ky + 1, ky : ky + height]
    return out


def lineart_generator() -> Generator:
    """The network of ``sk_model.pth`` / ``sk_model2.pth``."""
    return Generator(3, 1, 3)
