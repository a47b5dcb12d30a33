"""Export photos, their guides and captions as a ControlNet training set.

What is written (``OUT`` is the export folder):

* ``--layout per-annotator`` (default): one dataset per annotator, ``OUT/<annotator>/``, each with the
  columns diffusers' ``examples/controlnet/train_controlnet.py`` reads by default: ``image`` (the photo),
  ``conditioning_image`` (its guide) and ``text`` (the caption), plus ``source`` (the photo's relative
  path). ``load_dataset("OUT/canny")`` or ``load_dataset("OUT", "canny")`` loads one.
* ``--layout columns``: one dataset ``OUT/data/`` with ``image``, one column per annotator (named after
  it), ``text`` and ``source``; train with ``--conditioning_image_column <annotator>``.
* ``--format parquet``: shards ``train-NNNNN-of-MMMMM.parquet`` whose schema carries the Hugging Face
  features (images are ``datasets.Image``: ``{bytes, path}`` structs), so ``datasets`` decodes them to PIL.
* ``--format webdataset``: shards ``NNNNNN.tar`` in the webdataset package's conventions: one sample per
  photo, members ``KEY.image.png``, ``KEY.conditioning_image.png`` (or ``KEY.<annotator>.png``),
  ``KEY.txt`` and ``KEY.json`` (``{"source": ...}``), with ``KEY`` the photo's 9-digit index.
* ``OUT/README.md``: the dataset card (annotators, settings, model files, library versions, the training
  command for each dataset); its YAML header names one ``datasets`` configuration per dataset.

What each row holds: every photo is decoded by the package's one reader (EXIF orientation applied,
alpha on white), resized once with ControlNet's ``resize_image`` to ``--resolution`` (0 keeps its size),
and that exact array is both the stored ``image`` (lossless PNG) and the input of every annotator, whose
own resizing is switched off (``resolution=0``). So image and guides align pixel for pixel, and each
stored guide is byte for byte what ``guides run ANNOTATOR`` writes for the stored image.

Resume: photos are cut into shards in a fixed order (inputs in order, folders walked sorted). A hidden
manifest (``OUT/.guides-export.json``) records each finished shard's photos (relative path, size,
mtime), their captions and its files; a rerun skips every shard whose record still matches, and within
an interrupted shard the guides already made (kept in the hidden ``OUT/.guides-staging/`` until the
shard is written) are not made again. Shard files are written to hidden temporary files and renamed
into place, so a killed export never leaves a half-written shard under a real name.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..annotators.learned import check_working_pixels
from ..engines import Failure, Job, Stage, Summary, run_jobs
from ..errors import UsageError
from ..imaging import DEFAULT_MAX_PIXELS, load_image, remove_stale_temp_files, resize_image, write_atomic
from .card import dataset_card, describe_model_files, training_commands
from .entries import AnnotatorEntry, registry_entries
from .photos import Photo, list_photos, read_captions
from .shards import (
    COLUMNS_FOLDER,
    FORMATS,
    LAYOUTS,
    PHOTO_STAGE,
    ROWS_PER_GROUP,
    ShardLayout,
    ShardRow,
    open_shard,
)
from .shards import unlink_quietly as _unlink

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1000
DEFAULT_RESOLUTION = 512
MANIFEST_NAME = ".guides-export.json"
STAGING_NAME = ".guides-staging"
CARD_NAME = "README.md"
MANIFEST_VERSION = 1
#: Settings that change how an annotator runs but not what it outputs; a rerun may change them.
RUNTIME_SETTINGS = frozenset({"device", "batch_size", "models_dir", "download"})


# -------------------------------------------------------------------------------------------- engine


class ExportEngine(Protocol):
    """What the export needs of an engine: run jobs (the photo stage plus the annotators) and close."""

    def run(self, jobs: Sequence[Job], decode: Callable[[Path, int], np.ndarray]) -> Summary: ...

    def model_files(self) -> dict[str, list[dict[str, Any]]]: ...

    def close(self) -> None: ...


class PhotoStage:
    """The pseudo-annotator whose 'guide' is the (resized) photo itself, so it is stored exactly as seen."""

    batch_size = 1

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return list(images)

    def batch_key(self, image: np.ndarray) -> Any:
        return image.shape

    def close(self) -> None:
        """Nothing to release."""


class LocalExportEngine:
    """The local batch engine (``guides.engines.run_jobs``); annotators are built once, on first use."""

    def __init__(self, entries: Sequence[AnnotatorEntry], *, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool | None = False) -> None:
        self.entries = list(entries)
        self.workers = workers
        self.max_pixels = max_pixels
        self.progress = progress
        self._stages: dict[str, Stage] | None = None
        self._model_files: dict[str, list[dict[str, Any]]] | None = None

    def _loaded(self) -> dict[str, Stage]:
        if self._stages is None:
            stages: dict[str, Stage] = {PHOTO_STAGE: PhotoStage()}
            try:
                for entry in self.entries:
                    stages[entry.name] = entry.load()
            except BaseException:
                self._close(stages)
                raise
            self._stages = stages
        return self._stages

    def run(self, jobs: Sequence[Job], decode: Callable[[Path, int], np.ndarray]) -> Summary:
        return run_jobs(jobs, self._loaded(), workers=self.workers, max_pixels=self.max_pixels,
                        progress=self.progress, decode=decode)

    def model_files(self) -> dict[str, list[dict[str, Any]]]:
        """The loaded annotators' model files (hashed once per engine); empty before anything ran."""
        if self._stages is None:
            return {}
        if self._model_files is None:
            self._model_files = {entry.name: describe_model_files(entry.name, self._stages[entry.name], entry.options)
                                 for entry in self.entries}
        return self._model_files

    def close(self) -> None:
        if self._stages is not None:
            self._close(self._stages)
            self._stages = None

    @staticmethod
    def _close(stages: Mapping[str, Stage]) -> None:
        for stage in stages.values():
            close = getattr(stage, "close", None)
            if close is not None:
                close()


def decode_resized(path: Path, max_pixels: int, resolution: int) -> np.ndarray:
    """Read a photo with the package's reader and resize it as ControlNet does (0 keeps its size).

    The resized photo is held to ``max_pixels`` too (checked before resizing): ``--resolution`` enlarges
    extreme aspect ratios enormously, and such a photo is one failed file, not an OpenCV crash."""
    image = load_image(path, max_pixels)
    check_working_pixels("dataset", image.shape[0], image.shape[1], resolution, max_pixels, option="--max-pixels")
    return np.ascontiguousarray(resize_image(image, resolution))


# -------------------------------------------------------------------------------------------- export


@dataclasses.dataclass
class ExportReport:
    """What an export did. ``summary`` counts photos: written in this run, skipped (their shard was
    already complete), failed (not in the dataset)."""

    out: Path
    summary: Summary
    rows: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    uncaptioned: list[str] = dataclasses.field(default_factory=list)
    unmatched_captions: list[str] = dataclasses.field(default_factory=list)
    commands: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code

    def as_dict(self) -> dict[str, Any]:
        result = self.summary.as_dict()
        result.update(
            out=str(self.out), rows=self.rows, shards_written=self.shards_written, shards_skipped=self.shards_skipped,
            uncaptioned=self.uncaptioned, unmatched_captions=len(self.unmatched_captions), commands=self.commands,
        )
        return result


def export_dataset(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    entries: Sequence[AnnotatorEntry],
    *,
    format: str = "parquet",  # noqa: A002 - the CLI's name
    layout: str = "per-annotator",
    shard_size: int = DEFAULT_SHARD_SIZE,
    resolution: int = DEFAULT_RESOLUTION,
    captions: str | os.PathLike | None = None,
    prompt: str | None = None,
    require_captions: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = False,
    engine: ExportEngine | None = None,
    command: str | None = None,
    union_model: str | None = None,
) -> ExportReport:
    """Export ``inputs`` (files and folders) with one guide per entry to ``out``; see the module doc.

    A photo without a caption is exported with an empty ``text`` and listed in ``uncaptioned``; with
    ``require_captions`` it is a failure instead. ``engine`` defaults to the local batch engine.
    ``union_model`` (a key of ``guides.weights.union_models.UNION_MODELS``, per-annotator layout): each
    dataset gets the ``control_type``/``control_mode`` columns of its annotator's condition in that model.
    """
    started = time.perf_counter()
    names = [entry.name for entry in entries]
    _check_arguments(names, format, layout, shard_size, resolution)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    caption_map = read_captions(captions) if captions is not None else {}
    photos, failures = list_photos(inputs, out, caption_map, prompt)
    report = ExportReport(out, Summary(failed=list(failures)))
    matched = {photo.relative for photo in photos}
    report.unmatched_captions = sorted(key for key in caption_map if key not in matched)
    if report.unmatched_captions:
        logger.warning("%d caption(s) in %s name no exported photo, e.g. %r", len(report.unmatched_captions), captions, report.unmatched_captions[0])
    if require_captions:
        kept = []
        for photo in photos:
            if photo.caption:
                kept.append(photo)
            else:
                report.summary.failed.append(Failure(str(photo.source), "no caption (--captions, sidecar .txt or --prompt)"))
        photos = [dataclasses.replace(photo, index=index) for index, photo in enumerate(kept)]

    shape = ShardLayout(format, layout, tuple(names),
                        sidecars=tuple((entry.name, entry.sidecar) for entry in entries if entry.sidecar is not None),
                        modes=_union_modes(entries, union_model, layout, resolution))
    fingerprint = {
        "format": format, "layout": layout, "shard_size": shard_size, "resolution": resolution,
        **({"union_model": union_model} if union_model is not None else {}),
        "annotators": {entry.name: {k: v for k, v in entry.settings.items() if k not in RUNTIME_SETTINGS} for entry in entries},
    }
    manifest_path = out / MANIFEST_NAME
    previous = _read_manifest(manifest_path)
    if previous is None and (out / CARD_NAME).exists() and not manifest_path.exists():
        raise UsageError(f"--out {out} holds a {CARD_NAME} that is not a guides export's card; choose a new or empty folder")
    if previous is not None and previous.get("fingerprint") != _jsonable(fingerprint) and not overwrite:
        raise UsageError(
            f"{out} holds an export made with other settings ({_differences(previous.get('fingerprint'), _jsonable(fingerprint))}); "
            "pass --overwrite to replace it, or choose another --out"
        )
    old_shards: dict[str, Any] = {} if previous is None or overwrite else previous.get("shards", {})
    old_files = {name for record in (previous or {}).get("shards", {}).values() for name in record.get("files", {})}
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION, "fingerprint": _jsonable(fingerprint), "shards": {},
        "model_files": {} if previous is None or overwrite else previous.get("model_files", {}),
    }

    count = len(photos)
    shards = max(1, -(-count // shard_size)) if count else 0
    groups = [photos[k * shard_size : (k + 1) * shard_size] for k in range(shards)]
    for folder in shape.datasets:
        remove_stale_temp_files(out / folder)
    staging = out / STAGING_NAME
    if overwrite and staging.exists():
        shutil.rmtree(staging, ignore_errors=True)
    owned_engine = engine is None
    engine = engine or LocalExportEngine(entries, workers=workers, max_pixels=max_pixels, progress=progress)
    decode = functools.partial(decode_resized, resolution=resolution)
    token = hashlib.sha256(json.dumps(manifest["fingerprint"], sort_keys=True).encode()).hexdigest()[:12]
    try:
        for shard, group in enumerate(groups):
            files = shape.files(shard, shards)
            record = _shard_record(group, files)
            old = old_shards.get(str(shard))
            if old is not None and _same_shard(old, record) and _files_intact(out, old["files"]):
                manifest["shards"][str(shard)] = old
                report.shards_skipped += 1
                report.summary.skipped += len(group) - len(old.get("failed", []))
                report.summary.failed.extend(Failure(path, reason) for path, reason in old.get("failed", []))
                report.rows += old["rows"]
                continue
            done = _export_shard(out, staging / f"{shard:06d}", token, shape, group, files, engine, decode)
            record.update(files=done.files, rows=done.rows, failed=[[f.path, f.reason] for f in done.failed])
            manifest["shards"][str(shard)] = record
            manifest["model_files"].update(engine.model_files())
            write_atomic(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))
            report.shards_written += 1
            report.summary.written += done.rows
            report.summary.failed.extend(done.failed)
            report.rows += done.rows
    finally:
        if owned_engine:
            engine.close()
    for stale in sorted(old_files - {name for record in manifest["shards"].values() for name in record["files"]}):
        _unlink(out / stale)
    write_atomic(manifest_path, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))
    shutil.rmtree(staging, ignore_errors=True)
    failed_paths = {failure.path for failure in report.summary.failed}
    exported = [photo for photo in photos if str(photo.source) not in failed_paths]
    report.uncaptioned = [photo.relative for photo in exported if not photo.caption]
    report.commands = training_commands(out, shape, resolution)
    card = dataset_card(out, shape, entries, manifest, exported, rows=report.rows, failed=len(report.summary.failed),
                        uncaptioned=len(report.uncaptioned), commands=report.commands, resolution=resolution,
                        shard_size=shard_size, command=command)
    write_atomic(out / CARD_NAME, card.encode("utf-8"))
    report.summary.seconds = time.perf_counter() - started
    return report


def _check_arguments(names: Sequence[str], format: str, layout: str, shard_size: int, resolution: int) -> None:  # noqa: A002
    if not names:
        raise UsageError("name at least one annotator, e.g. --annotators canny")
    if len(set(names)) != len(names):
        raise UsageError(f"an annotator is named twice: {', '.join(names)}")
    reserved = {PHOTO_STAGE, "conditioning_image", "text", "source", "txt", "json", COLUMNS_FOLDER}
    clash = sorted(set(names) & reserved)
    if clash:
        raise UsageError(f"annotator name(s) {', '.join(clash)} clash with the dataset's own columns")
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    if resolution < 0:
        raise UsageError("--resolution must be 0 (keep) or positive")
    if format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UsageError('Parquet export needs pyarrow: pip install "controlnet-guides[dataset]" (or use --format webdataset)')


def _union_modes(entries: Sequence[AnnotatorEntry], union_model: str | None, layout: str,
                 resolution: int) -> tuple[tuple[str, str, int], ...]:
    """(annotator, condition, control_mode) of each entry in ``union_model``; a UsageError naming the
    annotators whose guide serves none of its conditions (with the options they run with: the export's
    ``resolution`` decides teed's thick or thin line)."""
    if union_model is None:
        return ()
    from ..weights.union_models import UNION_MODELS, union_mode

    if union_model not in UNION_MODELS:
        raise UsageError(f"unknown union model {union_model!r}; use one of {', '.join(UNION_MODELS)}")
    if layout != "per-annotator":
        raise UsageError("--union-model needs --layout per-annotator (one dataset per condition)")
    modes, missing = [], []
    for entry in entries:
        options = dataclasses.replace(entry.options, resolution=resolution) if entry.options is not None else None
        mode = union_mode(entry.annotator.union_modes, union_model, options) if entry.annotator is not None else None
        if mode is None:
            missing.append(entry.name)
        else:
            modes.append((entry.name, mode.condition, mode.index))
    if missing:
        model = UNION_MODELS[union_model]
        raise UsageError(f"{', '.join(missing)}: no condition of the {union_model} union model "
                         f"({', '.join(model.conditions)}) at --resolution {resolution}")
    return tuple(modes)


@dataclasses.dataclass
class _ShardResult:
    files: dict[str, int]
    rows: int
    failed: list[Failure]


def _export_shard(out: Path, staging: Path, token: str, shape: ShardLayout, group: Sequence[Photo],
                  files: Mapping[str, str], engine: ExportEngine, decode: Callable[[Path, int], np.ndarray]) -> _ShardResult:
    """Annotate one shard's photos into the staging folder, then stream them into the shard file(s)."""
    stages = (PHOTO_STAGE,) + shape.annotators
    documented = {name for name, _ in shape.sidecars}

    def staged(photo: Photo, stage: str) -> tuple[Path, ...]:
        png = staging / stage / f"{_staged_name(photo, token)}.png"
        return (png, png.with_suffix(".json")) if stage in documented else (png,)

    jobs = [Job(photo.source, {stage: staged(photo, stage) for stage in stages}) for photo in group]
    summary = engine.run(jobs, decode)
    failed_sources = {failure.path for failure in summary.failed}
    kept = [(photo, job) for photo, job in zip(group, jobs) if str(photo.source) not in failed_sources]
    writers = {}
    sizes: dict[str, int] = {}
    try:
        for folder, name in files.items():
            writers[folder] = open_shard(shape.format, out / name, shape.image_columns(folder), shape.document_columns(folder),
                                         shape.mode(folder))
        for start in range(0, len(kept), ROWS_PER_GROUP):
            rows = [ShardRow(photo, {stage: job.outputs[stage][0].read_bytes() for stage in stages},
                             {stage: job.outputs[stage][1].read_text(encoding="utf-8").rstrip("\n") for stage in documented})
                    for photo, job in kept[start : start + ROWS_PER_GROUP]]
            for writer in writers.values():
                writer.add(rows)
        for folder, writer in list(writers.items()):
            sizes[files[folder]] = writer.commit()
            del writers[folder]
    finally:
        for writer in writers.values():
            writer.abort()
    shutil.rmtree(staging, ignore_errors=True)
    return _ShardResult(sizes, len(kept), list(summary.failed))


def _staged_name(photo: Photo, token: str) -> str:
    """Staged guides are named after the photo's identity and the export settings, so a changed photo
    or setting never reuses a stale staged guide."""
    ident = json.dumps([photo.relative, photo.stat, token], ensure_ascii=False)
    return f"{photo.index:09d}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _shard_record(group: Sequence[Photo], files: Mapping[str, str]) -> dict[str, Any]:
    captions = json.dumps([photo.caption for photo in group], ensure_ascii=False)
    return {
        "sources": [[photo.relative, photo.stat[0], photo.stat[1]] for photo in group],
        "captions": hashlib.sha256(captions.encode("utf-8")).hexdigest(),
        "files": {name: None for name in files.values()},
    }


def _same_shard(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return (
        old.get("sources") == new["sources"]
        and old.get("captions") == new["captions"]
        and set(old.get("files", {})) == set(new["files"])
    )


def _files_intact(out: Path, files: Mapping[str, int | None]) -> bool:
    for name, size in files.items():
        try:
            if (out / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        logger.warning("%s is unreadable; the export starts over", path)
        return None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        logger.warning("%s is from another version; the export starts over", path)
        return None
    return data


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _differences(old: Any, new: Any) -> str:
    if not isinstance(old, dict):
        return "unknown settings"
    keys = sorted(set(old) | set(new))
    changed = []
    for key in keys:
        if old.get(key) == new.get(key):
            continue
        if key == "annotators" and isinstance(old.get(key), dict):
            before, after = old[key], new[key]
            if set(before) != set(after):
                changed.append(f"annotators {', '.join(before)} -> {', '.join(after)}")
            else:
                for name in after:
                    for field in sorted(set(before[name]) | set(after[name])):
                        if before[name].get(field) != after[name].get(field):
                            changed.append(f"{name}.{field} {before[name].get(field)!r} -> {after[name].get(field)!r}")
        else:
            changed.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(changed) or "unknown settings"


__all__ = [
    "DEFAULT_RESOLUTION", "DEFAULT_SHARD_SIZE", "FORMATS", "LAYOUTS", "AnnotatorEntry", "ExportEngine", "ExportReport",
    "LocalExportEngine", "Photo", "PhotoStage", "decode_resized", "export_dataset", "list_photos", "read_captions",
    "registry_entries",
]
