"""The pix2pix-style U-Net generator of Anime2Sketch (Xiang et al., "Adversarial Open Domain Adaptation
for Sketch-to-Photo Synthesis", WACV 2022), shipped by lllyasviel as ``netG.pth`` for ControlNet's
anime line-art annotator.

Written to load ``netG.pth`` from ``lllyasviel/Annotators`` (after its ``module.`` prefixes are
stripped): the module names and ``nn.Sequential`` indices below are the checkpoint's key layout
(``model.model.0.weight``, ``model.model.1.model.1.weight``, ``model.model.1.model.3.model.5.bias``, ...).
Instance normalisation has no learned parameters, so activation and norm layers hold no keys but keep
their index slots.

Layout of ``UnetGenerator(3, 1, 8, 64)``: eight levels, each a 4x4 stride-2 convolution down and a 4x4
stride-2 transposed convolution up, channels 64, 128, 256, 512, 512, 512, 512, 512 from the outside in
(about 54.4 M parameters). Every level but the outermost returns its input next to its up path
(a skip connection, concatenated on channels), so each transposed convolution takes twice the channels
its level's down convolution made. One level (``UnetBlock``), from the outside in:

* outermost: ``[conv, inner level, ReLU, transposed conv, tanh]`` (no skip, no norm);
* middle: ``[LeakyReLU(0.2), conv, norm, inner level, ReLU, transposed conv, norm]``;
* innermost: ``[LeakyReLU(0.2), conv, ReLU, transposed conv, norm]`` (1/256 of the input's size).

Input: RGB in [-1, 1], (B, 3, H, W) with H and W multiples of 256 (the innermost map is H/256 x W/256;
norms need more than one pixel at 1/128). Output: (B, 1, H, W) in [-1, 1], 1 = paper white.

A quirk of the original, reproduced: its LeakyReLU runs in place on the level's input *before* that
input is concatenated as the skip, so the skip carries ``leaky_relu(x)``, not ``x``. The parent's
ReLU comes next, and ``relu(leaky_relu(x)) == relu(x)`` exactly, which ``forward`` uses.

On the CPU, ``forward`` computes the same function as the layer stack with CPU-friendly substitutions
(exact up to float rounding; parity with the reference network is tested):

* every activation in channels-last memory format (oneDNN's fast layout: measured up to 1.7x faster
  than NCHW for these 4x4 stride-2 and transposed convolutions, never slower);
* every convolution's weights reordered once into oneDNN's blocked layout (``pack_weights``,
  ``PackedWeights``): PyTorch otherwise reorders 217 MB of weights on every call, which costs more
  than the arithmetic at the deep levels (2 x 2 to 32 x 32 maps);
* instance norm computed in place on channels-last maps
  (``guides.nets.informative_drawings.instance_norm_cl``, as accurate as PyTorch's NCHW norm), fused with
  the parent level's ReLU;
* the outermost transposed convolution (one output channel, a poor fit for oneDNN) as a 2x2
  convolution to four channels, one per output phase, interleaved (``single_channel_transposed_conv``);
* the parent's ReLU applied to the two halves of the concatenation before it is made
  (``cat(relu(x), relu(up))``), so no activation is rewritten after the copy.

On other devices (CUDA, MPS) ``forward`` is the plain layer stack, ``reference_forward``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .informative_drawings import centre_channels, instance_norm_cl

log = logging.getLogger(__name__)

NETWORK_MULTIPLE = 256
"""Sides the eight-level generator takes (2 ** 8): the working image is resized to these."""


def _norm(channels: int) -> nn.Module:
    # Affine-free, statistics-free instance norm: the checkpoint holds no norm parameters.
    return nn.InstanceNorm2d(channels)


class UnetBlock(nn.Module):
    """One level of the U-Net (see the module docstring); ``inner`` is the next level in, if any."""

    def __init__(self, outer_channels: int, inner_channels: int, in_channels: int | None = None,
                 inner: UnetBlock | None = None, outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        self.innermost = inner is None
        in_channels = outer_channels if in_channels is None else in_channels
        down = nn.Conv2d(in_channels, inner_channels, 4, stride=2, padding=1)
        # The up path takes the inner level's output: its down map and its up map, concatenated.
        up_in = inner_channels if self.innermost else inner_channels * 2
        up = nn.ConvTranspose2d(up_in, outer_channels, 4, stride=2, padding=1)
        layers: list[nn.Module]
        if outermost:
            assert inner is not None, "the outermost level needs an inner level"
            layers = [down, inner, nn.ReLU(inplace=True), up, nn.Tanh()]
        elif inner is None:
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(inplace=True), up, _norm(outer_channels)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner_channels), inner, nn.ReLU(inplace=True), up,
                      _norm(outer_channels)]
        self.model = nn.Sequential(*layers)

    @property
    def down(self) -> nn.Conv2d:
        return self.model[0] if self.outermost else self.model[1]

    @property
    def up(self) -> nn.ConvTranspose2d:
        return self.model[3] if self.outermost or self.innermost else self.model[5]

    @property
    def inner(self) -> UnetBlock | None:
        if self.innermost:
            return None
        return self.model[1] if self.outermost else self.model[3]

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The level as the original computes it: ``cat(leaky_relu(x), up_path(x))`` (see the module
        docstring for why the skip is ``leaky_relu(x)``), or the output of the outermost level."""
        if self.outermost:
            h = self.down(x)
            h = self.inner.reference_forward(h)
            return torch.tanh(self.up(F.relu(h)))
        skip = F.leaky_relu(x, 0.2)
        h = self.down(skip)
        if self.innermost:
            h = self.up(F.relu(h))
        else:
            h = self.inner.reference_forward(F.instance_norm(h))
            h = self.up(F.relu(h))
        return torch.cat([skip, F.instance_norm(h)], 1)

    def cpu_forward(self, x: torch.Tensor, packed: PackedWeights) -> torch.Tensor:
        """``relu`` of this level's output for a channels-last ``x`` (not the outermost level): what the
        parent's transposed convolution takes."""
        h = packed.down(self.down, F.leaky_relu(x, 0.2))
        if self.innermost:
            h = packed.up(self.up, h.relu_())
        else:
            h = packed.up(self.up, self.inner.cpu_forward(instance_norm_cl(h, relu=False), packed))
        # The concatenation, written in place: relu(x), then relu(norm(h)) straight from the norm.
        batch, channels, height, width = x.shape
        out = torch.empty((batch, channels + h.shape[1], height, width), dtype=h.dtype, device=h.device,
                          memory_format=torch.channels_last)
        torch.clamp_min(x, 0, out=out[:, :channels])
        _instance_norm_relu_into(h, out[:, channels:])
        return out


def _instance_norm_relu_into(h: torch.Tensor, out: torch.Tensor, eps: float = 1e-5) -> None:
    """``out = relu(instance_norm(h))`` for a fresh channels-last ``h`` (overwritten), written into ``out``
    (a view of the same shape, e.g. a channel slice of a concatenation).

    Statistics as ``instance_norm_cl`` takes them (two-level sums, the variance of the centred values:
    as accurate as PyTorch's NCHW norm); the ReLU comes before the scaling (``relu(v) * s == relu(v * s)``
    for ``s > 0``), so the last pass writes the result where it belongs.
    """
    h, scale = centre_channels(h, eps)  # (B, 1, C)
    batch, channels = h.shape[:2]
    h.relu_()
    torch.mul(h, scale.to(h.dtype).view(batch, channels, 1, 1), out=out)


class UnetGenerator(nn.Module):
    """The U-Net generator; ``UnetGenerator(3, 1, 8, 64)`` is the anime line-art network (``netG.pth``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, levels: int = 8, width: int = 64) -> None:
        super().__init__()
        assert levels >= 5, "the generator has at least five levels"
        block = UnetBlock(width * 8, width * 8)  # innermost
        for _ in range(levels - 5):
            block = UnetBlock(width * 8, width * 8, inner=block)
        for factor in (4, 2, 1):  # 512 -> 256 -> 128 -> 64 channels towards the outside
            block = UnetBlock(width * factor, width * factor * 2, inner=block)
        self.model = UnetBlock(out_channels, width, in_channels=in_channels, inner=block, outermost=True)

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer stack as defined (slower on CPU; kept for tests and other devices)."""
        return self.model.reference_forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return self.reference_forward(x)
        packed = getattr(self, "_packed", None) or PackedWeights()
        outer = self.model
        h = x.contiguous(memory_format=torch.channels_last)
        h = outer.inner.cpu_forward(packed.down(outer.down, h), packed)
        return torch.tanh_(packed.single_channel_up(outer.up, h))

    def pack_weights(self, size: int = 512) -> bool:
        """Reorder every convolution's weights once into oneDNN's blocked layout for CPU inference
        (``PackedWeights``), chosen for a ``size`` x ``size`` input; other sizes run too (oneDNN adapts
        the layout if it must). Call after the network has its final device and dtype; returns whether
        packing is available (else ``forward`` uses the plain convolutions). Packing again is skipped
        while the weights are the same tensors at the same dtype (weights changed in place need
        ``pack_weights`` on a fresh network, or ``self._packed = None`` first)."""
        key = (size, tuple((p.data_ptr(), p.dtype, p.device) for p in self.parameters()))
        if getattr(self, "_packed", None) is not None and getattr(self, "_packed_key", None) == key:
            return True
        self._packed_key = key
        try:
            self._packed = PackedWeights.of(self, size)
        except (AttributeError, RuntimeError) as error:  # a PyTorch build without these oneDNN ops
            log.debug("unet generator: no prepacked oneDNN weights (%s)", error)
            self._packed = None
        return self._packed is not None


_PAD, _STRIDE, _NO_PAD, _ONE = [1, 1], [2, 2], [0, 0], [1, 1]


class PackedWeights:
    """The generator's convolution weights reordered once into oneDNN's blocked layout (CPU).

    ``F.conv2d`` and ``F.conv_transpose2d`` on the CPU reorder their weights into that layout on every
    call: for the deep levels (16 MB and 33 MB of weights each, applied to maps of 2 x 2 to 32 x 32) the
    reorder costs more than the arithmetic. The oneDNN operators PyTorch's own inference compiler uses
    (``torch.ops.mkldnn._convolution_pointwise`` and ``_convolution_transpose_pointwise``) take a
    reordered weight and give the same results bit for bit. An empty ``PackedWeights`` runs the plain
    modules (no packing, or the packed dtype is not the input's).
    """

    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    @classmethod
    def of(cls, generator: UnetGenerator, size: int) -> PackedWeights:
        packed = cls()
        block: UnetBlock | None = generator.model
        while block is not None:
            down, up = block.down, block.up
            packed.weights[id(down)] = torch.ops.mkldnn._reorder_convolution_weight(
                down.weight.contiguous(memory_format=torch.channels_last), _PAD, _STRIDE, _ONE, 1,
                [1, down.in_channels, size, size])
            size //= 2
            if block.outermost:
                kernel, _ = _phase_kernel(up)
                if kernel is not None:
                    packed.weights[id(up)] = torch.ops.mkldnn._reorder_convolution_weight(
                        kernel, _PAD, _ONE, _ONE, 1, [1, up.in_channels, size, size])
            else:
                packed.weights[id(up)] = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                    up.weight.contiguous(memory_format=torch.channels_last), _PAD, _NO_PAD, _STRIDE, _ONE, 1,
                    [1, up.in_channels, size, size])
            block = block.inner
        return packed

    def _weight(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        weight = self.weights.get(id(module))
        return weight if weight is not None and weight.dtype == x.dtype and x.device.type == "cpu" else None

    def down(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(x)`` for a 4x4 stride-2 padding-1 convolution."""
        weight = self._weight(conv, x)
        if weight is None:
            return conv(x)
        return torch.ops.mkldnn._convolution_pointwise(x, weight, conv.bias, _PAD, _STRIDE, _ONE, 1, "none", [], "")

    def up(self, conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(x)`` for a 4x4 stride-2 padding-1 transposed convolution."""
        weight = self._weight(conv, x)
        if weight is None:
            return conv(x)
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, weight, conv.bias, _PAD, _NO_PAD, _STRIDE, _ONE, 1, "none", [], "")

    def single_channel_up(self, conv: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
        """``conv(x)`` for the outermost transposed convolution (one output channel), by phases
        (``single_channel_transposed_conv``)."""
        weight = self._weight(conv, x)
        if weight is None:
            return single_channel_transposed_conv(x, conv)
        _, bias = _phase_kernel(conv)
        phases = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, _PAD, _ONE, _ONE, 1, "none", [], "")
        return _interleave_phases(phases)


_PHASE_TAPS = ((3, 1), (2, 0))
"""Kernel taps of a 4x4 stride-2 padding-1 transposed convolution, per output phase: output row ``2m``
takes input rows ``m - 1, m`` through kernel rows 3 and 1; row ``2m + 1`` takes rows ``m, m + 1``
through kernel rows 2 and 0 (the same for columns)."""


def _phase_kernel(up: nn.ConvTranspose2d) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (4, in, 2, 2) kernel and (4,) bias of ``single_channel_transposed_conv``, or (None, None) when
    ``up`` is not a one-channel 4x4 stride-2 padding-1 transposed convolution."""
    weight = up.weight  # (in, 1, 4, 4)
    if weight.shape[1] != 1 or weight.shape[2:] != (4, 4) or up.stride != (2, 2) or up.padding != (1, 1):
        return None, None
    kernels = [weight[:, :, _PHASE_TAPS[a]][:, :, :, _PHASE_TAPS[b]] for a in (0, 1) for b in (0, 1)]
    kernel = torch.cat(kernels, 1).transpose(0, 1).contiguous(memory_format=torch.channels_last)
    return kernel, None if up.bias is None else up.bias.expand(4).contiguous()


def _interleave_phases(phases: torch.Tensor) -> torch.Tensor:
    """(B, 4, H + 1, W + 1) phase maps -> the (B, 1, 2H, 2W) output: phase ``(a, b)`` (channel ``2a + b``)
    at ``(m + a, n + b)`` is output pixel ``(2m + a, 2n + b)``."""
    batch, _, height, width = phases.shape
    height, width = height - 1, width - 1
    rows = [torch.stack([phases[:, 2 * a + b, a : a + height, b : b + width] for b in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(rows, 2).view(batch, 1, 2 * height, 2 * width)  # (B, H, 2, W, 2) -> (B, 1, 2H, 2W)


def single_channel_transposed_conv(h: torch.Tensor, up: nn.ConvTranspose2d) -> torch.Tensor:
    """``up(h)`` for a 4x4 stride-2 padding-1 transposed convolution with one output channel, as one
    2x2 convolution to four channels (one per output phase) and an interleave.

    Output pixel ``(2m + a, 2n + b)`` is a 2x2 convolution of the input around ``(m, n)`` with the kernel
    taps of phase ``(a, b)`` (``_PHASE_TAPS``); with the input zero-padded by one, phase ``(a, b)`` at
    ``(m, n)`` is that convolution's output at ``(m + a, n + b)``. Same multiply-adds as the transposed
    convolution, but a shape oneDNN runs several times faster than a one-channel transposed convolution.
    """
    kernel, bias = _phase_kernel(up)
    if kernel is None:
        return up(h)
    return _interleave_phases(F.conv2d(h, kernel, bias, padding=1))


def anime_lineart_generator() -> UnetGenerator:
    """The network of ``netG.pth``."""
    return UnetGenerator(3, 1, 8, 64)
