"""Skip and resume, shared by both engines: a job's stages whose outputs are not complete (PNGs, and the
JSON sidecars of ``guides.engines.sidecars``) are run again (all of them with ``overwrite``); the others are
skipped, so a rerun of a killed batch resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence

from .planning import Job

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


#: A sidecar larger than this is not read to decide whether it is complete (it is then taken as complete
#: when it ends with the closing brace and newline every sidecar ends with).
_JSON_READ_LIMIT = 8 << 20


def output_is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a whole output: a PNG with its signature first and the IEND chunk last (two
    small reads); a ``.json`` sidecar that parses as a JSON object.

    What decides "already done" when a batch resumes: a zero-byte file, a truncated one or anything
    else at an output path is written again, not counted as done.
    """
    if str(path).lower().endswith(".json"):
        return _json_is_complete(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < len(_PNG_SIGNATURE) + len(_PNG_END):
                return False
            head = handle.read(len(_PNG_SIGNATURE))
            handle.seek(size - len(_PNG_END))
            tail = handle.read(len(_PNG_END))
    except OSError:
        return False
    return head == _PNG_SIGNATURE and tail == _PNG_END


def _json_is_complete(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > _JSON_READ_LIMIT:
                handle.seek(size - 2)
                return handle.read(2) == b"}\n"
            data = handle.read()
    except OSError:
        return False
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def stages_to_run(job: Job, overwrite: bool = False) -> tuple[str, ...]:
    """The stages of ``job`` whose outputs are not all complete (every stage with ``overwrite``)."""
    return tuple(name for name, targets in job.outputs.items()
                 if overwrite or not all(output_is_complete(target) for target in targets))


def work_to_do(jobs: Sequence[Job], overwrite: bool = False,
               needed: Sequence[tuple[str, ...]] | None = None) -> Iterator[tuple[Job, tuple[str, ...]]]:
    """Each job with the stages it still needs (empty: skip it), lazily, in job order. ``needed``: the
    callers' own ``stages_to_run`` of every job, when already worked out (it opens every existing output)."""
    if needed is not None and len(needed) != len(jobs):
        raise ValueError(f"needed has {len(needed)} entries for {len(jobs)} jobs")
    if needed is not None:
        return zip(jobs, needed)
    return ((job, stages_to_run(job, overwrite)) for job in jobs)
