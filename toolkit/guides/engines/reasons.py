"""The one-line reasons of failed files, shared by both engines: bad input, out of memory, decode, write.

A ``GuidesError`` (bad input, unwritable output) and an out-of-memory are one file's failure; any other
exception is a bug, raised as ``InternalError`` naming the file and the stage.
"""

from __future__ import annotations

import os

from ..errors import GuidesError, InputError, InternalError
from ..imaging import first_line


def failure_reason(error: GuidesError, source: str | os.PathLike) -> str:
    """The part of an error's message after the file name (the failure line names the file itself)."""
    if isinstance(error, InputError) and error.path == str(source):
        return error.reason
    return str(error)


def is_out_of_memory(error: BaseException) -> bool:
    """A device or host out-of-memory, recognised without importing torch: ``MemoryError``, any class
    named ``OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``, ...), or a ``RuntimeError`` saying
    "out of memory" / "can't allocate memory" (CUDA, MPS and CPU allocators)."""
    if isinstance(error, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return "out of memory" in text or "can't allocate memory" in text
    return False


def out_of_memory_reason(name: str, error: BaseException) -> str:
    """The failure line of an image that ran out of memory even alone: what happened and what to change."""
    return (f"{name} ran out of memory on this image ({type(error).__name__}: {first_line(error)}); "
            "try a smaller --batch-size, a lower --resolution or --precision fp16/bf16")


def decode_failure_reason(path: str | os.PathLike, error: Exception) -> str:
    """The failure line of a decode that raised ``error`` (not a ``GuidesError``): out of memory is one
    file's failure; anything else is a bug in the reader and raises ``InternalError``."""
    if is_out_of_memory(error):
        return f"cannot decode: out of memory ({type(error).__name__}: {first_line(error)}); try fewer --jobs"
    raise InternalError(path, "decode", error) from error


def write_failure_reason(error: OSError) -> str:
    """The failure line of an ``OSError`` met while writing (disk full, permission denied, ...)."""
    return f"cannot write guide: {error.strerror or error}"
