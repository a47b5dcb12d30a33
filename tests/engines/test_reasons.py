"""Failure reasons: out of memory recognised without torch."""

from __future__ import annotations

import pytest

from guides.engines import is_out_of_memory
from tests.engines.fakes import OutOfMemoryError


@pytest.mark.parametrize(
    "error, expected",
    [
        (OutOfMemoryError("x"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
        (RuntimeError("expected scalar type Half but found Float"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_without_torch(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected
