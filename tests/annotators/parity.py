"""Helpers of the annotator parity tests: how far two uint8 guides agree, and a hook that records what a
network receives and returns (ours and the reference's, compared tensor for tensor)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int]:
    """(share of pixels within 1 level, largest difference) of two uint8 guides."""
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    return float((diff <= 1).mean()), int(diff.max())


class Capture:
    """Records a module's first input and its output on its next forward (the last one of a list or tuple
    of outputs when ``last_of_many``: networks whose fused map comes last)."""

    def __init__(self, module: torch.nn.Module, last_of_many: bool = False) -> None:
        self.handle = module.register_forward_hook(self._hook)
        self.last_of_many = last_of_many
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None

    def _hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.last_of_many and isinstance(output, (list, tuple)):
            output = output[-1]
        self.input, self.output = args[0].detach().clone(), output.detach().clone()
        self.handle.remove()


def sharing_network(annotator: Any, **options: Any) -> Any:
    """Another annotator of the same class with ``options`` (on the CPU), sharing the loaded network."""
    return type(annotator)(type(annotator).Options(device="cpu", **options), model=annotator.model)


def assert_batches_match_singles(batched: Any, single: Any, images: list[np.ndarray], max_diff: int = 1) -> None:
    """Each guide of ``batched.annotate_batch(images)`` has its input's size and is within ``max_diff``
    levels of ``single.annotate`` of that image (order kept)."""
    for got, image in zip(batched.annotate_batch(images), images, strict=True):
        expected = single.annotate(image)
        assert got.shape == image.shape[:2]
        difference = int(np.abs(got.astype(int) - expected).max())
        assert difference <= max_diff, f"batched guide differs from the single one by {difference} levels"
