"""Depth Anything V2 (Yang et al., 2024): a DINOv2 ViT-S/B/L backbone with a DPT head that predicts
relative inverse depth (larger = nearer), for the ``depth-anything`` annotator.

Our own code, written to load both public formats strictly:

* the original files (``depth-anything/Depth-Anything-V2-{Small,Base,Large}``,
  ``depth_anything_v2_vit{s,b,l}.pth``): a plain state dict whose keys are exactly this module's
  (``pretrained.*`` for the DINOv2, ``depth_head.*`` for the DPT head), so they load with no key filter;
* the transformers layout (``depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf``,
  ``model.safetensors``): ``backbone.* / neck.* / head.*`` keys, mapped onto ours by ``from_hf_keys``, an
  explicit table of named renames (the inverse of transformers' ``convert_depth_anything_to_hf.py``) that
  also joins the separate query/key/value projections into one ``qkv`` matrix; a key no rule explains is
  a WeightsError listing it.

The network (``DepthAnythingV2``), on a normalised RGB batch (B, 3, H, W), H and W multiples of 14:

1. DINOv2: 14 x 14 patch embedding, a class token, position embeddings trained at 37 x 37 patches
   (518 px), resized bicubically (align_corners=False, in float32) to the patch grid when it differs, as
   transformers' ``Dinov2Embeddings.interpolate_pos_encoding`` does (the original DINOv2 code resizes by a
   scale factor offset by 0.1 instead: at sizes other than 518 x 518 the two differ slightly; ours is the
   transformers one, the parity reference); pre-norm blocks with layer scale, attention through
   ``scaled_dot_product_attention`` with one fused qkv projection, exact GELU MLP; the outputs of four
   blocks (small/base: 3, 6, 9, 12; large: 5, 12, 18, 24), each through the final LayerNorm, class token
   dropped. Only those four are kept (no list of every hidden state).
2. DPT head: each of the four token maps reshaped to (B, D, H/14, W/14) (a channels-last view, no copy),
   projected by a 1x1 convolution and resized (x4 and x2 transposed convolutions, identity, a stride-2
   convolution), then a 3x3 convolution to ``features`` channels; four fusion blocks from the coarsest
   (residual units, bilinear x2 / to the next size with align_corners=True, 1x1 projection); a 3x3
   convolution, bilinear (align_corners=True) to the input size, 3x3 convolution, ReLU, 1x1 to one
   channel, ReLU.

Speed on the CPU: the head's convolutions run channels-last (``to_channels_last``), attention is PyTorch's
fused SDPA kernel, the patch embedding is one matrix product, the layer scales can be folded into the
linear layers before them (``for_inference``), and nothing but the four needed hidden states is kept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError

PATCH = 14
"""Patch side of DINOv2 ViT-*/14: the network's input sides are multiples of it."""
TRAINED_GRID = 37
"""Position embeddings are trained for 518 x 518 inputs: 37 x 37 patches."""


@dataclasses.dataclass(frozen=True)
class DepthAnythingConfig:
    """One Depth Anything V2 size, as the hub's ``config.json`` gives it (transformers' conversion script)."""

    embed_dim: int
    depth: int
    num_heads: int
    layers: tuple[int, int, int, int]
    """0-based indices of the blocks whose outputs feed the head (transformers' out_indices minus 1)."""
    neck_channels: tuple[int, int, int, int]
    features: int
    head_features: int = 32
    mlp_ratio: int = 4
    eps: float = 1e-6


CONFIGS: dict[str, DepthAnythingConfig] = {
    "small": DepthAnythingConfig(384, 12, 6, (2, 5, 8, 11), (48, 96, 192, 384), 64),
    "base": DepthAnythingConfig(768, 12, 12, (2, 5, 8, 11), (96, 192, 384, 768), 128),
    "large": DepthAnythingConfig(1024, 24, 16, (4, 11, 17, 23), (256, 512, 1024, 1024), 256),
}


# ------------------------------------------------------------------------------------------- DINOv2


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)


class _LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block with layer scale: keys ``norm1 attn.qkv attn.proj ls1.gamma norm2 mlp.fc1
    mlp.fc2 ls2.gamma``."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=config.eps)
        self.attn = _Attention(dim, config.num_heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=config.eps)
        self.mlp = _Mlp(dim, dim * config.mlp_ratio)
        self.ls2 = _LayerScale(dim)

    folded = False
    """Whether the layer scales are folded into ``attn.proj`` and ``mlp.fc2`` (``fold_layer_scales``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x)) * self.ls1.gamma
        return x + self.mlp(self.norm2(x)) * self.ls2.gamma

    def fold_layer_scales(self) -> None:
        """Multiply ``ls1.gamma`` into ``attn.proj`` and ``ls2.gamma`` into ``mlp.fc2`` (then both are ones):
        the same function, two elementwise products fewer per block. Idempotent."""
        if self.folded:
            return
        with torch.no_grad():
            for scale, linear in ((self.ls1.gamma, self.attn.proj), (self.ls2.gamma, self.mlp.fc2)):
                linear.weight.mul_(scale[:, None])
                linear.bias.mul_(scale)
                scale.fill_(1.0)
        self.folded = True


class DinoV2(nn.Module):
    """DINOv2 ViT/14 without registers (keys of the original ``pretrained.*``)."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        self.layers = config.layers
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, TRAINED_GRID * TRAINED_GRID + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        """Unused at inference (DINOv2's masked-image training); kept because both public files hold it."""
        self.patch_embed = _PatchEmbed(dim)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=config.eps)

    def position_embeddings(self, rows: int, cols: int) -> torch.Tensor:
        """(1, 1 + rows * cols, D): the trained grid resized bicubically in float32 when it differs."""
        if (rows, cols) == (TRAINED_GRID, TRAINED_GRID):
            return self.pos_embed
        cls_pos, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = grid.shape[-1]
        grid = grid.reshape(1, TRAINED_GRID, TRAINED_GRID, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(rows, cols), mode="bicubic", align_corners=False)
        grid = grid.to(self.pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, dim)
        return torch.cat((cls_pos, grid), dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The normalised patch tokens (B, rows * cols, D) after each block in ``layers``."""
        batch, channels = x.shape[:2]
        rows, cols = x.shape[2] // PATCH, x.shape[3] // PATCH
        # the 14 x 14 stride-14 patch convolution as one matrix product over the patches (faster on the CPU)
        patches = x.reshape(batch, channels, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5)
        proj = self.patch_embed.proj
        tokens = F.linear(patches.reshape(batch, rows * cols, -1), proj.weight.reshape(proj.out_channels, -1), proj.bias)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embeddings(rows, cols)
        wanted = set(self.layers)
        outputs: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks[: max(self.layers) + 1]):
            tokens = block(tokens)
            if index in wanted:
                outputs.append(self.norm(tokens[:, 1:]))
        return outputs


# ------------------------------------------------------------------------------------------- DPT head


class _ResidualUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu_(self.conv1(F.relu(x)))) + x


class _FusionBlock(nn.Module):
    """``resConfUnit1`` on the skip (unused in the coarsest block, present in the files), the sum,
    ``resConfUnit2``, bilinear resize (align_corners=True), ``out_conv`` (1x1)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = _ResidualUnit(features)
        self.resConfUnit2 = _ResidualUnit(features)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int] | None) -> torch.Tensor:
        if skip is not None:
            path = path + self.resConfUnit1(skip)
        path = self.resConfUnit2(path)
        if size is None:
            path = F.interpolate(path, scale_factor=2, mode="bilinear", align_corners=True)
        else:
            path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class _Scratch(nn.Module):
    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        features = config.features
        for index, channels in enumerate(config.neck_channels, start=1):
            setattr(self, f"layer{index}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for index in range(1, 5):
            setattr(self, f"refinenet{index}", _FusionBlock(features))
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, config.head_features, 3, padding=1), nn.ReLU(),
            nn.Conv2d(config.head_features, 1, 1), nn.ReLU(),
        )


class DptHead(nn.Module):
    """The DPT head of Depth Anything V2 (keys of the original ``depth_head.*``)."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        channels = config.neck_channels
        self.projects = nn.ModuleList(nn.Conv2d(config.embed_dim, c, 1) for c in channels)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),
            nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(channels[3], channels[3], 3, stride=2, padding=1),
        ])
        self.scratch = _Scratch(config)

    def forward(self, tokens: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
        """Relative depth (B, 1, rows * 14, cols * 14) from the four token maps."""
        scratch = self.scratch
        maps = []
        for index, x in enumerate(tokens):
            # (B, N, D) -> (B, D, rows, cols): a channels-last view of the tokens, no copy
            x = x.unflatten(1, (rows, cols)).permute(0, 3, 1, 2)
            x = self.resize_layers[index](self.projects[index](x))
            maps.append(getattr(scratch, f"layer{index + 1}_rn")(x))
        path = scratch.refinenet4(maps[3], None, maps[2].shape[2:])
        path = scratch.refinenet3(path, maps[2], maps[1].shape[2:])
        path = scratch.refinenet2(path, maps[1], maps[0].shape[2:])
        path = scratch.refinenet1(path, maps[0], None)
        out = scratch.output_conv1(path)
        out = F.interpolate(out, size=(rows * PATCH, cols * PATCH), mode="bilinear", align_corners=True)
        return scratch.output_conv2(out)


class DepthAnythingV2(nn.Module):
    """Depth Anything V2: ``pretrained`` (DINOv2) and ``depth_head`` (DPT), the original's key layout."""

    def __init__(self, config: DepthAnythingConfig) -> None:
        super().__init__()
        self.config = config
        self.pretrained = DinoV2(config)
        self.depth_head = DptHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Relative depth (B, H, W) of normalised RGB (B, 3, H, W), H and W multiples of 14."""
        height, width = x.shape[2:]
        if height % PATCH or width % PATCH:
            raise ValueError(f"input sides must be multiples of {PATCH}, got {height} x {width}")
        rows, cols = height // PATCH, width // PATCH
        return self.depth_head(self.pretrained(x), rows, cols)[:, 0]


def build(model: str = "large") -> DepthAnythingV2:
    """The network of size ``model`` (``small``, ``base`` or ``large``), randomly initialised (the weights
    code builds it on the meta device and assigns the checkpoint)."""
    return DepthAnythingV2(CONFIGS[model])


def builder(model: str) -> Callable[[], DepthAnythingV2]:
    """A factory of the network of size ``model`` for ``guides.weights.load.load_checkpoint_into``."""
    if model not in CONFIGS:
        raise ValueError(f"unknown Depth Anything V2 size {model!r}; use one of {', '.join(CONFIGS)}")
    return lambda: build(model)


def to_channels_last(model: DepthAnythingV2) -> DepthAnythingV2:
    """The head's convolution weights in channels-last memory format (oneDNN's fast NHWC kernels on the
    CPU; the token maps enter the head channels-last already)."""
    model.depth_head.to(memory_format=torch.channels_last)
    return model


def for_inference(model: DepthAnythingV2) -> DepthAnythingV2:
    """``model`` with its layer scales folded into the linear layers before them (``_Block.fold_layer_scales``,
    equal up to float rounding; the parameters keep their names and shapes). Idempotent."""
    for block in model.pretrained.blocks:
        block.fold_layer_scales()
    return model


# ------------------------------------------------------------------------------------------- key maps


def _refinenet(index: str) -> str:
    """transformers' fusion layer i (finest last) is the original's refinenet 4 - i (finest first)."""
    return f"refinenet{4 - int(index)}"


#: transformers' key (pattern) -> ours: each rule one line of the inverse of convert_depth_anything_to_hf.py.
HF_RENAMES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), rename) for pattern, rename in (
        (r"backbone\.embeddings\.cls_token", lambda m: "pretrained.cls_token"),
        (r"backbone\.embeddings\.mask_token", lambda m: "pretrained.mask_token"),
        (r"backbone\.embeddings\.position_embeddings", lambda m: "pretrained.pos_embed"),
        (r"backbone\.embeddings\.patch_embeddings\.projection\.(weight|bias)", lambda m: f"pretrained.patch_embed.proj.{m[1]}"),
        (r"backbone\.encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", lambda m: f"pretrained.blocks.{m[1]}.norm{m[2]}.{m[3]}"),
        (r"backbone\.encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", lambda m: f"pretrained.blocks.{m[1]}.ls{m[2]}.gamma"),
        (r"backbone\.encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", lambda m: f"pretrained.blocks.{m[1]}.mlp.{m[2]}.{m[3]}"),
        (r"backbone\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", lambda m: f"pretrained.blocks.{m[1]}.attn.proj.{m[2]}"),
        (r"backbone\.layernorm\.(weight|bias)", lambda m: f"pretrained.norm.{m[1]}"),
        (r"neck\.reassemble_stage\.layers\.([0-3])\.projection\.(weight|bias)", lambda m: f"depth_head.projects.{m[1]}.{m[2]}"),
        (r"neck\.reassemble_stage\.layers\.([013])\.resize\.(weight|bias)", lambda m: f"depth_head.resize_layers.{m[1]}.{m[2]}"),
        (r"neck\.convs\.([0-3])\.weight", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn.weight"),
        (r"neck\.fusion_stage\.layers\.([0-3])\.projection\.(weight|bias)",
         lambda m: f"depth_head.scratch.{_refinenet(m[1])}.out_conv.{m[2]}"),
        (r"neck\.fusion_stage\.layers\.([0-3])\.residual_layer([12])\.convolution([12])\.(weight|bias)",
         lambda m: f"depth_head.scratch.{_refinenet(m[1])}.resConfUnit{m[2]}.conv{m[3]}.{m[4]}"),
        (r"head\.conv1\.(weight|bias)", lambda m: f"depth_head.scratch.output_conv1.{m[1]}"),
        (r"head\.conv2\.(weight|bias)", lambda m: f"depth_head.scratch.output_conv2.0.{m[1]}"),
        (r"head\.conv3\.(weight|bias)", lambda m: f"depth_head.scratch.output_conv2.2.{m[1]}"),
    )
)
#: transformers keeps query, key and value apart; the original (and we) have one ``qkv`` in that order.
HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")
_QKV_ORDER = ("query", "key", "value")


def _key_list(keys: list[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:8]) + (f" ... and {len(keys) - 8} more" if len(keys) > 8 else "")


def from_hf_keys(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Key transformation: the transformers layout (``model.safetensors`` of the ``-hf`` repositories) ->
    ours. Every key must match one rule of ``HF_RENAMES`` or be a query/key/value projection
    (``HF_QKV``, joined into ``attn.qkv`` in that order); anything else is a WeightsError listing the keys
    (a file of the original layout gets a hint to choose ``--weights original``)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unexplained: list[str] = []
    for key, tensor in state_dict.items():
        match = HF_QKV.fullmatch(key)
        if match is not None:
            qkv.setdefault((match[1], match[3]), {})[match[2]] = tensor
            continue
        for pattern, rename in HF_RENAMES:
            match = pattern.fullmatch(key)
            if match is not None:
                out[rename(match)] = tensor
                break
        else:
            unexplained.append(key)
    if unexplained:
        hint = ("; these are the original layout's keys: use --weights original"
                if all(k.startswith(("pretrained.", "depth_head.")) for k in unexplained) else "")
        raise WeightsError(f"keys not in the transformers Depth Anything layout: {_key_list(unexplained)}{hint}")
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [name for name in _QKV_ORDER if name not in parts]
        if missing:
            raise WeightsError(f"layer {layer}: attention {kind} without {', '.join(missing)}")
        out[f"pretrained.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[name] for name in _QKV_ORDER])
    return out


def network_input_size(height: int, width: int, input_size: int = 518) -> tuple[int, int]:
    """(height, width) the original ``Resize(keep_aspect_ratio=True, ensure_multiple_of=14,
    resize_method="lower_bound")`` gives an image: both scaled by the larger of input_size / height and
    input_size / width, each side rounded to a multiple of 14 and, if that falls under ``input_size``,
    rounded up instead."""
    scale = max(input_size / height, input_size / width)

    def side(value: float) -> int:
        rounded = int(round(value / PATCH)) * PATCH
        if rounded < input_size:
            rounded = int(-(-value // PATCH)) * PATCH
        return rounded

    return side(scale * height), side(scale * width)
