"""NNET: surface normals with aleatoric uncertainty (Bae, Budvytis, Cipolla, ICCV 2021,
baegwangbin/surface_normal_uncertainty), the network behind ControlNet's ``normalbae`` annotator.

Written to load ``scannet.pt`` from ``lllyasviel/Annotators`` unchanged (after the named removal of a
``module.`` prefix some copies carry): module names and ``nn.Sequential`` indices follow the file's keys.

* Encoder: EfficientNet-B5 (AdvProp, TensorFlow "same" padding). timm's ``tf_efficientnet_b5`` with
  ``num_classes=0`` has exactly the checkpoint's ``encoder.original_model.*`` keys and shapes, so the
  encoder *is* timm's model; only its stem, blocks and 1x1 head convolution are run (the head's
  BatchNorm and pooling feed nothing the decoder reads).
* Decoder ("BN" architecture): a 1x1 conv on the 1/32 features, four upsample + skip-concat blocks
  (conv3x3-BN-LeakyReLU twice) down to 1/2 resolution, a 3x3 conv giving a 1/8-resolution prediction,
  then three refinement heads (per-pixel MLPs, ``Conv1d`` with kernel 1) at 1/4, 1/2 and 1/1.
  Each prediction has 4 channels: a unit normal (x, y, z) and the concentration kappa > 0.

Uncertainty-guided sampling: in training, each refinement head runs only on a subset of pixels
(``sampling_ratio`` of them, ``importance_ratio`` of those chosen by highest uncertainty, the rest
at random). At inference (``mode='test'`` in the original, and every ControlNet client config with
sampling_ratio 0.4, importance_ratio 0.7) the heads run on *every* pixel, which is what
``forward`` does here; the ratios are kept on the module as the client configuration.

Inference shortcuts, taken after ``NNET.prepare_for_inference()`` (exact up to float rounding, checked
against the reference to 1e-4 in tests; before it the computation is the reference's):

* The first layer of each refinement head is a per-pixel affine map, and bilinear upsampling is a
  per-channel convex combination, so the two commute: the head's first layer runs at the lower
  resolution on the un-upsampled features (4x fewer pixels) and its 128-channel result is upsampled.
* The decoder's eval-mode BatchNorm is folded into the preceding convolutions, and the first 3x3
  convolution of each upsampling block runs its upsampled input's part at the low resolution
  (``UpSampleBN``): together about 40% less decoder work.
* Channels-last memory format (set by the caller) makes the per-pixel heads plain matrix products.

Input: ImageNet-normalised RGB (B, 3, H, W); H, W multiples of 32 keep every skip size aligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Indices of the encoder blocks whose outputs the decoder reads (1/2, 1/4, 1/8, 1/16 resolution).
_SKIP_BLOCKS = (0, 1, 2, 4)


@dataclass(frozen=True)
class NNETConfig:
    """The ControlNet client configuration of NNET (``args`` in the original code)."""

    architecture: str = "BN"
    sampling_ratio: float = 0.4
    importance_ratio: float = 0.7


class Encoder(nn.Module):
    """timm's ``tf_efficientnet_b5`` under ``original_model``; returns the decoder's five inputs."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.original_model = timm.create_model("tf_efficientnet_b5", pretrained=False, num_classes=0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.original_model
        x = net.bn1(net.conv_stem(x))
        skips: list[torch.Tensor] = []
        for index, block in enumerate(net.blocks):
            x = block(x)
            if index in _SKIP_BLOCKS:
                skips.append(x)
        # The 1/32 input of the decoder is the head convolution *before* its BatchNorm and activation.
        skips.append(net.conv_head(x))
        return skips


class UpSampleBN(nn.Module):
    """Upsample ``x`` to the skip's size (bilinear, align_corners), concatenate, two conv-BN-LeakyReLU.

    After ``fuse()`` (inference only) the same map is computed with less work: BatchNorm is folded into
    the convolutions, and the first 3x3 convolution of the *upsampled* channels is split into its
    nine 1x1 taps, applied at the low resolution (4x fewer pixels; mixing channels commutes with
    bilinear interpolation), upsampled and summed with the tap's spatial shift (zero outside, as the
    convolution's zero padding). The skip channels go through an ordinary 3x3 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.upsampled_channels = in_channels - skip_channels
        self._net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )
        self.fused = False

    @torch.no_grad()
    def fuse(self) -> None:
        """Precompute the inference weights (non-persistent buffers: the state dict is unchanged)."""
        conv1, norm1, _, conv2, norm2, _ = self._net
        weight1, bias1 = _fold_batchnorm(conv1, norm1)
        weight2, bias2 = _fold_batchnorm(conv2, norm2)
        out_channels = weight1.shape[0]
        upsampled = weight1[:, : self.upsampled_channels]
        # (out, in, 3, 3) -> (9 * out, in, 1, 1), tap-major: rows [k * out, (k + 1) * out) are tap k = 3 * ky + kx.
        taps = upsampled.permute(2, 3, 0, 1).reshape(9 * out_channels, self.upsampled_channels, 1, 1)
        self.register_buffer("_taps", taps.contiguous(), persistent=False)
        self.register_buffer("_skip_weight", weight1[:, self.upsampled_channels :].contiguous(), persistent=False)
        self.register_buffer("_bias1", bias1, persistent=False)
        self.register_buffer("_weight2", weight2, persistent=False)
        self.register_buffer("_bias2", bias2, persistent=False)
        self.fused = True

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
            return self._net(torch.cat([x, skip], dim=1))
        height, width = skip.shape[-2:]
        out_channels = self._bias1.shape[0]
        out = F.conv2d(skip, self._skip_weight, self._bias1, padding=1)
        for ky in range(3):  # one kernel row at a time: 3 (not 9) upsampled tap maps alive at once
            row = self._taps[3 * ky * out_channels : 3 * (ky + 1) * out_channels]
            taps = F.interpolate(F.conv2d(x, row), size=(height, width), mode="bilinear", align_corners=True)
            dy = ky - 1
            rows_out, rows_in = slice(max(0, -dy), height - max(0, dy)), slice(max(0, dy), height - max(0, -dy))
            for kx in range(3):
                dx = kx - 1
                cols_out, cols_in = slice(max(0, -dx), width - max(0, dx)), slice(max(0, dx), width - max(0, -dx))
                out[:, :, rows_out, cols_out] += taps[:, kx * out_channels : (kx + 1) * out_channels, rows_in, cols_in]
        out = F.leaky_relu_(out)
        return F.leaky_relu_(F.conv2d(out, self._weight2, self._bias2, padding=1))


def _fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of ``norm(conv(x))`` as one convolution (eval-mode BatchNorm is affine)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    return conv.weight * scale[:, None, None, None], (bias - norm.running_mean) * scale + norm.bias


def _refinement_head(in_channels: int, hidden: int = 128) -> nn.Sequential:
    """Per-pixel MLP as kernel-1 ``Conv1d`` layers (keys ``.0 .2 .4 .6``)."""
    return nn.Sequential(
        nn.Conv1d(in_channels, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv1d(hidden, 4, 1),
    )


def normalize_prediction(raw: torch.Tensor, min_kappa: float = 0.01) -> torch.Tensor:
    """(B, 4, ...) raw output -> unit normal (channels 0..2) and kappa = elu + 1 + min_kappa (channel 3)."""
    normal, kappa = raw[:, :3], raw[:, 3:]
    length = torch.sqrt((normal * normal).sum(dim=1, keepdim=True)) + 1e-10
    return torch.cat([normal / length, F.elu(kappa) + (1.0 + min_kappa)], dim=1)


def _pointwise(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Apply a kernel-1 Conv1d to a (B, C, H, W) map, keeping its memory format.

    On a channels-last map this is one matrix product over the pixels (about twice as fast on CPU as
    oneDNN's 1x1 convolution); otherwise a 1x1 convolution.
    """
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.linear(x.permute(0, 2, 3, 1), conv.weight[:, :, 0], conv.bias).permute(0, 3, 1, 2)
    return F.conv2d(x, conv.weight.unsqueeze(-1), conv.bias)


class Decoder(nn.Module):
    """NNET's decoder ("BN" architecture) in inference mode: every pixel refined at every scale."""

    def __init__(self, config: NNETConfig = NNETConfig()) -> None:
        super().__init__()
        if config.architecture != "BN":
            raise ValueError(f"only the 'BN' decoder (the ControlNet client config) is supported, not {config.architecture!r}")
        self.sampling_ratio = config.sampling_ratio
        self.importance_ratio = config.importance_ratio
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        self.up1 = UpSampleBN(2048 + 176, 1024, skip_channels=176)
        self.up2 = UpSampleBN(1024 + 64, 512, skip_channels=64)
        self.up3 = UpSampleBN(512 + 40, 256, skip_channels=40)
        self.up4 = UpSampleBN(256 + 24, 128, skip_channels=24)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4 = _refinement_head(512 + 4)
        self.out_conv_res2 = _refinement_head(256 + 4)
        self.out_conv_res1 = _refinement_head(128 + 4)
        self.prepared = False
        """Set by ``NNET.prepare_for_inference``: use the inference shortcuts (module docstring)."""

    @staticmethod
    def _refine(head: nn.Sequential, features: torch.Tensor, coarse: torch.Tensor, head_first: bool = True) -> torch.Tensor:
        """Prediction at twice the resolution of ``features``/``coarse`` (same size), every pixel.

        The original upsamples the 516/260/132-channel concatenation and then applies the head's first
        (linear) layer; applying that layer first and upsampling its 128 channels is the same map
        (``head_first``, 4x less work for that layer).
        """
        if not head_first:
            upsampled = F.interpolate(torch.cat([features, coarse], dim=1), scale_factor=2, mode="bilinear", align_corners=True)
            batch, channels, height, width = upsampled.shape
            return normalize_prediction(head(upsampled.reshape(batch, channels, -1)).view(batch, 4, height, width))
        hidden = _pointwise(torch.cat([features, coarse], dim=1), head[0])
        hidden = F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=True)
        hidden = torch.relu_(hidden)
        hidden = torch.relu_(_pointwise(hidden, head[2]))
        hidden = torch.relu_(_pointwise(hidden, head[4]))
        return normalize_prediction(_pointwise(hidden, head[6]))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        skip2, skip4, skip8, skip16, bottom = features
        x16 = self.up1(self.conv2(bottom), skip16)
        x8 = self.up2(x16, skip8)
        x4 = self.up3(x8, skip4)
        x2 = self.up4(x4, skip2)
        out_res8 = normalize_prediction(self.out_conv_res8(x8))
        out_res4 = self._refine(self.out_conv_res4, x8, out_res8, self.prepared)
        out_res2 = self._refine(self.out_conv_res2, x4, out_res4, self.prepared)
        out_res1 = self._refine(self.out_conv_res1, x2, out_res2, self.prepared)
        return [out_res8, out_res4, out_res2, out_res1]


class NNET(nn.Module):
    """Encoder + decoder; ``forward`` returns the predictions at 1/8, 1/4, 1/2 and full resolution."""

    def __init__(self, config: NNETConfig = NNETConfig()) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder(config)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.decoder(self.encoder(image))

    def prepare_for_inference(self) -> NNET:
        """Eval mode, decoder BatchNorm folded and first convolutions split (see ``UpSampleBN``).

        Call after loading the weights and before moving to the device/dtype; the state dict is
        unchanged (the derived weights are non-persistent buffers).
        """
        self.eval()
        for block in (self.decoder.up1, self.decoder.up2, self.decoder.up3, self.decoder.up4):
            block.fuse()
        self.decoder.prepared = True
        return self

    def predict_normals(self, image: torch.Tensor) -> torch.Tensor:
        """The full-resolution unit normals (B, 3, H, W) of a normalised image batch."""
        return self.forward(image)[-1][:, :3]


def normalbae_network() -> NNET:
    """The network of ``scannet.pt`` in the ControlNet client configuration."""
    return NNET(NNETConfig())
