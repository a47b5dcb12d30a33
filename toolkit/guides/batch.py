"""The batch engine: files and folders in, guides out.

* **Planning** (``plan_jobs``): inputs are any mix of files and folders; folders are walked
  recursively for image suffixes. Each input gets one output path per stage (annotator), following
  one naming rule (``output_path``). Clashes and outputs that would overwrite an input are refused.
* **Running** (``run_jobs``): decoding and encoding/writing run in a pool of ``workers`` threads
  (OpenCV and Pillow release the GIL), annotating runs in the calling thread in batches, and a small
  bounded window of images in flight keeps memory flat whatever the number of files.
* **Safety**: bad files become ``Failure`` lines and the batch goes on; outputs are written atomically
  (temporary file + rename), and existing outputs are skipped unless ``overwrite``, so a rerun resumes.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Union

import numpy as np

from .errors import GuidesError, InputError
from .imaging import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, TEMP_MARK, load_image, remove_stale_temp_files, write_png_atomic

logger = logging.getLogger(__name__)

GuideResult = Union[np.ndarray, tuple[np.ndarray, ...]]


class Stage(Protocol):
    """What the engine needs of an annotator (``guides.annotators.base.Annotator`` fits)."""

    @property
    def batch_size(self) -> int: ...

    def annotate_batch(self, images: Sequence[np.ndarray]) -> Sequence[GuideResult]: ...

    def batch_key(self, image: np.ndarray) -> Hashable: ...


@dataclasses.dataclass(frozen=True)
class Job:
    """One input file and, per stage name, the output file(s) its guide(s) go to."""

    source: Path
    outputs: Mapping[str, tuple[Path, ...]]


@dataclasses.dataclass(frozen=True)
class Failure:
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class Summary:
    """What a batch did; ``failed`` holds one line per failed file."""

    written: int = 0
    skipped: int = 0
    failed: list[Failure] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.written + self.skipped + len(self.failed)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def as_dict(self) -> dict[str, object]:
        return {
            "written": self.written,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "total": self.total,
            "seconds": round(self.seconds, 3),
            "failures": [dataclasses.asdict(failure) for failure in self.failed],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def text(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        return (
            f"written {self.written}, skipped {self.skipped}, failed {len(self.failed)} "
            f"({self.seconds:.1f} s, {rate:.1f} files/s)"
        )


# --------------------------------------------------------------------------------------------- plan


def output_path(source: Path, stage: str) -> Path:
    """The naming rule without ``-o``: ``photo.jpg`` -> ``photo.<stage>.png`` beside the input."""
    return source.with_name(f"{source.stem}.{stage}.png")


def is_own_output(path: Path, stage_names: Iterable[str]) -> bool:
    """True for files this naming rule produces (so walking a folder twice never re-annotates them)."""
    name = path.name.lower()
    return any(name.endswith(f".{stage}.png") for stage in stage_names)


def walk_images(folder: Path, skip: Callable[[Path], bool] = lambda path: False) -> Iterator[Path]:
    """Image files under ``folder``, recursively, in sorted order; hidden temp files and ``skip`` excluded."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if TEMP_MARK in name or not name.lower().endswith(IMAGE_SUFFIXES):
                continue
            path = Path(root) / name
            if not skip(path):
                yield path


def plan_jobs(
    inputs: Sequence[str | os.PathLike],
    stages: Sequence[str],
    output: str | os.PathLike | None = None,
    per_stage_folders: bool = False,
    own_outputs: Iterable[str] = (),
) -> tuple[list[Job], list[Failure]]:
    """Turn command-line inputs into jobs.

    * ``output is None``: each guide goes beside its input as ``<stem>.<stage>.png``; files with such
      names (for any name in ``own_outputs``) are not walked as inputs.
    * ``output`` ending in ``.png`` with one file input and one stage: that exact file.
    * otherwise ``output`` is a folder: ``OUT/<relative path>.png`` (``OUT/<stage>/<relative path>.png``
      when ``per_stage_folders``); a file input's relative path is its name, a folder input's files
      keep their path relative to that folder.
    """
    own = tuple(own_outputs) or tuple(stages)
    failures: list[Failure] = []
    sources: list[tuple[Path, Path]] = []  # (file, path relative to its input root)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            skip = (lambda p: is_own_output(p, own)) if output is None else (lambda p: False)
            sources.extend((file, file.relative_to(path)) for file in walk_images(path, skip))
        elif path.exists() or path.is_symlink():
            sources.append((path, Path(path.name)))
        else:
            failures.append(Failure(str(path), "no such file or folder"))

    out = None if output is None else Path(output)
    single_file = (
        out is not None
        and len(sources) == 1
        and len(stages) == 1
        and len(inputs) == 1
        and not Path(inputs[0]).is_dir()
        and out.suffix.lower() == ".png"
        and not out.is_dir()
    )
    input_files = {_identity(source) for source, _ in sources}
    claimed: dict[Path, Path] = {}
    jobs: list[Job] = []
    for source, relative in sources:
        outputs: dict[str, tuple[Path, ...]] = {}
        for stage in stages:
            if out is None:
                target = output_path(source, stage)
            elif single_file:
                target = out
            else:
                base = out / stage if per_stage_folders else out
                target = base / relative.with_suffix(".png")
            outputs[stage] = (target,)
        problem = _output_problem(source, outputs, claimed, input_files)
        if problem:
            failures.append(Failure(str(source), problem))
            continue
        for targets in outputs.values():
            for target in targets:
                claimed[_identity(target)] = source
        jobs.append(Job(source, outputs))
    return jobs, failures


def _identity(path: Path) -> Path:
    return Path(os.path.normcase(os.path.abspath(path)))


def _output_problem(source: Path, outputs: Mapping[str, tuple[Path, ...]], claimed: Mapping[Path, Path], inputs: set[Path]) -> str | None:
    for targets in outputs.values():
        for target in targets:
            key = _identity(target)
            if key in inputs:
                return f"output {target} would overwrite an input; choose another -o"
            if key in claimed:
                return f"output {target} is also the output of {claimed[key]}; rename one of them"
    return None


# ---------------------------------------------------------------------------------------------- run


@dataclasses.dataclass
class _Pending:
    job: Job
    stages: tuple[str, ...]  # stages still to write for this job
    image: np.ndarray | None = None
    results: dict[str, GuideResult] = dataclasses.field(default_factory=dict)


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
) -> Summary:
    """Annotate every job's image with the stages it still needs and write the guides.

    ``workers`` threads decode and write (default: the number of cores); the calling thread runs the
    stages, batching images with equal ``batch_key`` up to each stage's ``batch_size``. At most a
    small window of images is held in memory at once. ``progress=None`` shows a bar on a terminal.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    summary = Summary(failed=list(failures))
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    bar = _progress_bar(len(jobs), show)
    batch_target = max((stage.batch_size for stage in stages.values()), default=1)
    window = 2 * workers + batch_target
    decoding: collections.deque[tuple[_Pending, Future[np.ndarray]]] = collections.deque()
    writing: collections.deque[tuple[_Pending, Future[None]]] = collections.deque()
    ready: list[_Pending] = []

    def fail(pending: _Pending, reason: str) -> None:
        summary.failed.append(Failure(str(pending.job.source), reason))
        bar.update(1)
        bar.set_postfix(failed=len(summary.failed), refresh=False)

    def finish_write(pending: _Pending, future: Future[None]) -> None:
        try:
            future.result()
        except GuidesError as error:
            fail(pending, _reason(error, pending.job.source))
            return
        except Exception as error:  # noqa: BLE001 - one file's failure never stops the batch
            logger.debug("writing %s failed", pending.job.source, exc_info=True)
            fail(pending, f"cannot write guide ({type(error).__name__}: {error})")
            return
        summary.written += 1
        bar.update(1)

    def drain_writes(limit: int) -> None:
        while writing and (len(writing) > limit or writing[0][1].done()):
            finish_write(*writing.popleft())

    def annotate(group: list[_Pending]) -> None:
        _annotate(group, stages, fail)
        for pending in group:
            if pending.results:
                writing.append((pending, pool.submit(_write_outputs, pending.job, pending.results)))
        drain_writes(window)

    def annotate_ready(force: bool = False) -> None:
        """Annotate full batches of equal keys; everything when forced or the buffer is too full."""
        groups: dict[Hashable, list[_Pending]] = {}
        for pending in ready:
            groups.setdefault(_group_key(stages, pending), []).append(pending)
        flush_all = force or len(ready) > 2 * batch_target
        for group in groups.values():
            if flush_all or len(group) >= batch_target:
                annotate(group)
                for pending in group:
                    ready.remove(pending)

    def take_decoded() -> None:
        pending, future = decoding.popleft()
        try:
            pending.image = future.result()
        except GuidesError as error:
            fail(pending, _reason(error, pending.job.source))
            return
        except Exception as error:  # noqa: BLE001
            logger.debug("decoding %s failed", pending.job.source, exc_info=True)
            fail(pending, f"cannot decode ({type(error).__name__}: {error})")
            return
        ready.append(pending)
        annotate_ready()

    for folder in {target.parent for job in jobs for targets in job.outputs.values() for target in targets}:
        removed = remove_stale_temp_files(folder)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, folder)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guides-io") as pool:
        try:
            for job in jobs:
                needed = tuple(name for name, targets in job.outputs.items() if overwrite or not all(t.exists() for t in targets))
                if not needed:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                pending = _Pending(job, needed)
                decoding.append((pending, pool.submit(decode, job.source, max_pixels)))
                while len(decoding) >= window:
                    take_decoded()
                drain_writes(window)
            while decoding:
                take_decoded()
            annotate_ready(force=True)
            drain_writes(0)
        except BaseException:
            for _, future in list(decoding) + list(writing):
                future.cancel()
            raise
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _group_key(stages: Mapping[str, Stage], pending: _Pending) -> Hashable:
    assert pending.image is not None
    return tuple(stage.batch_key(pending.image) for name, stage in stages.items() if name in pending.stages and stage.batch_size > 1)


def _annotate(batch: list[_Pending], stages: Mapping[str, Stage], fail: Callable[[_Pending, str], None]) -> None:
    """Run each stage over the images that need it, grouped by batch key, isolating failures."""
    for name, stage in stages.items():
        wanting = [p for p in batch if p.image is not None and name in p.stages]
        groups: dict[Hashable, list[_Pending]] = {}
        for pending in wanting:
            groups.setdefault(stage.batch_key(pending.image), []).append(pending)
        for group in groups.values():
            for start in range(0, len(group), stage.batch_size):
                chunk = group[start : start + stage.batch_size]
                for pending, result in zip(chunk, _run_stage(stage, name, chunk)):
                    if isinstance(result, Failure):
                        pending.image = None
                        pending.results.clear()
                        fail(pending, result.reason)
                    else:
                        pending.results[name] = result
    for pending in batch:
        pending.image = None  # free the decoded image as soon as its guides exist


def _run_stage(stage: Stage, name: str, chunk: list[_Pending]) -> list[GuideResult | Failure]:
    images = [p.image for p in chunk]
    try:
        results = list(stage.annotate_batch(images))  # type: ignore[arg-type]
        if len(results) != len(images):
            raise RuntimeError(f"{name} returned {len(results)} guides for {len(images)} images")
        return results
    except Exception:
        if len(chunk) > 1:  # find the image at fault; the others still get their guides
            return [result for p in chunk for result in _run_stage(stage, name, [p])]
        error = sys.exc_info()[1]
        if isinstance(error, GuidesError):
            return [Failure(str(chunk[0].job.source), _reason(error, chunk[0].job.source))]
        logger.debug("%s failed on %s", name, chunk[0].job.source, exc_info=True)
        return [Failure(str(chunk[0].job.source), f"{name} failed ({type(error).__name__}: {error})")]


def _write_outputs(job: Job, results: Mapping[str, GuideResult]) -> None:
    for name, result in results.items():
        guides = result if isinstance(result, tuple) else (result,)
        targets = job.outputs[name]
        if len(guides) != len(targets):
            raise RuntimeError(f"{name} made {len(guides)} guides for {len(targets)} outputs")
        for target, guide in zip(targets, guides):
            write_png_atomic(target, guide)


def _reason(error: GuidesError, source: Path) -> str:
    """The part of an error's message after the file name (the failure line names the file itself)."""
    if isinstance(error, InputError) and error.path == str(source):
        return error.reason
    return str(error)


class _NullBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs: object) -> None: ...
    def close(self) -> None: ...


def _progress_bar(total: int, show: bool):  # type: ignore[no-untyped-def]
    if not show:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="file", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)
