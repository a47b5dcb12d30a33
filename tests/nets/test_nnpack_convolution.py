"""NnpackConv2d (guides.nets.nnpack_convolution): NNPACK's result within float rounding of ``nn.Conv2d``'s,
batch-invariant and bit-stable, and ``nn.Conv2d``'s own path (bit-equal) wherever NNPACK does not apply."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from guides.nets.nnpack_convolution import NnpackConv2d, nnpack_available, runs_on_nnpack, set_nnpack

pytestmark = pytest.mark.skipif(not nnpack_available(), reason="this torch build or CPU has no NNPACK")


def layer(cin: int, cout: int, kernel: int, **kwargs) -> NnpackConv2d:
    torch.manual_seed(0)
    conv = NnpackConv2d(cin, cout, kernel, **kwargs).eval()
    with torch.no_grad():
        conv.bias.normal_(0, 0.1)
    return conv


@pytest.mark.parametrize("kernel, padding, size", [(3, 1, (37, 29)), (7, 3, (23, 23)), (7, 3, (1, 5)), (3, 0, (9, 9))])
def test_matches_conv2d_within_rounding(kernel: int, padding: int, size: tuple[int, int]) -> None:
    conv = layer(24, 16, kernel, padding=padding)
    x = torch.randn(3, 24, *size)
    with torch.inference_mode():
        assert conv.uses_nnpack(x)
        got = conv(x)
        expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=padding)
        plain = F.conv2d(x, conv.weight, conv.bias, padding=padding)
    scale = float(expected.abs().max())
    error = float((got.double() - expected).abs().max()) / scale
    plain_error = float((plain.double() - expected).abs().max()) / scale
    assert got.shape == plain.shape
    assert error <= 2e-5, f"NNPACK relative error {error:.2e} (oneDNN's {plain_error:.2e})"
    assert not torch.equal(got, plain), "NNPACK's algorithm must be the one that ran (its rounding differs)"


def test_batch_invariant_and_bit_stable() -> None:
    """Each image of a batch gives the bits it gives alone (NNPACK's batched mode would not), every time."""
    conv = layer(16, 8, 3, padding=1)
    x = torch.randn(4, 16, 20, 20)
    with torch.inference_mode():
        batch = conv(x)
        for i in range(len(x)):
            assert torch.equal(batch[i:i + 1], conv(x[i:i + 1]))
        assert torch.equal(batch, conv(x))
        assert torch.equal(conv(x), conv(x.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize("case", ["1x1", "stride", "dilation", "groups", "bf16", "reflect", "turned off", "grad"])
def test_other_cases_run_conv2d_unchanged(case: str) -> None:
    kwargs = {"1x1": {"kernel_size": 1}, "stride": {"stride": 2, "padding": 1}, "dilation": {"dilation": 2, "padding": 2},
              "groups": {"groups": 2, "padding": 1}, "reflect": {"padding": 1, "padding_mode": "reflect"}}.get(case, {"padding": 1})
    conv = layer(16, 8, kwargs.pop("kernel_size", 3), **kwargs)
    x = torch.randn(2, 16, 12, 12, requires_grad=case == "grad")
    if case == "bf16":
        conv, x = conv.bfloat16(), x.bfloat16()
    if case == "turned off":
        set_nnpack(conv, False)
    assert not conv.uses_nnpack(x)
    with torch.set_grad_enabled(case == "grad"):
        assert torch.equal(conv(x), torch.nn.Conv2d.forward(conv, x))


def test_runs_on_nnpack_only_for_cpu_fp32() -> None:
    assert runs_on_nnpack(torch.device("cpu"), torch.float32)
    assert not runs_on_nnpack(torch.device("cpu"), torch.bfloat16)
    assert not runs_on_nnpack(torch.device("cuda"), torch.float32)


def test_loads_conv2d_state_dict_unchanged() -> None:
    source = torch.nn.Conv2d(4, 6, 3, padding=1)
    conv = NnpackConv2d(4, 6, 3, padding=1)
    conv.load_state_dict(source.state_dict(), strict=True)
    assert list(conv.state_dict()) == ["weight", "bias"]
