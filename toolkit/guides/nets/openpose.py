"""The three OpenPose networks of ControlNet's openpose annotator (CMU's convolutional pose machines, as
lllyasviel/Annotators ships them): the body network (``body_pose_model.pth``), the hand network
(``hand_pose_model.pth``) and the face network (``facenet.pth``).

Written to load the public files unchanged and strictly: every convolution is a direct attribute named
as in the files (``conv1_1``, ``conv5_5_CPM_L2``, ``Mconv7_stage6_L1``, ...), so the state-dict keys are the
file's keys (``conv1_1.weight``). The body and hand files hold the Caffe layer names without any block
prefix (the reference's ``transfer`` adds its ``model0.`` / ``model1_1.`` block names back); ``facenet.pth``
already uses these flat names.

Layouts:

* body (``BodyPoseNetwork``): VGG-19 front (conv1_1 .. conv4_2) and two CPM layers (conv4_3_CPM,
  conv4_4_CPM: 128 features at 1/8 of the input), then six stages of two branches: L1, 38 part-affinity
  channels (19 limbs x (x, y)), and L2, 19 heatmaps (18 parts + background). Stage 1 uses 3x3 and 1x1
  convolutions (conv5_*_CPM_L*), stages 2-6 five 7x7 and two 1x1 (Mconv*_stage*_L*) on the concatenation
  [L1, L2, features] (185 channels). Every convolution is followed by a ReLU except each branch's last,
  with one quirk of the reference kept: its list of layers without ReLU names ``Mconv7_stage6_L1`` twice
  and never ``Mconv7_stage6_L2``, so the final heatmaps ARE rectified (never negative).
* hand and face (``KeypointNetwork``): VGG-19 front to conv5_3_CPM (128 features at 1/8), stage 1
  (conv6_1_CPM, conv6_2_CPM) and stages 2-6 (Mconv1..7_stageN on [previous maps, features]); 22 maps for
  the hand (21 keypoints + background), 71 for the face (70 landmarks + background). Only the last
  stage's maps are returned (all the reference uses).

Input of all three: BGR images as ``uint8 / 256 - 0.5``, (B, 3, H, W) float, H and W multiples of 8 for
the body (the reference pads them), anything for the others (pooled with floor rounding).

Speed on the CPU: every convolution is an ``NnpackConv2d`` (same parameters and keys as ``nn.Conv2d``):
in fp32 on the CPU, the 3x3 and 7x7 layers run on NNPACK's Winograd/FFT kernels, one image at a time (the
hand network about 2.2x faster than oneDNN on 2 cores, with the same error against float64; see
``nnpack_convolution``). Where NNPACK does not apply (bf16, CUDA, a build without it), ``to_channels_last``
puts the weights in channels-last memory format, and with an input in that format every convolution runs on
oneDNN's NHWC kernels (about 0.65-0.85x the time of the plain NCHW network on 2 cores).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nnpack_convolution import NnpackConv2d

#: VGG-19's front, as (name, input channels, output channels) with "pool" between its blocks.
_VGG_FRONT = (
    ("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool",
    ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
    ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
    ("conv4_1", 256, 512), ("conv4_2", 512, 512),
)
#: The body network's CPM layers after conv4_2 (features of 128 channels).
_BODY_FRONT_TAIL = (("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, 128))
#: The hand and face networks' layers after conv4_2 (features of 128 channels).
_KEYPOINT_FRONT_TAIL = (("conv4_3", 512, 512), ("conv4_4", 512, 512), ("conv5_1", 512, 512),
                        ("conv5_2", 512, 512), ("conv5_3_CPM", 512, 128))
FEATURES = 128
"""Channels of the front's feature map, concatenated to every refinement stage's input."""
BODY_PAFS = 38
BODY_HEATMAPS = 19
HAND_MAPS = 22
FACE_MAPS = 71
STAGES = 6


def _front(owner: nn.Module, layers: tuple) -> list:
    """Register the 3x3 convolutions of ``layers`` on ``owner``; the plan (names and pools) for ``forward``."""
    plan = []
    for layer in layers:
        if layer == "pool":
            plan.append(None)
            continue
        name, cin, cout = layer
        owner.add_module(name, NnpackConv2d(cin, cout, 3, padding=1))
        plan.append(name)
    return plan


def _run_front(owner: nn.Module, plan: list, x: torch.Tensor) -> torch.Tensor:
    for name in plan:
        x = F.max_pool2d(x, 2, 2) if name is None else F.relu_(getattr(owner, name)(x))
    return x


def _refinement(owner: nn.Module, suffix: str, cin: int, cout: int) -> list[str]:
    """Stage 2-6 branch ``suffix`` (``stage3_L1``): five 7x7 and two 1x1 convolutions; their names."""
    names = []
    for index in range(1, 8):
        name = f"Mconv{index}_{suffix}"
        if index <= 5:
            conv = NnpackConv2d(cin if index == 1 else 128, 128, 7, padding=3)
        else:
            conv = NnpackConv2d(128, 128 if index == 6 else cout, 1)
        owner.add_module(name, conv)
        names.append(name)
    return names


def _run_branch(owner: nn.Module, names: list[str], x: torch.Tensor, relu_last: bool = False) -> torch.Tensor:
    for name in names[:-1]:
        x = F.relu_(getattr(owner, name)(x))
    x = getattr(owner, names[-1])(x)
    return F.relu(x) if relu_last else x


class BodyPoseNetwork(nn.Module):
    """The OpenPose body network (``bodypose_model``'s architecture, the file's flat keys).
    ``forward`` returns (part-affinity fields (B, 38, H/8, W/8), heatmaps (B, 19, H/8, W/8))."""

    def __init__(self) -> None:
        super().__init__()
        self._front = _front(self, _VGG_FRONT + _BODY_FRONT_TAIL)
        self._stage1 = {}
        for branch, cout in (("L1", BODY_PAFS), ("L2", BODY_HEATMAPS)):
            names = []
            for index, (cin, cout_i, kernel) in enumerate(
                    ((FEATURES, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, cout, 1)), start=1):
                name = f"conv5_{index}_CPM_{branch}"
                self.add_module(name, NnpackConv2d(cin, cout_i, kernel, padding=kernel // 2))
                names.append(name)
            self._stage1[branch] = names
        stage_input = BODY_PAFS + BODY_HEATMAPS + FEATURES
        self._stages = [
            {branch: _refinement(self, f"stage{stage}_{branch}", stage_input, cout)
             for branch, cout in (("L1", BODY_PAFS), ("L2", BODY_HEATMAPS))}
            for stage in range(2, STAGES + 1)
        ]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = _run_front(self, self._front, x)
        pafs = _run_branch(self, self._stage1["L1"], features)
        heatmaps = _run_branch(self, self._stage1["L2"], features)
        for index, stage in enumerate(self._stages):
            joined = torch.cat([pafs, heatmaps, features], 1)
            last = index == len(self._stages) - 1
            pafs = _run_branch(self, stage["L1"], joined)
            heatmaps = _run_branch(self, stage["L2"], joined, relu_last=last)  # the reference's quirk
        return pafs, heatmaps


class KeypointNetwork(nn.Module):
    """The OpenPose hand (22 maps) or face (71 maps) network; ``forward`` returns the last stage's maps
    (B, maps, H/8, W/8)."""

    def __init__(self, maps: int) -> None:
        super().__init__()
        self._front = _front(self, _VGG_FRONT + _KEYPOINT_FRONT_TAIL)
        self.conv6_1_CPM = NnpackConv2d(FEATURES, 512, 1)
        self.conv6_2_CPM = NnpackConv2d(512, maps, 1)
        self._stages = [_refinement(self, f"stage{stage}", maps + FEATURES, maps) for stage in range(2, STAGES + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = _run_front(self, self._front, x)
        maps = self.conv6_2_CPM(F.relu_(self.conv6_1_CPM(features)))
        for names in self._stages:
            maps = _run_branch(self, names, torch.cat([maps, features], 1))
        return maps


def body_network() -> BodyPoseNetwork:
    return BodyPoseNetwork()


def hand_network() -> KeypointNetwork:
    return KeypointNetwork(HAND_MAPS)


def face_network() -> KeypointNetwork:
    return KeypointNetwork(FACE_MAPS)


def to_channels_last(model: nn.Module) -> nn.Module:
    """The network with its weights in channels-last memory format (oneDNN's fast NHWC convolutions)."""
    return model.to(memory_format=torch.channels_last)


class OpenposeNetworks(nn.Module):
    """The networks an openpose annotator runs: the body network, and the hand and face networks when
    their options ask for them (None otherwise)."""

    def __init__(self, body: nn.Module, hand: nn.Module | None = None, face: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.hand = hand
        self.face = face
