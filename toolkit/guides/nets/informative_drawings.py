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
"""

from __future__ import annotations

import torch
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def lineart_generator() -> Generator:
    """The network of ``sk_model.pth`` / ``sk_model2.pth``."""
    return Generator(3, 1, 3)
