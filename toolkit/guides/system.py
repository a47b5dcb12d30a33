"""Process-wide settings that the library never makes by itself: the caller opts in.

``tune_allocator`` changes glibc's ``malloc`` thresholds for the whole process and for the rest of its
life, so importing ``guides`` or loading an annotator never calls it. The ``guides`` command calls it
when ``GUIDES_MALLOC_TUNING=1`` is set; a Python program calls ``guides.tune_allocator()`` itself.
Imports only the standard library.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: Allocations below this many bytes are served from glibc's heap once ``tune_allocator`` ran.
HEAP_ALLOCATION_LIMIT = 1 << 30
#: The environment variable with which the ``guides`` command opts in (``1``: tune).
TUNING_ENV = "GUIDES_MALLOC_TUNING"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(limit: int = HEAP_ALLOCATION_LIMIT) -> bool:
    """Ask glibc to serve allocations up to ``limit`` bytes from its heap and to keep freed heap memory.

    Why: by default glibc maps every allocation over 32 MB afresh, so each large activation of SAM's
    mask decoder (64 prompts x 4096 image tokens x 256 channels = 268 MB) is page-faulted and zeroed by
    the kernel again; measured on the 2-core CPU machine, about 40% of the CPU time of ``guides sam``
    (``bench/bench_sam.py --breakdown``). Values computed are unaffected.

    The cost, and why it is opt-in: the setting is **process-wide and permanent** (every later
    allocation of the host program, not only ours), and the process keeps its peak heap for reuse
    instead of returning it to the system. The same setting, for any program and its children, is
    glibc's own ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` environment variables.

    Returns whether the setting was made (False: not Linux with glibc, or glibc refused the value).
    """
    if not 0 < limit < 1 << 31:
        raise ValueError(f"limit must be between 1 and 2**31 - 1 bytes, got {limit}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    done = mallopt(_M_MMAP_THRESHOLD, limit) == 1 and mallopt(_M_TRIM_THRESHOLD, limit) == 1
    log.info("glibc heap for allocations under %d bytes (process-wide): %s", limit, "on" if done else "refused")
    return done


def tuning_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``GUIDES_MALLOC_TUNING=1`` is set (the ``guides`` command's opt-in)."""
    return (os.environ if environ is None else environ).get(TUNING_ENV, "").strip() == "1"
