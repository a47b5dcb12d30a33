"""A ``Conv2d`` that runs on NNPACK's fast convolution algorithms on the CPU (Winograd for 3x3 kernels, FFT
for larger ones), for the large fp32 VGG-style networks (OpenPose) whose time is almost all 3x3 and 7x7
convolutions.

Why: on the CPU, oneDNN's direct convolution already runs these layers at about the machine's measured
matrix-multiply peak (75 GFLOP/s on 2 AVX2 cores, against 62 for MKL's sgemm), so only an algorithm with fewer
multiplications is faster. NNPACK (built into PyTorch's CPU wheels) runs the OpenPose hand network 2.2x
faster than oneDNN on 2 cores (1.4 s against 3.2 s at 368x368), with an error against a float64 run of the
same size as oneDNN's (6.7e-6 against 7.3e-6 relative to the output's range; bench/RESULTS.md).

Kept deterministic and batch-invariant: NNPACK's batched mode is a different (training) algorithm, 7x slower
and not bit-equal to single images, so a batch runs one image at a time; the same image gives the same bits
whatever batch it is in, and reruns are bit-identical.

Used only where it applies (``uses_nnpack``): CPU, float32, no gradient, stride 1, no dilation or groups,
zero padding smaller than the kernel, kernels from 2 to 16; anything else (CUDA, bf16, 1x1 convolutions,
where NNPACK is a plain matrix product) runs ``nn.Conv2d``'s own path. NNPACK's thread pool is created on its
first use with ``torch.get_num_threads()`` threads at that moment, and keeps that size.

The class keeps ``nn.Conv2d``'s parameters and names, so checkpoints load into it unchanged.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.cache
def nnpack_available() -> bool:
    """Whether this PyTorch build has NNPACK and this CPU runs it (the call also initialises NNPACK, which
    ``torch._nnpack_spatial_convolution`` needs before its first use)."""
    query = getattr(torch, "_nnpack_available", None)
    return bool(query and hasattr(torch, "_nnpack_spatial_convolution") and query())


class NnpackConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose forward uses NNPACK where ``uses_nnpack`` says so; ``nnpack`` (True by default)
    turns that off for this layer (``set_nnpack``)."""

    nnpack: bool = True

    def uses_nnpack(self, x: torch.Tensor) -> bool:
        kernel = self.kernel_size
        return (
            self.nnpack
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and x.dim() == 4
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and self.stride == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and all(1 < k <= 16 and 0 <= p < k for k, p in zip(kernel, self.padding))
            and nnpack_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_nnpack(x):
            return super().forward(x)
        weight = self.weight.contiguous()
        bias = self.bias if self.bias is not None else torch.zeros(self.out_channels, dtype=x.dtype)
        padding = [int(self.padding[0]), int(self.padding[1])]
        images = [torch._nnpack_spatial_convolution(x[i:i + 1].contiguous(), weight, bias, padding, [1, 1])
                  for i in range(x.shape[0])]
        return images[0] if len(images) == 1 else torch.cat(images)


def set_nnpack(model: nn.Module, enabled: bool) -> nn.Module:
    """``model`` with NNPACK turned on or off in every ``NnpackConv2d`` it holds (for comparisons and for
    callers that need oneDNN's numbers)."""
    for module in model.modules():
        if isinstance(module, NnpackConv2d):
            module.nnpack = enabled
    return model


def runs_on_nnpack(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``NnpackConv2d`` layers of a network on ``device`` in ``dtype`` take the NNPACK path (then the
    network should stay in the default NCHW memory format NNPACK reads without a copy)."""
    return device.type == "cpu" and dtype == torch.float32 and nnpack_available()
