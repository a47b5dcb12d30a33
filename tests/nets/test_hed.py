"""Our HED network (guides.nets.hed) against controlnet_aux's ``ControlNetHED_Apache2``: same keys, same
side outputs, and ``forward``'s fusion equal to the reference detector's NumPy fusion (cv2 INTER_LINEAR
resizes, mean, sigmoid)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from guides.nets.hed import HedNetwork, to_channels_last
from guides.weights.load import load_state_dict_into


def _reference(seed: int = 0) -> torch.nn.Module:
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(seed)
    model = ControlNetHED_Apache2().eval()
    with torch.no_grad():
        model.norm.copy_(torch.tensor([123.7, 116.3, 103.5]).view(1, 3, 1, 1))
        # Deeper side outputs of random weights are tiny: scale them up so every one matters.
        for index, scale in enumerate((1.0, 4.0, 60.0, 600.0, 3000.0), start=1):
            getattr(model, f"block{index}").projection.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, HedNetwork]:
    reference = _reference()
    ours = load_state_dict_into(HedNetwork, {k: v.clone() for k, v in reference.state_dict().items()},
                                path="ControlNetHED.pth")
    return reference, to_channels_last(ours)


def test_keys_are_the_checkpoints() -> None:
    from controlnet_aux.hed import ControlNetHED_Apache2

    theirs = {key: tuple(value.shape) for key, value in ControlNetHED_Apache2().state_dict().items()}
    ours = {key: tuple(value.shape) for key, value in HedNetwork().state_dict().items()}
    assert ours == theirs and len(ours) == 37


@pytest.mark.parametrize("height, width", [(64, 96), (80, 48), (37, 53)])
def test_side_outputs_and_fusion_equal_the_reference(pair, make_photo, height: int, width: int) -> None:
    reference, ours = pair
    image = make_photo(3, height, width)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    with torch.inference_mode():
        theirs_sides = [side.numpy()[0, 0] for side in reference(x)]
        ours_sides = [side.numpy()[0, 0] for side in ours.side_outputs(x.contiguous(memory_format=torch.channels_last))]
        fused = ours(x).numpy()[0]
    for index, (a, b) in enumerate(zip(ours_sides, theirs_sides)):
        assert a.shape == b.shape
        scale = max(float(np.abs(b).max()), 1.0)
        assert np.abs(a - b).max() <= 1e-4 * scale, f"side output {index + 1}"
        assert b.std() > 0.3, f"side output {index + 1} too flat to test ({b.std():.3g})"
    resized = [cv2.resize(side, (width, height), interpolation=cv2.INTER_LINEAR) for side in theirs_sides]
    expected = 1 / (1 + np.exp(-np.mean(np.stack(resized, axis=2), axis=2).astype(np.float64)))
    assert fused.shape == (height, width) and fused.dtype == np.float32
    assert np.abs(fused - expected).max() <= 1e-5


def test_bf16_runs(pair, make_photo) -> None:
    _, ours = pair
    x = torch.from_numpy(make_photo(4, 64, 64)).permute(2, 0, 1)[None]
    model = HedNetwork()
    model.load_state_dict(ours.state_dict())
    model = to_channels_last(model.to(torch.bfloat16))
    with torch.inference_mode():
        edge32 = ours(x.float())
        edge16 = model(x.to(torch.bfloat16))
    assert edge16.dtype == torch.float32
    assert (edge16 - edge32).abs().max().item() < 0.1
