"""The OpenPose networks (guides.nets.openpose) against controlnet_aux's modules under identical random
weights, loaded from files in the public on-disk formats (body and hand: the reference's keys without their
block prefix; face: ``FaceNet``'s plain state dict), strictly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from guides.errors import WeightsError
from guides.nets.nnpack_convolution import nnpack_available, set_nnpack
from guides.nets.openpose import body_network, face_network, hand_network, to_channels_last
from guides.weights.load import load_checkpoint_into

RELATIVE_BOUND = 1e-4
"""Largest difference allowed, relative to the largest output magnitude (float rounding only)."""


def on_disk(model: torch.nn.Module, strip_block: bool) -> dict[str, torch.Tensor]:
    """The state dict as the public file holds it: without the block name (``model0.conv1_1.weight`` ->
    ``conv1_1.weight``) for the body and hand files, unchanged for facenet.pth."""
    state = model.state_dict()
    return {key.split(".", 1)[1] if strip_block else key: value for key, value in state.items()}


def reference(kind: str, seed: int = 0) -> torch.nn.Module:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    torch.manual_seed(seed)
    model = {"body": bodypose_model, "hand": handpose_model, "face": FaceNet}[kind]().eval()
    with torch.no_grad():  # FaceNet zeroes its biases: give them values so they are tested too
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.bias.normal_(0, 0.02)
    return model


BUILDERS = {"body": body_network, "hand": hand_network, "face": face_network}


@pytest.mark.parametrize("kind, size", [("body", (64, 48)), ("hand", (64, 64)), ("face", (48, 56))])
def test_forward_matches_reference(kind: str, size: tuple[int, int], tmp_path: Path) -> None:
    model = reference(kind)
    path = tmp_path / f"{kind}.pth"
    torch.save(on_disk(model, strip_block=kind != "face"), path)
    ours = load_checkpoint_into(BUILDERS[kind], path, container="state_dict")
    torch.manual_seed(1)
    x = torch.rand(2, 3, *size) - 0.5
    with torch.inference_mode():
        expected = model(x)
        expected = expected[-1] if kind == "face" else expected
        expected = expected if isinstance(expected, tuple) else (expected,)
        oneDNN = to_channels_last(set_nnpack(copy.deepcopy(ours), False))
        runs = {"nnpack": (ours, x), "oneDNN channels-last": (oneDNN, x.contiguous(memory_format=torch.channels_last))}
        assert nnpack_available(), "this CPU build of torch has NNPACK: the fast path must be the one tested"
        for path_name, (network, inputs) in runs.items():
            got = network(inputs)
            got = got if isinstance(got, tuple) else (got,)
            for a, b in zip(got, expected, strict=True):
                assert a.shape == b.shape
                scale = float(b.abs().max())
                assert scale > 0
                error = float((a - b).abs().max()) / scale
                assert error <= RELATIVE_BOUND, f"{kind}, {path_name}: relative error {error:.2e}"
    if kind == "body":  # the reference's quirk: the final heatmaps are rectified, the fields are not
        pafs, heatmaps = expected
        assert float(heatmaps.min()) >= 0 and float(pafs.min()) < 0


def test_prefixed_keys_are_refused(tmp_path: Path) -> None:
    """A body file holding the reference module's own keys (``model0.``...) is not the public format:
    refused, naming keys, never loaded partially."""
    path = tmp_path / "body_pose_model.pth"
    torch.save(reference("body").state_dict(), path)
    with pytest.raises(WeightsError) as raised:
        load_checkpoint_into(body_network, path, container="state_dict")
    assert "184 missing" in str(raised.value) and "model0.conv1_1.weight" in str(raised.value)
