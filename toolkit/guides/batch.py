"""The batch engine: files and folders in, guides out.

* **Planning** (``plan_jobs``): inputs are any mix of files and folders; folders are walked
  recursively for image suffixes. Each input gets one output path per stage (annotator), following
  one naming rule (``output_path``). Clashes and outputs that would overwrite an input are refused.
* **Running** (``run_jobs``): decoding and encoding/writing run in a pool of ``workers`` threads
  (OpenCV and Pillow release the GIL), annotating runs in the calling thread in batches, and a small
  bounded window of images in flight keeps memory flat whatever the number of files.
* **Safety**: bad input (any ``GuidesError``: unreadable, corrupt, too large, ...) becomes a ``Failure``
  line and the batch goes on; a device out-of-memory is retried image by image and then reported for
  that file. Anything else is a bug: the run stops with ``InternalError`` naming the file (pending work
  is cancelled; no file is half-written). Outputs are written atomically (temporary file + rename), and
  complete outputs are skipped unless ``overwrite``, so a rerun resumes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, Union

import numpy as np

from .errors import GuidesError, InputError, InternalError, UsageError
from .imaging import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, TEMP_MARK, first_line, load_image, remove_stale_temp_files, write_png_atomic

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


#: Output names of the commands that are not annotators: ``inpaint-target`` writes ``<stem>.target.png``
#: (beside ``<stem>.mask.png``), ``composite`` writes ``<stem>.composite.png``.
EXTRA_OUTPUT_NAMES = ("target", "composite")


def output_names() -> tuple[str, ...]:
    """Every ``NAME`` some guides command writes as ``<stem>.NAME.png``: the registered annotators and
    ``EXTRA_OUTPUT_NAMES``. Folder walks never take such files as inputs."""
    from .registry import REGISTRY

    return (*REGISTRY, *EXTRA_OUTPUT_NAMES)


def output_path(source: Path, stage: str) -> Path:
    """The naming rule without ``-o``: ``photo.jpg`` -> ``photo.<stage>.png`` beside the input."""
    return source.with_name(f"{source.stem}.{stage}.png")


def is_own_output(path: Path, stage_names: Iterable[str]) -> bool:
    """True for files this naming rule produces (so walking a folder twice never re-annotates them)."""
    name = path.name.lower()
    return any(name.endswith(f".{stage}.png") for stage in stage_names)


def walk_images(
    folder: Path,
    skip: Callable[[Path], bool] = lambda path: False,
    on_error: Callable[[OSError], None] | None = None,
) -> Iterator[Path]:
    """Image files under ``folder``, recursively, in sorted order; hidden temp files and ``skip`` excluded.

    ``on_error`` gets the ``OSError`` of each folder that cannot be listed (e.g. permission denied);
    without it such folders are passed over silently, as ``os.walk`` does.
    """
    for root, dirs, files in os.walk(folder, onerror=on_error):
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

    * ``output is None``: each guide goes beside its input as ``<stem>.<stage>.png``.
    * ``output`` ending in ``.png`` with one file input and one stage: that exact file.
    * otherwise ``output`` is a folder: ``OUT/<relative path>.png`` (``OUT/<stage>/<relative path>.png``
      when ``per_stage_folders``); a file input's relative path is its name, a folder input's files
      keep their path relative to that folder.

    Walking a folder never yields a guide: files named ``<stem>.NAME.png`` for any name of
    ``output_names()``, ``stages`` or ``own_outputs``, and anything under the output folder (``OUT``, or
    ``OUT/NAME`` with ``per_stage_folders``) are left out; a file named explicitly is still read. An input
    given twice (or a file inside a folder also given) is planned once. An output folder that is an
    existing file, or that is the walked folder itself without ``per_stage_folders`` (the guides would
    replace the photos), is a ``UsageError``: nothing is planned.
    """
    names = tuple(dict.fromkeys((*output_names(), *own_outputs, *stages)))
    out = None if output is None else Path(output)
    single_file = (
        out is not None
        and len(stages) == 1
        and len(inputs) == 1
        and _input_kind(Path(inputs[0]))[0] != "dir"
        and out.suffix.lower() == ".png"
        and _input_kind(out)[0] != "dir"
    )
    if out is not None and not single_file:
        _check_output_folder(out, stages, per_stage_folders)
    # (a single .png output is confirmed once the inputs are listed; if they are not one file, ``out`` is a folder)
    roots = [] if out is None else [_identity(out / name) for name in names] if per_stage_folders else [_identity(out)]
    failures: list[Failure] = []
    sources: list[tuple[Path, Path]] = []  # (file, path relative to its input root)
    seen: set[Path] = set()

    def add(file: Path, relative: Path) -> None:
        key = _identity(file)
        if key in seen:
            logger.debug("%s is given more than once; planned once", file)
            return
        seen.add(key)
        sources.append((file, relative))

    def unlisted(error: OSError) -> None:
        failures.append(Failure(str(error.filename), f"cannot read folder: {error.strerror or error}"))

    for raw in inputs:
        path = Path(raw)
        kind, problem = _input_kind(path)
        if kind == "dir":
            folder = _identity(path)
            if out is not None and not per_stage_folders and _identity(out) == folder:
                raise UsageError(f"-o {out}: is the input folder; the guides would be mixed with (and replace) "
                                 "the photos: choose another folder, e.g. a new folder inside it")
            inside = [root for root in roots if folder in root.parents]  # output folders within this tree
            skip = functools.partial(_not_an_input, names=names, roots=inside)
            for file in walk_images(path, skip, unlisted):
                add(file, file.relative_to(path))
        elif kind == "file":
            add(path, Path(path.name))
        else:
            failures.append(Failure(str(path), problem or "no such file or folder"))

    if single_file and len(sources) != 1:
        single_file = False
        if sources:  # several files (e.g. a link to a folder): ``out`` is a folder after all
            _check_output_folder(out, stages, per_stage_folders)  # type: ignore[arg-type]
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


def _input_kind(path: Path) -> tuple[str, str | None]:
    """``("dir" | "file" | "missing" | "error", reason)`` of one command-line input, without raising.

    A dangling symlink is a "file" (reading it reports it); a path whose folder cannot be searched is an
    "error" with its reason, reported like any unreadable file.
    """
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return ("file", None) if path.is_symlink() else ("missing", "no such file or folder")
    except PermissionError:
        return "error", "cannot read: permission denied"
    except OSError as error:
        return "error", f"cannot read: {error.strerror or error}"
    return ("dir" if stat.S_ISDIR(status.st_mode) else "file"), None


def _check_output_folder(out: Path, stages: Sequence[str], per_stage_folders: bool) -> None:
    """A UsageError when ``out`` (or ``out/<stage>``) exists and is not a folder: one line, not one per input."""
    folders = [out] + ([out / stage for stage in stages] if per_stage_folders else [])
    for folder in folders:
        try:
            is_file = folder.exists() and not folder.is_dir()
        except OSError:
            continue  # unreadable: each write reports it
        if is_file:
            hint = "; a .png output takes one input file and one annotator" if folder is out and out.suffix.lower() == ".png" else ""
            raise UsageError(f"-o {out}: {folder} is a file, not a folder{hint}")


def _not_an_input(path: Path, names: Sequence[str], roots: Sequence[Path]) -> bool:
    """True for a walked file that is a guide: named like one, or under an output folder."""
    if is_own_output(path, names):
        return True
    parents = _identity(path).parents
    return any(root in parents for root in roots)


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC


def output_is_complete(path: str | os.PathLike) -> bool:
    """True when ``path`` is a whole PNG: its signature first and the IEND chunk last (two small reads).

    What decides "already done" when a batch resumes: a zero-byte file, a truncated one or anything
    else at an output path is written again, not counted as done.
    """
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


def stages_to_run(job: Job, overwrite: bool = False) -> tuple[str, ...]:
    """The stages of ``job`` whose outputs are not all complete (every stage with ``overwrite``)."""
    return tuple(name for name, targets in job.outputs.items()
                 if overwrite or not all(output_is_complete(target) for target in targets))


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
    needed: Sequence[tuple[str, ...]] | None = None,
) -> Summary:
    """Annotate every job's image with the stages it still needs and write the guides.

    ``needed``: each job's ``stages_to_run``, when the caller has already worked them out (it opens every
    existing output), in the order of ``jobs``.

    ``workers`` threads decode and write (default: the number of cores); the calling thread runs the
    stages, batching images with equal ``batch_key`` up to each stage's ``batch_size``. At most a
    small window of images is held in memory at once. ``progress=None`` shows a bar on a terminal.

    A ``GuidesError`` (bad input, unwritable output) or an ``OSError`` while writing fails that file and
    the batch goes on; any other exception from decoding, a stage or writing raises ``InternalError``
    (path, stage, error) after cancelling the queued work and waiting for the running writes.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    summary = Summary(failed=list(failures))
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    if needed is not None and len(needed) != len(jobs):
        raise ValueError(f"needed has {len(needed)} entries for {len(jobs)} jobs")
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
            future.result()  # an InternalError (a bug) propagates and stops the run
        except GuidesError as error:
            fail(pending, _reason(error, pending.job.source))
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
        except Exception as error:
            reason = decode_failure_reason(pending.job.source, error)  # raises InternalError for a bug
            logger.debug("decoding %s failed", pending.job.source, exc_info=True)
            fail(pending, reason)
            return
        ready.append(pending)
        annotate_ready()

    for folder in {target.parent for job in jobs for targets in job.outputs.values() for target in targets}:
        removed = remove_stale_temp_files(folder)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, folder)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guides-io") as pool:
        try:
            for job, stages_left in zip(jobs, needed if needed is not None else (stages_to_run(job, overwrite) for job in jobs)):
                if not stages_left:
                    summary.skipped += 1
                    bar.update(1)
                    continue
                pending = _Pending(job, stages_left)
                decoding.append((pending, pool.submit(decode, job.source, max_pixels)))
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
                results = run_stage(stage, name, [p.image for p in chunk], [p.job.source for p in chunk])  # type: ignore[misc]
                for pending, result in zip(chunk, results):
                    if isinstance(result, Failure):
                        pending.image = None
                        pending.results.clear()
                        fail(pending, result.reason)
                    else:
                        pending.results[name] = result
    for pending in batch:
        pending.image = None  # free the decoded image as soon as its guides exist


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


def run_stage(stage: Stage, name: str, images: Sequence[np.ndarray], sources: Sequence[str | os.PathLike]) -> list[GuideResult | Failure]:
    """One ``annotate_batch`` call over ``images`` (from ``sources``): a guide or a ``Failure`` per image.

    * A ``GuidesError`` is bad input: a batch of several is retried image by image to find the
      image at fault (the others still get their guides); that image gets a ``Failure``.
    * An out-of-memory (``is_out_of_memory``) in a batch of several is retried at batch size 1; an image
      that still runs out alone gets a ``Failure`` naming the options to change.
    * Anything else is a bug: ``InternalError(path, name, error)`` is raised (after an image-by-image
      retry of a batch, so that it names the file it happens on). Shared by the local and Ray engines.
    """
    outcome = _call_stage(stage, name, images)
    if not isinstance(outcome, BaseException):
        return outcome
    error = outcome
    if len(images) > 1:
        if is_out_of_memory(error):
            logger.info("%s ran out of memory on a batch of %d; retrying image by image (a smaller --batch-size "
                        "avoids this)", name, len(images))
            error.__traceback__ = None  # release the failed attempt's frames (and device memory) first
        results = [result for image, source in zip(images, sources) for result in run_stage(stage, name, [image], [source])]
        if not isinstance(error, GuidesError) and not is_out_of_memory(error):
            # Every image passes alone, yet the batch raised: still a bug, reported on the batch's first file.
            raise InternalError(sources[0], name, error) from error
        return results
    source = str(sources[0])
    if isinstance(error, GuidesError):
        return [Failure(source, _reason(error, source))]
    if is_out_of_memory(error):
        logger.debug("%s ran out of memory on %s", name, source, exc_info=error)
        return [Failure(source, out_of_memory_reason(name, error))]
    raise InternalError(source, name, error) from error


def _call_stage(stage: Stage, name: str, images: Sequence[np.ndarray]) -> list[GuideResult] | Exception:
    """The stage's results, or the exception it raised (returned, so a retry runs outside the handler)."""
    try:
        results = list(stage.annotate_batch(images))
    except Exception as error:  # noqa: BLE001 - sorted out by run_stage
        return error
    if len(results) != len(images):
        return RuntimeError(f"{name} returned {len(results)} guides for {len(images)} images")
    return results


def _write_outputs(job: Job, results: Mapping[str, GuideResult]) -> None:
    """Encode and write one job's guides (worker thread). ``GuidesError`` and ``OSError`` are this file's
    failure; anything else (a guide that is not an image array, a wrong number of guides) is a bug."""
    for name, result in results.items():
        try:
            guides = result if isinstance(result, tuple) else (result,)
            targets = job.outputs[name]
            if len(guides) != len(targets):
                raise RuntimeError(f"{name} made {len(guides)} guides for {len(targets)} outputs")
            for target, guide in zip(targets, guides):
                write_png_atomic(target, guide)
        except (GuidesError, OSError):
            raise
        except Exception as error:
            raise InternalError(job.source, name, error) from error


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
