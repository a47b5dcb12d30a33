"""The local engine: a pool of threads around the calling thread, for files and folders on this machine.

* Decoding and encoding/writing run in a pool of ``workers`` threads (OpenCV and Pillow release the
  GIL); annotating runs in the calling thread in batches; a small bounded window of images in flight
  keeps memory flat whatever the number of files.
* A **staged** annotator (``guides.annotators.base.Annotator`` with ``prepare``/``predict``/``finish``,
  ``is_staged()``) runs as a pipeline: ``prepare`` in the worker that decoded the image (right after
  decoding), ``predict`` in the calling thread on batches of up to ``batch_size`` prepared items with equal
  ``item_key``, ``finish`` in the writer that then writes the guide; so CPU work before and after the
  network overlaps the device work. Any other stage gets ``annotate_batch`` on images of equal
  ``batch_key``. Both paths write the same guides and count the same failures.
* **Safety**: bad input (any ``GuidesError``: unreadable, corrupt, too large, ...) becomes a ``Failure``
  line and the batch goes on; a device out-of-memory is retried image by image and then reported for
  that file (``guides.engines.stage_calls``). Anything else is a bug: the run stops with ``InternalError``
  naming the file (pending work is cancelled; no file is half-written). Outputs are written atomically,
  and complete outputs are skipped unless ``overwrite``, so a rerun resumes (``guides.engines.resume``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..annotators.base import Annotator
from ..errors import GuidesError, InputError, InternalError
from ..imaging import DEFAULT_MAX_PIXELS, load_image
from .planning import Job
from .reasons import decode_failure_reason, failure_reason, is_out_of_memory, out_of_memory_reason, write_failure_reason
from .resume import work_to_do
from .stage_calls import Stage, run_predict, run_stage
from .summary import Failure, Summary
from .writing import GuideResult, remove_stale_temporaries, write_guides

logger = logging.getLogger(__name__)


def is_staged(stage: object) -> bool:
    """Whether the engine pipelines ``stage``'s ``prepare``/``predict``/``finish`` (an ``Annotator`` that
    implements the three) instead of calling ``annotate_batch``."""
    return isinstance(stage, Annotator) and type(stage).is_staged()


@dataclasses.dataclass
class _Pending:
    job: Job
    stages: tuple[str, ...]  # stages still to write for this job
    image: np.ndarray | None = None  # kept only while a stage that is not staged still needs it
    items: dict[str, Any] = dataclasses.field(default_factory=dict)  # staged stages: prepared items
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # staged stages: predict's outputs
    results: dict[str, GuideResult] = dataclasses.field(default_factory=dict)  # other stages: guides
    failed: bool = False


def run_jobs(
    jobs: Sequence[Job],
    stages: Mapping[str, Stage],
    *,
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    failures: Sequence[Failure] = (),
    decode: Callable[[Path, int], np.ndarray] = load_image,
    needed: Sequence[tuple[str, ...]] | None = None,
) -> Summary:
    """Annotate every job's image with the stages it still needs and write the guides.

    ``needed``: each job's ``stages_to_run``, when the caller has already worked them out (it opens every
    existing output), in the order of ``jobs``.

    ``workers`` threads decode (and ``prepare``) and write (and ``finish``) (default: the number of cores);
    the calling thread runs the stages (``predict`` of staged ones), batching images with equal
    ``batch_key`` (items with equal ``item_key``) up to each stage's ``batch_size``. At most a small window
    of images is held in memory at once. ``progress=None`` shows a bar on a terminal.

    A ``GuidesError`` (bad input, unwritable output) or an ``OSError`` while writing fails that file and
    the batch goes on; any other exception from decoding, a stage or writing raises ``InternalError``
    (path, stage, error) after cancelling the queued work and waiting for the running writes.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    summary = Summary(failed=list(failures))
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    work = work_to_do(jobs, overwrite, needed)
    bar = _progress_bar(len(jobs), show)
    staged = {name: stage for name, stage in stages.items() if is_staged(stage)}
    batch_target = max((stage.batch_size for stage in stages.values()), default=1)
    window = 2 * workers + batch_target
    decoding: collections.deque[tuple[_Pending, Future[None]]] = collections.deque()
    writing: collections.deque[tuple[_Pending, Future[None]]] = collections.deque()
    ready: list[_Pending] = []

    def fail(pending: _Pending, reason: str) -> None:
        pending.failed = True
        pending.image = None
        pending.items.clear()
        pending.outputs.clear()
        pending.results.clear()
        summary.failed.append(Failure(str(pending.job.source), reason))
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed), refresh=False)

    def finish_write(pending: _Pending, future: Future[None]) -> None:
        try:
            future.result()  # an InternalError (a bug) propagates and stops the run
        except GuidesError as error:
            fail(pending, failure_reason(error, pending.job.source))
            return
        except OSError as error:  # disk full, permissions: this file's problem, not a bug
            logger.debug("writing %s failed", pending.job.source, exc_info=True)
            fail(pending, write_failure_reason(error))
            return
        summary.written += 1
        bar.update(1)

    def drain_writes(limit: int) -> None:
        while writing and (len(writing) > limit or writing[0][1].done()):
            finish_write(*writing.popleft())

    def annotate(group: list[_Pending]) -> None:
        _annotate(group, stages, staged, fail)
        for pending in group:
            if not pending.failed and (pending.results or pending.outputs):
                task = pool.submit(_finish_and_write, pending.job, stages, staged, pending.items, pending.outputs, pending.results)
                writing.append((pending, task))
        drain_writes(window)

    def annotate_ready(force: bool = False) -> None:
        """Annotate full batches of equal keys; everything when forced or the buffer is too full."""
        groups: dict[Hashable, list[_Pending]] = {}
        for pending in ready:
            groups.setdefault(_group_key(stages, staged, pending), []).append(pending)
        flush_all = force or len(ready) > 2 * batch_target
        for group in groups.values():
            if flush_all or len(group) >= batch_target:
                annotate(group)
                for pending in group:
                    ready.remove(pending)

    def take_decoded() -> None:
        pending, future = decoding.popleft()
        try:
            future.result()
        except GuidesError as error:
            fail(pending, failure_reason(error, pending.job.source))
            return
        except InternalError:  # a bug in a stage's prepare
            raise
        except Exception as error:
            reason = decode_failure_reason(pending.job.source, error)  # raises InternalError for a bug
            logger.debug("decoding %s failed", pending.job.source, exc_info=True)
            fail(pending, reason)
            return
        ready.append(pending)
        annotate_ready()

    remove_stale_temporaries(jobs)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guides-io") as pool:
        try:
            for job, stages_left in work:
                if not stages_left:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                pending = _Pending(job, stages_left)
                decoding.append((pending, pool.submit(_decode_and_prepare, pending, decode, max_pixels, stages, staged)))
                while len(decoding) >= window:
                    take_decoded()
                drain_writes(window)
            while decoding:
                take_decoded()
            annotate_ready(force=True)
            drain_writes(0)
        except BaseException:
            # Stop cleanly: queued decodes and writes are dropped, running ones finish (writes are
            # atomic, so no output is half-written) before the error leaves the pool.
            for _, future in list(decoding) + list(writing):
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _decode_and_prepare(pending: _Pending, decode: Callable[[Path, int], np.ndarray], max_pixels: int,
                        stages: Mapping[str, Stage], staged: Mapping[str, Any]) -> None:
    """Decode one job's image and ``prepare`` it for its staged stages (worker thread). The image is
    kept only for the stages that are not staged. Errors as in ``_stage_step``."""
    source = pending.job.source
    image = decode(source, max_pixels)
    items = {}
    for name in stages:
        if name in pending.stages and name in staged:
            items[name] = _stage_step(staged[name].prepare, name, source, image)
    pending.items = items
    if any(name in pending.stages and name not in staged for name in stages):
        pending.image = image


def _stage_step(call: Callable[..., Any], name: str, source: Path, *args: Any) -> Any:
    """``call(*args)`` (a ``prepare`` or a ``finish``) for one file: a ``GuidesError`` is that file's
    failure, so is an out-of-memory (``InputError`` with the reason ``run_stage`` gives); anything else is
    a bug (``InternalError`` naming the file and the stage)."""
    try:
        return call(*args)
    except GuidesError:
        raise
    except Exception as error:
        if is_out_of_memory(error):
            raise InputError(source, out_of_memory_reason(name, error)) from error
        raise InternalError(source, name, error) from error


def _group_key(stages: Mapping[str, Stage], staged: Mapping[str, Any], pending: _Pending) -> Hashable:
    keys = []
    for name, stage in stages.items():
        if name not in pending.stages or stage.batch_size <= 1:
            continue
        if name in staged:
            keys.append(("item", staged[name].item_key(pending.items[name])))
        else:
            assert pending.image is not None
            keys.append(stage.batch_key(pending.image))
    return tuple(keys)


def _annotate(batch: list[_Pending], stages: Mapping[str, Stage], staged: Mapping[str, Any],
              fail: Callable[[_Pending, str], None]) -> None:
    """Run each stage over the images (items) that need it, grouped by key, isolating failures."""
    for name, stage in stages.items():
        wanting = [p for p in batch if not p.failed and name in p.stages]
        groups: dict[Hashable, list[_Pending]] = {}
        for pending in wanting:
            key = staged[name].item_key(pending.items[name]) if name in staged else stage.batch_key(pending.image)  # type: ignore[arg-type]
            groups.setdefault(key, []).append(pending)
        for group in groups.values():
            for start in range(0, len(group), stage.batch_size):
                chunk = group[start : start + stage.batch_size]
                sources = [p.job.source for p in chunk]
                if name in staged:
                    results = run_predict(stage, name, [p.items[name] for p in chunk], sources)
                else:
                    results = run_stage(stage, name, [p.image for p in chunk], sources)  # type: ignore[misc]
                for pending, result in zip(chunk, results):
                    if isinstance(result, Failure):
                        fail(pending, result.reason)
                    elif name in staged:
                        pending.outputs[name] = result
                    else:
                        pending.results[name] = result
    for pending in batch:
        pending.image = None  # free the decoded image as soon as its guides exist


def _finish_and_write(job: Job, stages: Mapping[str, Stage], staged: Mapping[str, Any], items: Mapping[str, Any],
                      outputs: Mapping[str, Any], results: Mapping[str, GuideResult]) -> None:
    """``finish`` the staged stages' outputs, then encode and write all of one job's guides, in stage order
    (worker thread). Errors as in ``write_guides`` and ``_stage_step``."""
    guides: dict[str, GuideResult] = {}
    for name in stages:
        if name in outputs:
            guides[name] = _stage_step(staged[name].finish, name, job.source, items[name], outputs[name])
        elif name in results:
            guides[name] = results[name]
    write_guides(job.source, job.outputs, guides)


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: object) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, show: bool):  # type: ignore[no-untyped-def]
    if not show:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
