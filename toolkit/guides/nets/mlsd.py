"""M-LSD, the "large" line-segment detector (Gu et al., "Towards Light-weight and Real-time Line Segment
Detection", AAAI 2022; Apache-2.0, NAVER Corp.), as ControlNet's mlsd annotator runs it.

Written to load ``mlsd_large_512_fp32.pth`` from ``lllyasviel/Annotators`` unchanged (a plain state dict,
loaded strictly): the attribute names and ``nn.Sequential`` indices below are the checkpoint's key layout
(``backbone.features.3.conv.1.0.weight``, ``block17.conv2.1.running_var``, ``block23.conv3.bias``, ...).

Layout of the network, for a (B, 4, H, W) input with H and W multiples of 16 (RGB / 127.5 - 1 and a
constant fourth channel, see ``guides.annotators.mlsd``):

* a MobileNetV2 trunk cut after its 96-channel stage (``backbone.features.0`` to ``13``), whose stride-2
  convolutions pad only at the bottom and right (one pixel, as TFLite does) and use no padding of their
  own; five of its stages feed the decoder: 16 channels at 1/2, 24 at 1/4, 32 at 1/8, 64 and 96 at 1/16;
* an FPN-like decoder: four "lateral" blocks (``block15``, ``17``, ``19``, ``21``: a 1x1 conv-BN-ReLU of
  the skip feature, concatenated with a 1x1 conv-BN-ReLU of the deeper map upsampled 2x, bilinear with
  aligned corners; ``block15`` joins two 1/16 maps and does not upsample) each followed by a "refine"
  block (``block16``, ..., ``22``: a residual 3x3 conv-BN-ReLU, then a 3x3 conv-BN-ReLU to 64 channels);
* a head (``block23``): a 3x3 conv-BN-ReLU with dilation 5, a 3x3 conv-BN-ReLU and a 1x1 convolution to
  16 maps at 1/2 resolution, of which the detector uses maps 7 to 15 (``forward`` returns those nine):
  map 7 is the line-centre logit, maps 8-11 the displacements (x, y of the start, x, y of the end, in
  1/2-resolution pixels) from a centre to its segment's two ends.

``prepare_for_inference`` turns a loaded network into the same function, faster: every batch norm folded
into the convolution before it, each activation fused with its convolution (one oneDNN call on the CPU)
and the head cut to the five maps the detector reads (``forward`` then returns those five: centre logit
and four displacements). The folded network has other keys: load first.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Taps of the trunk that feed the decoder (index in ``backbone.features``), shallowest first.
TRUNK_TAPS = (1, 3, 6, 10, 13)
#: (expansion, channels, blocks, first stride) of the trunk's inverted-residual stages (MobileNetV2's
#: first five; M-LSD drops the 160 and 320-channel ones).
TRUNK_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
STEM_CHANNELS = 32
#: The head's 16 maps: the detector reads from this one on (the first seven are unused).
FIRST_USED_MAP = 7
#: Maps the detector reads: centre logit, then start x, start y, end x, end y displacements.
USED_MAPS = 5
#: Sides the network maps to half their size exactly (four stride-2 stages whose maps must line up).
SIDE_MULTIPLE = 16


class ConvNormReLU6(nn.Sequential):
    """Convolution without bias, batch norm, ReLU6 (keys ``0.weight``, ``1.*``). Stride 2: the input is
    padded by one pixel at the bottom and right only and the convolution adds no padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = 0 if stride == 2 else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (unless the ratio is 1), 3x3 depthwise, 1x1 linear projection
    with batch norm (keys ``conv.N.*``); a skip connection where the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvNormReLU6(in_channels, hidden, kernel_size=1))
        layers += [
            ConvNormReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out.add_(x) if self.residual else out


class Trunk(nn.Module):
    """The MobileNetV2 trunk (``features.0`` stem to ``features.13``); returns the five tapped maps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormReLU6(4, STEM_CHANNELS, stride=2)]
        channels = STEM_CHANNELS
        for expansion, out_channels, blocks, stride in TRUNK_STAGES:
            for index in range(blocks):
                layers.append(InvertedResidual(channels, out_channels, stride if index == 0 else 1, expansion))
                channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TRUNK_TAPS:
                taps.append(x)
        return taps


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    """Convolution with bias, batch norm, ReLU (keys ``0.*``, ``1.*``); "same" padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size - 1) // 2, dilation=dilation),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Lateral(nn.Module):
    """Joins a skip feature (``conv2``, 1x1) with the deeper map (``conv1``, 1x1, then upsampled 2x,
    bilinear with aligned corners, unless ``upsample`` is False): ``cat(skip, deeper)``."""

    def __init__(self, skip_channels: int, deep_channels: int, out_channels: int = 64, upsample: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(deep_channels, out_channels, 1)
        self.conv2 = _conv_norm_relu(skip_channels, out_channels, 1)
        self.upsample = upsample

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upsample:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class Refine(nn.Module):
    """``conv2(conv1(x) + x)``: two 3x3 conv-BN-ReLU, the first one residual."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(channels, channels, 3)
        self.conv2 = _conv_norm_relu(channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x).add_(x))


class Head(nn.Module):
    """3x3 conv-BN-ReLU with dilation 5, 3x3 conv-BN-ReLU, 1x1 convolution to the output maps."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_norm_relu(channels, channels, 3, dilation=5)
        self.conv2 = _conv_norm_relu(channels, channels, 3)
        self.conv3 = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MlsdLarge(nn.Module):
    """M-LSD large; ``forward`` maps (B, 4, H, W) to (B, 9, H/2, W/2): the head's maps 7-15 (5 maps once
    ``prepare_for_inference`` has run)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Trunk()
        self.block15 = Lateral(64, 96, upsample=False)
        self.block16 = Refine(128, 64)
        self.block17 = Lateral(32, 64)
        self.block18 = Refine(128, 64)
        self.block19 = Lateral(24, 64)
        self.block20 = Refine(128, 64)
        self.block21 = Lateral(16, 64)
        self.block22 = Refine(128, 64)
        self.block23 = Head(64, 16)
        self.first_output = FIRST_USED_MAP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half, quarter, eighth, sixteenth, deepest = self.backbone(x)
        x = self.block16(self.block15(sixteenth, deepest))
        x = self.block18(self.block17(eighth, x))
        x = self.block20(self.block19(quarter, x))
        x = self.block22(self.block21(half, x))
        out = self.block23(x)
        return out[:, self.first_output:] if self.first_output else out

    @torch.no_grad()
    def prepare_for_inference(self) -> MlsdLarge:
        """Fold every batch norm into its convolution (eval statistics), fuse the activations
        (``FoldedConv``) and keep only the five head maps the detector reads; in place, once (the network
        must be loaded). Returns ``self``."""
        self.eval()
        if self.prepared:
            return self
        _fold(self)
        head = self.block23.conv3
        trimmed = nn.Conv2d(head.in_channels, USED_MAPS, 1).to(head.weight.device, head.weight.dtype)
        trimmed.weight.copy_(head.weight[FIRST_USED_MAP:FIRST_USED_MAP + USED_MAPS])
        trimmed.bias.copy_(head.bias[FIRST_USED_MAP:FIRST_USED_MAP + USED_MAPS])
        self.block23.conv3 = FoldedConv(trimmed)
        self.first_output = 0
        return self

    @property
    def prepared(self) -> bool:
        """Whether ``prepare_for_inference`` has run (``forward`` returns the five used maps)."""
        return self.first_output == 0


_ACTIVATIONS = {None: ("none", []), "relu": ("relu", []), "relu6": ("hardtanh", [0.0, 6.0])}
@functools.cache
def _fused_kernel_available(dtype: torch.dtype) -> bool:
    """Whether this build has oneDNN's fused convolution and this CPU can run it in ``dtype`` (its bf16
    path needs AVX512-BF16/AVX-NE-CONVERT or AVX512BW/VL/DQ; an AVX2-only CPU refuses it at run time)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _use_fused_kernel(x: torch.Tensor) -> bool:
    """Whether oneDNN's convolution with a fused activation (``mkldnn._convolution_pointwise``, the kernel
    PyTorch's own compiler uses on the CPU) can run ``x``: CPU, fp32 or bf16 where the CPU supports it,
    and present in this build; else ``FoldedConv`` takes the plain ``conv2d`` path."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return False
    return _fused_kernel_available(x.dtype)


class FoldedConv(nn.Module):
    """A convolution with its batch norm folded in and its activation (None, ``relu`` or ``relu6``)
    applied to its output: one oneDNN call on the CPU (activation as a post-op: the same values as a
    separate pass, without another trip through memory), else ``conv2d`` then the activation in place.
    ``pad_bottom_right``: as if the input were first padded by one pixel at the bottom and right (the
    stride-2 layers), done with a 4x4 kernel instead (exact, and about 3x faster for the depthwise ones)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None, activation: str | None = None,
                 pad_bottom_right: bool = False) -> None:
        super().__init__()
        folded = fuse_conv_bn_eval(conv, norm) if norm is not None else conv
        weight = folded.weight.detach()
        bias = folded.bias if folded.bias is not None else torch.zeros(folded.out_channels, dtype=weight.dtype)
        self.stride, self.padding = list(conv.stride), list(conv.padding)  # type: ignore[arg-type]
        if pad_bottom_right:
            # pad (0, 1, 0, 1), then a 3x3 kernel without padding == a 4x4 kernel whose first row and column
            # are zero, padded by 1 on every side: the same taps, without copying the input into a padded one
            assert weight.shape[2:] == (3, 3) and self.padding == [0, 0] and conv.dilation == (1, 1)
            weight = F.pad(weight, (1, 0, 1, 0))
            self.padding = [1, 1]
        self.weight = nn.Parameter(weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_fused_kernel(x):
            attr, scalars = _ACTIVATIONS[self.activation]
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups, attr, scalars, "")
        out = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation == "relu":
            return out.relu_()
        if self.activation == "relu6":
            return out.clamp_(0.0, 6.0)
        return out


def _fold(module: nn.Module) -> None:
    """Replace, below ``module``, each conv-BN-activation ``nn.Sequential`` and each (Conv2d, BatchNorm2d)
    pair of a sequence by a ``FoldedConv`` (and an identity)."""
    for name, child in list(module.named_children()):
        if isinstance(child, ConvNormReLU6):
            setattr(module, name, FoldedConv(child[0], child[1], "relu6", pad_bottom_right=child.stride == 2))
        elif (isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[0], nn.Conv2d)
              and isinstance(child[1], nn.BatchNorm2d) and type(child[2]) is nn.ReLU):
            setattr(module, name, FoldedConv(child[0], child[1], "relu"))
        else:
            _fold(child)
    if isinstance(module, nn.Sequential):
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[index] = FoldedConv(conv, norm)
                module[index + 1] = nn.Identity()


def mlsd_large() -> MlsdLarge:
    """An M-LSD large network to load ``mlsd_large_512_fp32.pth`` into (strictly)."""
    return MlsdLarge()
