"""The lineart generator: the ``sk_model.pth`` key layout, parity with controlnet_aux's ``Generator``
(random weights: they prove wiring and parity, not line quality), the CPU fast path's pieces, and the
half-precision bounds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from guides.errors import WeightsError
from guides.nets.informative_drawings import Generator, _single_channel_conv, instance_norm_cl, lineart_generator
from guides.weights.load import load_checkpoint_into

PARITY_BOUND = 1e-4
"""Max abs difference of the network output (in [0, 1]) from the reference, fp32 (issue 4)."""
HALF_BOUNDS = {torch.bfloat16: (0.03, 0.005), torch.float16: (0.01, 0.002)}
"""(max, mean) abs difference from fp32 of the [0, 1] output on a 64x96 input, measured about
(0.009, 0.0018) for bf16 and (0.0034, 0.0006) for fp16 with random weights."""


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    from controlnet_aux.lineart import Generator as ReferenceGenerator

    torch.manual_seed(0)
    return ReferenceGenerator(3, 1, 3).eval()


@pytest.fixture(scope="module")
def ours(reference: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Generator:
    """Our generator loaded strictly, through the weights contract, from the reference's weights saved
    as ``sk_model.pth`` is (a plain state dict)."""
    path = tmp_path_factory.mktemp("lineart") / "sk_model.pth"
    torch.save(reference.state_dict(), path)
    return load_checkpoint_into(lineart_generator, path, container="state_dict")


def test_state_dict_layout_is_the_checkpoints(reference: torch.nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in lineart_generator().state_dict().items()}
    assert got == expected
    assert "model0.1.weight" in got and "model2.2.conv_block.5.bias" in got and len(got) == 24


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 30, 42), (1, 3, 5, 7)])
def test_forward_matches_reference(reference: torch.nn.Module, ours: Generator, shape: tuple[int, ...]) -> None:
    """Multiples of 4, other sizes (the reference's output is then larger: ours must be too) and a batch."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = reference(x)
        fast = ours(x)
        plain = ours.reference_forward(x)
    assert fast.shape == expected.shape
    diff = (fast - expected).abs().max().item()
    assert diff <= PARITY_BOUND, f"fast path differs from the reference by {diff:.3g}"
    assert torch.equal(plain, expected), "the plain layer stack must be the reference bit for bit"
    assert expected.std().item() > 0.01, "random weights gave a flat output: the comparison would be trivial"


def test_channels_last_and_nchw_inputs_agree(ours: Generator) -> None:
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a = ours(x)
        b = ours(x.contiguous(memory_format=torch.channels_last))
    assert (a - b).abs().max().item() <= 1e-6


@pytest.mark.parametrize("shape", [(1, 8, 64, 64), (2, 5, 7, 9), (1, 3, 1, 1), (1, 2, 1, 2)])
@pytest.mark.parametrize("relu", [True, False])
def test_instance_norm_cl_is_accurate(shape: tuple[int, ...], relu: bool) -> None:
    """Large per-channel offsets: the case where PyTorch's channels-last norm kernels lose precision."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=generator) * 3 + torch.randn(1, shape[1], 1, 1, generator=generator) * 20
    x64 = x.double()
    mean = x64.mean(dim=(2, 3), keepdim=True)
    variance = x64.var(dim=(2, 3), keepdim=True, correction=0)
    expected = ((x64 - mean) / torch.sqrt(variance + 1e-5)).float()  # F.instance_norm, also for 1x1 maps
    if shape[2] * shape[3] > 1:
        assert (expected - F.instance_norm(x)).abs().max().item() <= 1e-4
    if relu:
        expected = expected.relu()
    got = instance_norm_cl(x.contiguous(memory_format=torch.channels_last), relu=relu)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - expected).abs().max().item() <= 2e-6


def test_single_channel_conv_is_the_reflect_padded_conv() -> None:
    torch.manual_seed(4)
    conv = torch.nn.Conv2d(16, 1, 7)
    h = torch.randn(2, 16, 20, 13)
    with torch.inference_mode():
        expected = conv(F.pad(h, (3, 3, 3, 3), mode="reflect"))
        got = _single_channel_conv(h, conv, pad=3)
        other = torch.nn.Conv2d(16, 2, 7)  # not single-channel: falls back to the plain conv
        fallback = _single_channel_conv(h, other, pad=3)
        plain = other(F.pad(h, (3, 3, 3, 3), mode="reflect"))
    assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(fallback, plain)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_within_bound(ours: Generator, dtype: torch.dtype) -> None:
    """Both run on the CPU here (fp16 slowly: the annotator refuses it on the CPU, CUDA runs it)."""
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    model = lineart_generator()
    model.load_state_dict(ours.state_dict())
    with torch.inference_mode():
        expected = ours(x)
        got = model.to(dtype).eval()(x.to(dtype)).float()
    diff = (got - expected).abs()
    max_bound, mean_bound = HALF_BOUNDS[dtype]
    assert diff.max().item() <= max_bound and diff.mean().item() <= mean_bound, (
        f"{dtype}: max {diff.max().item():.4f} (bound {max_bound}), mean {diff.mean().item():.5f} (bound {mean_bound})"
    )


def test_strict_loading_names_the_wrong_keys(reference: torch.nn.Module, tmp_path) -> None:
    state = dict(reference.state_dict())
    state["model9.weight"] = torch.zeros(1)
    del state["model4.1.bias"]
    path = tmp_path / "sk_model.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as error:
        load_checkpoint_into(lineart_generator, path, container="state_dict")
    assert "model4.1.bias" in str(error.value) and "model9.weight" in str(error.value)


@pytest.mark.parametrize("bias, expected", [(0.0, 0.5), (math.log(3), 0.75), (-math.log(4), 0.2)])
def test_known_weights_give_the_known_output(bias: float, expected: float) -> None:
    """All weights zero and the head's bias b: every pixel of the output is sigmoid(b) exactly (the stem and
    the norms see constants), at the input's size, on the fast path and the plain one; without the
    sigmoid the output is b itself."""
    model = lineart_generator()
    raw = Generator(3, 1, 3, sigmoid=False)
    with torch.no_grad():
        for network in (model, raw):
            for parameter in network.parameters():
                parameter.zero_()
            network.model4[1].bias.fill_(bias)
    x = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        outputs = {"fast": model(x), "plain": model.reference_forward(x), "raw": raw(x), "raw plain": raw.reference_forward(x)}
    for name, out in outputs.items():
        assert out.shape == (2, 1, 20, 28), name
        value = bias if name.startswith("raw") else expected
        assert torch.allclose(out, torch.full_like(out, value), rtol=0, atol=1e-6), f"{name}: {out.min().item()}..{out.max().item()}"
