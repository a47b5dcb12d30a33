"""ZoeD_N, the metric depth network of ZoeDepth (Bhat et al., 2023, isl-org/ZoeDepth), on current timm.

Written to load ``ZoeD_M12_N.pt`` (``lllyasviel/Annotators``, the isl-org/ZoeDepth v1.0 release) unchanged:
module names and ``nn.Sequential`` indices below are that file's key layout (``core.core.pretrained.model.*``
for the BEiT, ``core.core.pretrained.act_postprocess{1..4}.*`` and ``core.core.scratch.*`` for the MiDaS DPT
neck, ``conv2``, ``seed_*``, ``projectors``, ``attractors`` and ``conditional_log_binomial`` for the metric
head). The file also holds 24 ``...attn.relative_position_index`` tables that older timm saved; current timm
computes them (non-persistent buffers; after a meta-device build ``_Encoder.fill_computed_buffers`` fills
them with one table computed once, nothing in timm is patched), and the loader checks the saved copies
against them and drops them (``guides.weights.load.drop_computed_buffers``).

Layout:

* ``core.core.pretrained.model``: timm's BEiT-L/16-384 (24 blocks, width 1024, 16 heads, per-block relative
  position bias, LayerScale). Its own forward is not used: MiDaS runs it at any multiple of 16 by resizing
  each block's relative position bias table (bilinear) to the patch grid; ``_Encoder`` does the same, with
  ``scaled_dot_product_attention`` and the bias built once per forward and block. Its ImageNet head
  (``fc_norm``, ``head``) is in the file and kept, unused.
* ``core.core.pretrained.act_postprocess{1..4}``: DPT "reassemble" of the tokens after blocks 5, 11, 17, 23:
  readout projection (patch token ++ class token -> Linear -> GELU), 1x1 conv, resampling to 1/4, 1/8,
  1/16, 1/32 of the input.
* ``core.core.scratch``: the DPT neck (3x3 convs to 256 channels, four fusion blocks, the depth head);
  MiDaS's relative depth and the neck's features feed the metric head.
* metric head: seed bins from the 1/32 features, four attractor layers refining 64 bin centres up the
  decoder, and a conditional log-binomial distribution over the bins per pixel; depth = sum p_i c_i.

Arithmetic is the reference's, rearranged where exactly equal in real numbers (1x1 convs moved before the
bilinear resizes they commute with, split concatenations); results match controlnet_aux's ZoeDepth to
float rounding (tests/nets/test_zoedepth.py). Convolutions run channels-last (about twice as fast on CPU);
``infer_depth`` runs the mirrored image in the same batch. The metric head always runs in float32, also
when the backbone runs in fp16/bf16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TINY_CONFIG",
    "ZOED_N_CONFIG",
    "ZoeDepth",
    "ZoeDepthConfig",
    "infer_depth",
    "network_input_size",
    "padding_for",
    "relative_position_index",
    "zoed_n",
]


@dataclass(frozen=True)
class ZoeDepthConfig:
    """Sizes of a ZoeDepth network. ``ZOED_N_CONFIG`` is the checkpoint's; others are for fast tests."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    hooks: tuple[int, int, int, int] = (5, 11, 17, 23)
    pretrain_size: int = 384
    """The BEiT's training size: its relative position tables are for a (size/16)^2 patch grid."""
    num_classes: int = 1000
    """The unused ImageNet head of the BEiT, kept because the checkpoint holds it."""
    reassemble_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    features: int = 256
    head_features: int = 32
    n_bins: int = 64
    bin_embedding_dim: int = 128
    seed_mlp_dim: int = 256
    mlp_dim: int = 128
    n_attractors: tuple[int, int, int, int] = (16, 8, 4, 1)
    attractor_alpha: float = 300.0
    """ZoeD_N's config says 1000, but ZoeDepth's attractor layer never passes alpha or gamma on to the
    attractor function, which runs with its defaults (300, 2): the network was trained and is run so."""
    attractor_gamma: int = 2
    min_temp: float = 0.0212
    max_temp: float = 50.0
    net_height: int = 384
    net_width: int = 512
    """Target of the input resize (keep aspect ratio, scale as little as possible, multiples of 32)."""


ZOED_N_CONFIG = ZoeDepthConfig()
TINY_CONFIG = ZoeDepthConfig(
    embed_dim=32, depth=4, num_heads=2, hooks=(0, 1, 2, 3), num_classes=10,
    reassemble_channels=(8, 16, 32, 32), features=16, head_features=8, n_bins=16, bin_embedding_dim=8,
    seed_mlp_dim=16, mlp_dim=8, net_height=96, net_width=128,
)


# ------------------------------------------------------------------------------------------- backbone


def relative_position_index(height: int, width: int) -> torch.Tensor:
    """BEiT's relative position index for a ``height x width`` patch grid plus the class token.

    Entry [i, j] indexes the bias table row for query token i and key token j: patch pairs by their offset
    (dy, dx) as ``(dy + height - 1) * (2 * width - 1) + (dx + width - 1)``; then three rows for class->patch,
    patch->class and class->class. ``ZoeD_M12_N.pt`` saves this table for 24 x 24.
    """
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (height - 1)
    dx = xs[:, None] - xs[None, :] + (width - 1)
    patch_rows = (2 * height - 1) * (2 * width - 1)
    area = height * width
    index = torch.empty((area + 1, area + 1), dtype=torch.long)
    index[1:, 1:] = dy * (2 * width - 1) + dx
    index[0, :] = patch_rows
    index[:, 0] = patch_rows + 1
    index[0, 0] = patch_rows + 2
    return index


def _resized_bias_table(table: torch.Tensor, trained: int, height: int, width: int) -> torch.Tensor:
    """The bias table for a ``height x width`` grid, bilinearly resized from the ``trained`` square grid.

    As MiDaS does: the (2t-1)^2 patch rows are resized as an image to (2h-1, 2w-1); the 3 class-token rows
    are kept.
    """
    side = 2 * trained - 1
    patch_rows = table[: side * side]
    if (height, width) != (trained, trained):
        grid = patch_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(2 * height - 1, 2 * width - 1), mode="bilinear")
        patch_rows = grid.permute(0, 2, 3, 1).reshape((2 * height - 1) * (2 * width - 1), -1)
    return torch.cat([patch_rows, table[side * side:]])


class _ReadoutProject(nn.Module):
    """DPT's "project" readout: Linear(patch token ++ class token) -> GELU, per patch token."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        linear = self.project[0]
        dim = tokens.shape[-1]
        # Linear([p, c]) = W_p p + (W_c c + b): the class-token half is one row per image.
        out = F.linear(tokens[:, 1:], linear.weight[:, :dim])
        out += F.linear(tokens[:, :1], linear.weight[:, dim:], linear.bias)
        return self.project[1](out)


class _Reassemble(nn.Module):
    """Tokens after one hooked block -> a feature map (B, C, H/16 * s, W/16 * s), channels-last.

    The children are named after the indices of MiDaS's ``nn.Sequential`` (readout, transpose, unflatten,
    1x1 conv, resample), which is how the checkpoint names them.
    """

    def __init__(self, embed_dim: int, channels: int, resample: nn.Module | None) -> None:
        super().__init__()
        self.add_module("0", _ReadoutProject(embed_dim))
        self.add_module("3", nn.Conv2d(embed_dim, channels, kernel_size=1))
        if resample is not None:
            self.add_module("4", resample)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self._modules["0"](tokens)
        conv = self._modules["3"]
        # The 1x1 conv as a Linear on the tokens: (B, HW, C) is already the channels-last layout.
        x = F.linear(x, conv.weight.flatten(1), conv.bias)
        x = x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2)
        resample = self._modules.get("4")
        return x if resample is None else resample(x)


class _Encoder(nn.Module):
    """``core.core.pretrained``: timm's BEiT (``model``) run at any multiple of 16, and the four reassemble
    stages turning the tokens after the hooked blocks into feature maps at 1/4 .. 1/32 of the input."""

    def __init__(self, config: ZoeDepthConfig) -> None:
        super().__init__()
        from timm.models.beit import Beit

        dim, (c1, c2, c3, c4) = config.embed_dim, config.reassemble_channels
        self.model = Beit(
            img_size=config.pretrain_size, patch_size=16, num_classes=config.num_classes,
            embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads, mlp_ratio=4.0,
            qkv_bias=True, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=1e-5,
        )
        self.act_postprocess1 = _Reassemble(dim, c1, nn.ConvTranspose2d(c1, c1, kernel_size=4, stride=4))
        self.act_postprocess2 = _Reassemble(dim, c2, nn.ConvTranspose2d(c2, c2, kernel_size=2, stride=2))
        self.act_postprocess3 = _Reassemble(dim, c3, None)
        self.act_postprocess4 = _Reassemble(dim, c4, nn.Conv2d(c4, c4, kernel_size=3, stride=2, padding=1))
        self.hooks = config.hooks
        self.trained_grid = config.pretrain_size // 16
        self._index_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def fill_computed_buffers(self) -> None:
        """Fill the BEiT's computed buffers left on the meta device by a meta-device build.

        Each block's ``relative_position_index`` (timm computes the same 577 x 577 table in each of the 24
        blocks, most of the time a build takes) gets one table computed once here by
        ``relative_position_index`` (equal to timm's ``gen_relative_position_index``, tested) and copied
        (a copy per block, as timm keeps them); ``k_bias`` is zeros as in timm. Called by
        ``guides.weights.load.build_on_meta``.
        """
        tables: dict[tuple[int, int], torch.Tensor] = {}
        for block in self.model.blocks:
            attn = block.attn
            index = getattr(attn, "relative_position_index", None)
            if index is not None and index.is_meta:
                height, width = attn.window_size
                if (height, width) not in tables:
                    tables[height, width] = relative_position_index(height, width)
                attn.relative_position_index = tables[height, width].clone()
            k_bias = getattr(attn, "k_bias", None)
            if k_bias is not None and k_bias.is_meta:
                attn.k_bias = torch.zeros(k_bias.shape, dtype=k_bias.dtype)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised image, H and W multiples of 16 -> four channels-last feature maps."""
        height, width = x.shape[2] // 16, x.shape[3] // 16
        tokens = self._tokens(x)
        stages = (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3, self.act_postprocess4)
        return [stage(t, height, width) for stage, t in zip(stages, tokens)]

    def _tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The BEiT's tokens (B, 1 + HW/256, C) after each hooked block."""
        model = self.model
        batch = x.shape[0]
        height, width = x.shape[2] // 16, x.shape[3] // 16
        x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = model.patch_embed.norm(x)
        x = torch.cat([model.cls_token.expand(batch, -1, -1), x], dim=1)
        outputs = []
        for index, block in enumerate(model.blocks[: max(self.hooks) + 1]):
            attn = block.attn
            bias = self._bias(attn, height, width, x.dtype)
            x = x + block.gamma_1 * self._attention(attn, block.norm1(x), bias)
            x = x + block.gamma_2 * block.mlp(block.norm2(x))
            if index in self.hooks:
                outputs.append(x)
        return outputs

    def _index(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device))
        index = self._index_cache.get(key)
        if index is None:
            if len(self._index_cache) >= 8:
                self._index_cache.clear()
            index = relative_position_index(height, width).flatten().to(device)
            self._index_cache[key] = index
        return index

    def _bias(self, attn: nn.Module, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The (1, heads, N, N) attention bias of one block for a height x width grid (N = h*w + 1)."""
        table = _resized_bias_table(attn.relative_position_bias_table.float(), self.trained_grid, height, width)
        tokens = height * width + 1
        index = self._index(height, width, table.device)
        # Gather from the transposed table: the result is laid out (heads, N, N) with no permute copy.
        bias = table.t().contiguous().index_select(1, index).view(1, -1, tokens, tokens)
        return bias.to(dtype)

    @staticmethod
    def _attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv_bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = F.linear(x, attn.qkv.weight, qkv_bias)
        q, k, v = qkv.view(batch, tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        return attn.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


# ------------------------------------------------------------------------------------------- DPT neck


def _resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with aligned corners (every resize of MiDaS and ZoeDepth's heads)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


class _ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x))))."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(F.relu(x)), inplace=True))
        out += x
        return out


class _FusionBlock(nn.Module):
    """DPT feature fusion: (path + rcu1(skip)) -> rcu2 -> bilinear resize -> 1x1 conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        out = path if skip is None else path + self.resConfUnit1(skip)
        out = self.resConfUnit2(out)
        # The 1x1 conv commutes with the bilinear resize (weights sum to 1): run it at the smaller size.
        if size[0] * size[1] > out.shape[2] * out.shape[3]:
            return _resize(self.out_conv(out), size)
        return self.out_conv(_resize(out, size))


class _Neck(nn.Module):
    """``core.core.scratch``: DPT's neck and depth head."""

    def __init__(self, config: ZoeDepthConfig) -> None:
        super().__init__()
        f = config.features
        c1, c2, c3, c4 = config.reassemble_channels
        self.layer1_rn = nn.Conv2d(c1, f, kernel_size=3, padding=1, bias=False)
        self.layer2_rn = nn.Conv2d(c2, f, kernel_size=3, padding=1, bias=False)
        self.layer3_rn = nn.Conv2d(c3, f, kernel_size=3, padding=1, bias=False)
        self.layer4_rn = nn.Conv2d(c4, f, kernel_size=3, padding=1, bias=False)
        self.refinenet1 = _FusionBlock(f)
        self.refinenet2 = _FusionBlock(f)
        self.refinenet3 = _FusionBlock(f)
        self.refinenet4 = _FusionBlock(f)
        # Indices as in MiDaS: conv, x2 resize, conv, ReLU, conv, ReLU (the resize and ReLUs hold no keys).
        self.output_conv = nn.Sequential(
            nn.Conv2d(f, f // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(f // 2, config.head_features, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(config.head_features, 1, kernel_size=1),
            nn.ReLU(),
        )

    def forward(self, layers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        l1 = self.layer1_rn(layers[0])
        l2 = self.layer2_rn(layers[1])
        l3 = self.layer3_rn(layers[2])
        l4 = self.layer4_rn(layers[3])
        r4 = self.refinenet4(l4, None, l3.shape[2:])
        r3 = self.refinenet3(r4, l3, l2.shape[2:])
        r2 = self.refinenet2(r3, l2, l1.shape[2:])
        r1 = self.refinenet1(r2, l1, (2 * l1.shape[2], 2 * l1.shape[3]))
        head = self.output_conv
        x = head[0](r1)
        x = _resize(x, (2 * x.shape[2], 2 * x.shape[3]))
        out_conv = F.relu(head[2](x), inplace=True)
        del x
        rel_depth = F.relu(head[4](out_conv), inplace=True)
        return {"rel_depth": rel_depth, "out_conv": out_conv, "l4_rn": l4, "r4": r4, "r3": r3, "r2": r2, "r1": r1}


class _Dpt(nn.Module):
    """``core.core``: MiDaS DPT_BEiT_L_384 (encoder ``pretrained`` + neck ``scratch``)."""

    def __init__(self, config: ZoeDepthConfig) -> None:
        super().__init__()
        self.pretrained = _Encoder(config)
        self.scratch = _Neck(config)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        layers = [layer.contiguous(memory_format=torch.channels_last) for layer in self.pretrained(x)]
        return self.scratch(layers)


def network_input_size(height: int, width: int, config: ZoeDepthConfig = ZOED_N_CONFIG) -> tuple[int, int]:
    """The size ZoeDepth resizes an input to: keep the aspect ratio, scale as little as possible towards
    ``net_height x net_width``, round each side to a multiple of 32 (numpy's round: halves to even).

    A side that would round to 0 (extreme aspect ratios, where the original fails) becomes 32.
    """
    scale_height = config.net_height / height
    scale_width = config.net_width / width
    if abs(1 - scale_width) < abs(1 - scale_height):
        scale_height = scale_width
    else:
        scale_width = scale_height
    new_height = int(round(scale_height * height / 32) * 32)
    new_width = int(round(scale_width * width / 32) * 32)
    return max(new_height, 32), max(new_width, 32)


class _MidasCore(nn.Module):
    """``core``: resize and normalise the image, run MiDaS, return its relative depth and features."""

    def __init__(self, config: ZoeDepthConfig) -> None:
        super().__init__()
        self.config = config
        self.core = _Dpt(config)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = network_input_size(x.shape[2], x.shape[3], self.config)
        if tuple(x.shape[2:]) != size:
            x = _resize(x, size)
        x = (x - 0.5) / 0.5
        return self.core(x)


# ------------------------------------------------------------------------------------------ metric head


def _mlp_layers(in_features: int, hidden: int, out_features: int, softplus: bool) -> nn.Sequential:
    """1x1 conv -> ReLU -> 1x1 conv [-> Softplus]: the ``_net`` of every small head module."""
    layers = [nn.Conv2d(in_features, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, out_features, 1)]
    if softplus:
        layers.append(nn.Softplus())
    return nn.Sequential(*layers)


class _Mlp(nn.Module):
    """Seed bin regressor (softplus: unbounded bin centres) and bin-embedding projectors."""

    def __init__(self, in_features: int, hidden: int, out_features: int, softplus: bool) -> None:
        super().__init__()
        self._net = _mlp_layers(in_features, hidden, out_features, softplus)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


class _Attractor(nn.Module):
    """Moves the previous bin centres towards attractor points predicted from this level's embedding.

    ZoeD_N's kind: unbounded ("softplus") centres, inverse attractor dc = dx / (1 + alpha dx^gamma),
    averaged over the attractors.
    """

    def __init__(self, config: ZoeDepthConfig, n_attractors: int) -> None:
        super().__init__()
        self.alpha = config.attractor_alpha
        self.gamma = config.attractor_gamma
        self._net = _mlp_layers(config.bin_embedding_dim, config.mlp_dim, n_attractors, softplus=True)

    def forward(self, embedding: torch.Tensor, centers: torch.Tensor, prev_embedding: torch.Tensor) -> torch.Tensor:
        x = embedding + _resize(prev_embedding, embedding.shape[-2:])
        attractors = self._net(x)
        centers = _resize(centers, attractors.shape[-2:])
        dx = attractors.unsqueeze(2) - centers.unsqueeze(1)
        shift = torch.mean(dx.div(1 + self.alpha * dx.pow(self.gamma)), dim=1)
        return centers + shift


class _LogBinomial(nn.Module):
    """Buffers of the log-binomial distribution over the bins (saved in the checkpoint)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.register_buffer("k_idx", torch.arange(0, n_classes).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([n_classes - 1], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, p: torch.Tensor, temperature: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """Softmax over the bins of log Binomial(k; K-1, p) / temperature; p, t: (B, 1, H, W)."""
        one_minus_p = torch.clamp(1 - p, eps, 1)
        p = torch.clamp(p, eps, 1)
        n, k = self.K_minus_1 + 1e-7, self.k_idx + 1e-7
        log_binom = n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + 1e-7)
        # log_binom + k log p + (K - 1 - k) log(1 - p), built in place: (B, bins, H, W) is the largest
        # tensor of the head.
        y = self.k_idx * torch.log(p)
        y += log_binom
        y.addcmul_(self.n_classes - 1 - self.k_idx, torch.log(one_minus_p))
        y /= temperature
        return torch.softmax(y, dim=1)


class _ConditionalLogBinomial(nn.Module):
    """Per-pixel distribution over the bins from MiDaS's last features, relative depth and bin embedding."""

    def __init__(self, config: ZoeDepthConfig) -> None:
        super().__init__()
        in_features = config.head_features + 1
        bottleneck = (in_features + config.bin_embedding_dim) // 2
        self.p_eps = 1e-4
        self.min_temp, self.max_temp = config.min_temp, config.max_temp
        self.log_binomial_transform = _LogBinomial(config.n_bins)
        self.mlp = nn.Sequential(
            nn.Conv2d(in_features + config.bin_embedding_dim, bottleneck, 1),
            nn.GELU(),
            nn.Conv2d(bottleneck, 4, 1),
            nn.Softplus(),
        )

    def forward(self, features: torch.Tensor, rel_depth: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """features (B, C, H, W), rel_depth (B, 1, H, W), embedding (B, E, h, w) at a lower size."""
        first = self.mlp[0]
        channels = features.shape[1]
        w_features, w_rel, w_embedding = first.weight.split([channels, 1, embedding.shape[1]], dim=1)
        # conv([f, r, resize(e)]) = conv_f(f) + w_r r + resize(conv_e(e) + b): the 1x1 conv on the
        # embedding commutes with the bilinear resize, so it runs at the embedding's own size.
        hidden = _resize(F.conv2d(embedding, w_embedding, first.bias), features.shape[-2:])
        hidden += F.conv2d(features, w_features)
        hidden.addcmul_(rel_depth, w_rel.view(1, -1, 1, 1))
        pt = self.mlp[3](self.mlp[2](self.mlp[1](hidden)))
        p, t = pt[:, :2] + self.p_eps, pt[:, 2:] + self.p_eps
        p = (p[:, 0] / (p[:, 0] + p[:, 1])).unsqueeze(1)
        t = (t[:, 0] / (t[:, 0] + t[:, 1])).unsqueeze(1)
        t = (self.max_temp - self.min_temp) * t + self.min_temp
        return self.log_binomial_transform(p, t)


class ZoeDepth(nn.Module):
    """ZoeD_N: RGB in [0, 1] (B, 3, H, W) -> metric depth in metres (B, 1, h, w) at the network size.

    Use ``infer_depth`` for the original inference (padding, flip averaging, back to the input size).
    """

    def __init__(self, config: ZoeDepthConfig = ZOED_N_CONFIG) -> None:
        super().__init__()
        self.config = config
        f, e = config.features, config.bin_embedding_dim
        self.core = _MidasCore(config)
        self.conv2 = nn.Conv2d(f, f, kernel_size=1)
        self.seed_bin_regressor = _Mlp(f, config.seed_mlp_dim, config.n_bins, softplus=True)
        self.seed_projector = _Mlp(f, config.mlp_dim, e, softplus=False)
        self.projectors = nn.ModuleList(_Mlp(f, config.mlp_dim, e, softplus=False) for _ in range(4))
        self.attractors = nn.ModuleList(_Attractor(config, n) for n in config.n_attractors)
        self.conditional_log_binomial = _ConditionalLogBinomial(config)

    def head_modules(self) -> list[nn.Module]:
        """The metric head (everything but ``core``): kept in float32 at every precision."""
        return [module for name, module in self.named_children() if name != "core"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.core(x.to(self.core.core.scratch.layer1_rn.weight.dtype))
        head_dtype = self.conv2.weight.dtype
        # Features are dropped as soon as they are used: the full-size ones dominate peak memory.
        take = lambda name: features.pop(name).to(head_dtype)  # noqa: E731
        x = self.conv2(take("l4_rn"))
        centers = self.seed_bin_regressor(x)
        prev_embedding = self.seed_projector(x)
        for projector, attractor, name in zip(self.projectors, self.attractors, ("r4", "r3", "r2", "r1")):
            embedding = projector(take(name))
            centers = attractor(embedding, centers, prev_embedding)
            prev_embedding = embedding
        last, rel_depth = take("out_conv"), take("rel_depth")
        if rel_depth.shape[-2:] != last.shape[-2:]:
            rel_depth = _resize(rel_depth, last.shape[-2:])
        # The per-pixel distribution over the bins, one image at a time (the head's largest tensors).
        depth = []
        for i in range(last.shape[0]):
            probs = self.conditional_log_binomial(last[i : i + 1], rel_depth[i : i + 1], prev_embedding[i : i + 1])
            # probs come out of the softmax contiguous (NCHW): resize the centres in that layout too.
            probs *= _resize(centers[i : i + 1].contiguous(), probs.shape[-2:])
            depth.append(torch.sum(probs, dim=1, keepdim=True))
        return torch.cat(depth)


def zoed_n() -> ZoeDepth:
    """The ZoeD_N network of ``ZoeD_M12_N.pt`` (the factory the depth annotator loads the file into)."""
    return ZoeDepth(ZOED_N_CONFIG)


# ------------------------------------------------------------------------------------------- inference


def padding_for(height: int, width: int) -> tuple[int, int]:
    """ZoeDepth's reflect padding: int(sqrt(side / 2) * 3) pixels on each side (rows, columns)."""
    return int(math.sqrt(height / 2) * 3), int(math.sqrt(width / 2) * 3)


@torch.inference_mode()
def infer_depth(model: ZoeDepth, images: torch.Tensor, *, pad: bool = True, flip: bool = True) -> torch.Tensor:
    """Metric depth (B, 1, H, W) float32 of RGB images in [0, 1] (B, 3, H, W), as ZoeDepth's ``infer``.

    ``pad``: reflect-pad by ``padding_for`` first and crop the prediction back (removes border artefacts
    of the NYU training data). ``flip``: average with the prediction of the mirrored image (one batch of
    2B: the mirrored pass runs with the first). The prediction, made at ``network_input_size``, is resized
    to the (padded) input size with bicubic interpolation. Images must be at least 5 x 5 when padding.
    """
    batch, _, height, width = images.shape
    pad_h, pad_w = padding_for(height, width) if pad else (0, 0)
    if pad:
        images = F.pad(images, [pad_w, pad_w, pad_h, pad_h], mode="reflect")
    if flip:
        images = torch.cat([images, images.flip(3)])
    depth = model(images).float()
    if depth.shape[-2:] != images.shape[-2:]:
        depth = F.interpolate(depth, size=images.shape[-2:], mode="bicubic", align_corners=False)
    if pad_h > 0:
        depth = depth[:, :, pad_h:-pad_h, :]
    if pad_w > 0:
        depth = depth[:, :, :, pad_w:-pad_w]
    if flip:
        depth = (depth[:batch] + depth[batch:].flip(3)) / 2
    return depth
