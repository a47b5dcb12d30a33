"""Planning a batch: inputs (files and folders, walked recursively for image suffixes) in, ``Job``s out.

Each input gets one output path per stage (annotator), following one naming rule (``output_path``).
Clashes and outputs that would overwrite an input are refused; folder walks never take a guide as input.
Both engines (``guides.engines.local``, ``guides.engines.ray``) run these jobs.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from ..errors import UsageError
from ..imaging import IMAGE_SUFFIXES, TEMP_MARK
from .summary import Failure

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Job:
    """One input file and, per stage name, the output file(s) its guide(s) go to."""

    source: Path
    outputs: Mapping[str, tuple[Path, ...]]


#: Output names of the commands that are not annotators: ``inpaint-target`` writes ``<stem>.target.png``
#: (beside ``<stem>.mask.png``), ``composite`` writes ``<stem>.composite.png``.
EXTRA_OUTPUT_NAMES = ("target", "composite")

#: The suffix of every sidecar document (``guides.engines.sidecars``).
SIDECAR_SUFFIX = ".json"


def output_names() -> tuple[str, ...]:
    """Every ``NAME`` some guides command writes as ``<stem>.NAME.png``: the registered annotators and
    ``EXTRA_OUTPUT_NAMES``. Folder walks never take such files as inputs."""
    from ..registry import REGISTRY

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
    sidecars: Mapping[str, Path | None] | None = None,
) -> tuple[list[Job], list[Failure]]:
    """Turn command-line inputs into jobs.

    * ``output is None``: each guide goes beside its input as ``<stem>.<stage>.png``.
    * ``output`` ending in ``.png`` with one file input and one stage: that exact file.
    * otherwise ``output`` is a folder: ``OUT/<relative path>.png`` (``OUT/<stage>/<relative path>.png``
      when ``per_stage_folders``); a file input's relative path is its name, a folder input's files
      keep their path relative to that folder.

    Walking a folder never yields a guide: files named ``<stem>.NAME.png`` for any name of
    ``output_names()``, ``stages`` or ``own_outputs``, and anything under the output folder (``OUT``, or
    ``OUT/NAME`` with ``per_stage_folders``) are left out; a file named explicitly is still read.

    ``sidecars``: stage -> folder of the stages that also write a sidecar document (``guides.engines.sidecars``)
    as their second output: ``FOLDER/<relative path>.json`` (a file input's: ``FOLDER/<name>.json``), or with
    folder None beside the guide (``<guide stem>.json``). An input
    given twice (or a file inside a folder also given) is planned once. An output folder that is an
    existing file, or that is the walked folder itself without ``per_stage_folders`` (the guides would
    replace the photos), is a ``UsageError``: nothing is planned.
    """
    names = tuple(dict.fromkeys((*output_names(), *own_outputs, *stages)))
    sidecars = {} if sidecars is None else sidecars
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
            outputs[stage] = (target,) if stage not in sidecars else (target, _sidecar_target(target, relative, sidecars[stage]))
        problem = _output_problem(source, outputs, claimed, input_files)
        if problem:
            failures.append(Failure(str(source), problem))
            continue
        for targets in outputs.values():
            for target in targets:
                claimed[_identity(target)] = source
        jobs.append(Job(source, outputs))
    return jobs, failures


def _sidecar_target(guide: Path, relative: Path, folder: Path | None) -> Path:
    """Where a stage's sidecar document goes: ``folder/<relative>.json``, or beside the guide."""
    if folder is None:
        return guide.with_suffix(SIDECAR_SUFFIX)
    return Path(folder) / relative.with_suffix(SIDECAR_SUFFIX)


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
