"""Writing guides, shared by both engines: each output atomically (temporary file + rename, so no file is
ever half-written) and, before a run, the temporary files of killed runs removed from the output folders."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

from ..errors import GuidesError, InternalError
from ..imaging import remove_stale_temp_files, write_atomic, write_png_atomic
from .planning import Job

logger = logging.getLogger(__name__)

#: What a stage makes for one image: one guide, or a tuple of outputs for a stage with several (guides, and
#: a sidecar document: a JSON-serialisable dict, ``guides.engines.sidecars``).
GuideResult = Union[np.ndarray, tuple[Union[np.ndarray, dict], ...]]


def encode_json(document: Mapping[str, object]) -> bytes:
    """A sidecar document as the bytes of its JSON file (UTF-8, one trailing newline)."""
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def remove_stale_temporaries(jobs: Sequence[Job]) -> int:
    """Delete the temporary files that killed runs of this host left in the jobs' output folders
    (``guides.imaging.remove_stale_temp_files``); how many were removed."""
    total = 0
    for folder in {target.parent for job in jobs for targets in job.outputs.values() for target in targets}:
        removed = remove_stale_temp_files(folder)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, folder)
        total += removed
    return total


def write_guides(source: str | os.PathLike, targets: Mapping[str, Sequence[str | os.PathLike]],
                 results: Mapping[str, GuideResult]) -> None:
    """Encode and write one image's guides (``results`` per stage) to their ``targets``, in stage order.

    ``GuidesError`` and ``OSError`` are this file's failure; anything else (a guide that is not an image
    array, a wrong number of guides) is a bug: ``InternalError(source, stage, error)``."""
    for name, result in results.items():
        try:
            guides = result if isinstance(result, tuple) else (result,)
            paths = targets[name]
            if len(guides) != len(paths):
                raise RuntimeError(f"{name} made {len(guides)} guides for {len(paths)} outputs")
            for target, guide in zip(paths, guides):
                if isinstance(guide, Mapping):
                    write_atomic(target, encode_json(guide))
                else:
                    write_png_atomic(target, guide)
        except (GuidesError, OSError):
            raise
        except Exception as error:
            raise InternalError(source, name, error) from error
