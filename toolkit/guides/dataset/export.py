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

import csv
import dataclasses
import datetime
import functools
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import __version__
from ..batch import Failure, Job, Stage, Summary, is_own_output, run_jobs, walk_images
from ..errors import InputError, UsageError
from ..imaging import DEFAULT_MAX_PIXELS, TEMP_MARK, load_image, remove_stale_temp_files, resize_image, write_atomic

logger = logging.getLogger(__name__)

FORMATS = ("parquet", "webdataset")
LAYOUTS = ("per-annotator", "columns")
DEFAULT_SHARD_SIZE = 1000
DEFAULT_RESOLUTION = 512
MANIFEST_NAME = ".guides-export.json"
STAGING_NAME = ".guides-staging"
CARD_NAME = "README.md"
COLUMNS_FOLDER = "data"
#: The pseudo-stage that stores the photo itself (as every annotator saw it).
PHOTO_STAGE = "image"
#: Rows per Parquet row group (Hugging Face's recommendation for image datasets).
ROWS_PER_GROUP = 100
MANIFEST_VERSION = 1
#: Settings that change how an annotator runs but not what it outputs; a rerun may change them.
RUNTIME_SETTINGS = frozenset({"device", "batch_size", "models_dir"})
#: Names accepted in captions files for the photo's relative path and for its caption.
PATH_KEYS = ("file_name", "path", "file", "image")
CAPTION_KEYS = ("text", "caption", "prompt")
TRAIN_SCRIPT = "examples/controlnet/train_controlnet.py"
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LIBRARIES = (
    "numpy", "opencv-python-headless", "opencv-python", "pillow", "pyarrow", "torch", "torchvision", "timm",
    "segment-anything", "safetensors", "ray",
)


# ------------------------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class AnnotatorEntry:
    """One annotator of an export: how to build it, and the settings the card and the resume check use."""

    name: str
    load: Callable[[], Stage]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photo of the export, in its final order."""

    index: int
    source: Path
    relative: str
    """Path relative to its input folder (POSIX separators), the key of captions files."""
    caption: str | None
    caption_from: str | None
    """``"captions file"``, ``"sidecar"``, ``"prompt"`` or None."""
    stat: tuple[int, int]
    """(size, mtime_ns) of the file when listed; a shard is redone when one of its photos changed."""

    @property
    def key(self) -> str:
        """The WebDataset sample key: the index, 9 digits (no dots, sorts in order)."""
        return f"{self.index:09d}"


def registry_entries(
    names: Sequence[str],
    shared: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> list[AnnotatorEntry]:
    """Entries for registered annotators, with their resizing switched off (the export resizes once).

    ``shared`` options (device, precision, batch_size, models_dir, ...) apply to every annotator that has
    them; ``overrides`` are ``"annotator.field=value"`` strings for one annotator's own options
    (``"canny.low=50"``), converted to the type of the field's default.
    """
    from ..registry import get

    specs = [get(name) for name in dict.fromkeys(names)]
    per_annotator: dict[str, dict[str, str]] = {spec.name: {} for spec in specs}
    for text in overrides:
        annotator, field, value = _split_override(text)
        if annotator not in per_annotator:
            raise UsageError(f"--set {text}: {annotator!r} is not one of the exported annotators ({', '.join(per_annotator)})")
        per_annotator[annotator][field] = value
    entries = []
    for spec in specs:
        options_type = spec.annotator_class().Options
        fields = {field.name: field for field in dataclasses.fields(options_type)}
        defaults = options_type()
        values = {key: value for key, value in (shared or {}).items() if value is not None and key in fields}
        for field, raw in per_annotator[spec.name].items():
            if field not in fields:
                raise UsageError(f"--set {spec.name}.{field}: unknown option; known: {', '.join(sorted(f for f in fields if f != 'resolution'))}")
            if field == "resolution":
                raise UsageError(f"--set {spec.name}.resolution: the export resizes every photo once; use --resolution")
            values[field] = _convert(raw, getattr(defaults, field), f"{spec.name}.{field}")
        values["resolution"] = 0
        options = spec.options(**values)
        entries.append(AnnotatorEntry(spec.name, functools.partial(_build_annotator, spec, options), dataclasses.asdict(options)))
    return entries


def _build_annotator(spec: Any, options: Any) -> Stage:
    return spec.annotator_class()(options)


def _split_override(text: str) -> tuple[str, str, str]:
    name, sep, value = text.partition("=")
    annotator, dot, field = name.strip().partition(".")
    if not sep or not dot or not annotator or not field:
        raise UsageError(f"--set {text!r}: expected ANNOTATOR.OPTION=VALUE, e.g. canny.low=50")
    return annotator, field.replace("-", "_"), value.strip()


def _convert(raw: str, default: Any, label: str) -> Any:
    try:
        if isinstance(default, bool):
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise UsageError(f"--set {label}={raw}: expected a {type(default).__name__}") from None
    if default is None and raw.lower() in ("none", ""):
        return None
    return raw


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """Captions keyed by relative photo path from a JSONL (``.jsonl``/``.json``) or CSV (``.csv``/``.tsv``) file.

    Each record names the photo under one of ``file_name``, ``path``, ``file``, ``image`` (relative to its
    input folder, as in ``metadata.jsonl``) and the caption under ``text``, ``caption`` or ``prompt``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".jsonl", ".json", ".ndjson"):
        raise UsageError(f"--captions {path}: use a .jsonl or .csv file (got {suffix or 'no suffix'})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise UsageError(f"--captions {path}: cannot read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--captions {path}: not UTF-8 text") from None
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        records = [(number + 2, row) for number, row in enumerate(reader)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UsageError(f"--captions {path}:{number}: not a JSON object ({error.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"--captions {path}:{number}: not a JSON object")
            records.append((number, record))
    captions: dict[str, str] = {}
    for number, record in records:
        key = next((record[name] for name in PATH_KEYS if record.get(name) not in (None, "")), None)
        caption = next((record[name] for name in CAPTION_KEYS if name in record and record[name] is not None), None)
        if not isinstance(key, str):
            raise UsageError(f"--captions {path}:{number}: no photo path (one of {', '.join(PATH_KEYS)})")
        if not isinstance(caption, str):
            raise UsageError(f"--captions {path}:{number}: no caption string (one of {', '.join(CAPTION_KEYS)})")
        captions[_normal_key(key)] = caption.strip()
    return captions


def _normal_key(key: str) -> str:
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


def list_photos(
    inputs: Sequence[str | os.PathLike],
    out: Path,
    captions: Mapping[str, str] | None = None,
    prompt: str | None = None,
) -> tuple[list[Photo], list[Failure]]:
    """The photos to export, in order, with their captions; missing inputs and duplicate keys are failures.

    Folders are walked like every batch command; files named like guides (``x.canny.png``) and anything
    under ``out`` are not photos.
    """
    from ..registry import REGISTRY

    out_id = _identity(out)
    failures: list[Failure] = []
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            skip = functools.partial(_not_a_photo, own=tuple(REGISTRY), out_id=out_id)
            found.extend((file, file.relative_to(path).as_posix()) for file in walk_images(path, skip))
        elif path.exists() or path.is_symlink():
            found.append((path, path.name))
        else:
            failures.append(Failure(str(path), "no such file or folder"))
    photos: list[Photo] = []
    seen: dict[str, Path] = {}
    for source, relative in found:
        if relative in seen:
            failures.append(Failure(str(source), f"same relative path {relative!r} as {seen[relative]}; keys and captions need unique paths (export the folders separately)"))
            continue
        seen[relative] = source
        try:
            caption, origin = _caption_for(source, relative, captions or {}, prompt)
            status = source.stat()
        except InputError as error:
            failures.append(Failure(str(source), error.reason if error.path == str(source) else str(error)))
            continue
        except OSError as error:
            failures.append(Failure(str(source), f"cannot read: {error.strerror or error}"))
            continue
        photos.append(Photo(len(photos), source, relative, caption, origin, (status.st_size, status.st_mtime_ns)))
    return photos, failures


def _not_a_photo(path: Path, own: tuple[str, ...], out_id: Path) -> bool:
    return is_own_output(path, own) or out_id in _identity(path).parents


def _caption_for(source: Path, relative: str, captions: Mapping[str, str], prompt: str | None) -> tuple[str | None, str | None]:
    if relative in captions:
        return captions[relative], "captions file"
    sidecar = source.with_suffix(".txt")
    if sidecar.is_file():
        try:
            return sidecar.read_text(encoding="utf-8-sig").strip(), "sidecar"
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise InputError(source, f"cannot read its caption {sidecar.name} ({reason})") from None
    if prompt is not None:
        return prompt, "prompt"
    return None, None


def _identity(path: Path) -> Path:
    return Path(os.path.normcase(os.path.abspath(path)))


# -------------------------------------------------------------------------------------------- shards


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """Where shards go and which columns (or tar members) each file holds."""

    format: str
    layout: str
    annotators: tuple[str, ...]

    @property
    def datasets(self) -> tuple[str, ...]:
        """The dataset folders: one per annotator, or ``data`` for the columns layout."""
        return self.annotators if self.layout == "per-annotator" else (COLUMNS_FOLDER,)

    def file_name(self, shard: int, shards: int) -> str:
        if self.format == "parquet":
            return f"train-{shard:05d}-of-{shards:05d}.parquet"
        return f"{shard:06d}.tar"

    def files(self, shard: int, shards: int) -> dict[str, str]:
        """Dataset folder -> the shard's file, relative to OUT (POSIX)."""
        return {folder: f"{folder}/{self.file_name(shard, shards)}" for folder in self.datasets}

    def image_columns(self, folder: str) -> list[tuple[str, str]]:
        """(column name, stage whose PNG fills it) for one dataset folder."""
        if self.layout == "per-annotator":
            return [("image", PHOTO_STAGE), ("conditioning_image", folder)]
        return [("image", PHOTO_STAGE)] + [(name, name) for name in self.annotators]

    def columns(self, folder: str) -> list[str]:
        """The dataset's columns as ``datasets`` shows them."""
        images = [column for column, _ in self.image_columns(folder)]
        if self.format == "parquet":
            return images + ["text", "source"]
        return [f"{column}.png" for column in images] + ["txt", "json"]


@dataclasses.dataclass
class _Row:
    photo: Photo
    pngs: dict[str, bytes]


class _ShardFile(Protocol):
    def add(self, rows: Sequence[_Row]) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...


def _temp_path(target: Path) -> Path:
    """A hidden temporary name beside ``target`` that ``remove_stale_temp_files`` recognises."""
    return target.parent / f".{target.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


class _ParquetShard:
    """Streams rows into a Parquet file (one row group per ``add``) and renames it into place."""

    def __init__(self, target: Path, columns: list[tuple[str, str]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.target = target
        self.columns = columns
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        fields = [pa.field(name, image) for name, _ in columns] + [pa.field("text", pa.string()), pa.field("source", pa.string())]
        features = {name: {"_type": "Image"} for name, _ in columns}
        features.update(text={"dtype": "string", "_type": "Value"}, source={"dtype": "string", "_type": "Value"})
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
        self.schema = pa.schema(fields, metadata=metadata)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = _temp_path(target)
        self.writer = pq.ParquetWriter(str(self.temp), self.schema, use_dictionary=False)

    def add(self, rows: Sequence[_Row]) -> None:
        if not rows:
            return
        data: dict[str, list[Any]] = {name: [{"bytes": row.pngs[stage], "path": None} for row in rows] for name, stage in self.columns}
        data["text"] = [row.photo.caption or "" for row in rows]
        data["source"] = [row.photo.relative for row in rows]
        self.writer.write_table(self._pa.Table.from_pydict(data, schema=self.schema))

    def commit(self) -> int:
        self.writer.close()
        os.replace(self.temp, self.target)
        return self.target.stat().st_size

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            _unlink(self.temp)


class _TarShard:
    """Streams samples into a WebDataset tar (deterministic headers) and renames it into place."""

    def __init__(self, target: Path, columns: list[tuple[str, str]]) -> None:
        self.target = target
        self.columns = columns
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = _temp_path(target)
        self.tar = tarfile.open(self.temp, "w", format=tarfile.USTAR_FORMAT)

    def add(self, rows: Sequence[_Row]) -> None:
        for row in rows:
            key = row.photo.key
            for name, stage in self.columns:
                self._member(f"{key}.{name}.png", row.pngs[stage])
            self._member(f"{key}.txt", (row.photo.caption or "").encode("utf-8"))
            self._member(f"{key}.json", json.dumps({"source": row.photo.relative}, ensure_ascii=False).encode("utf-8"))

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def commit(self) -> int:
        self.tar.close()
        os.replace(self.temp, self.target)
        return self.target.stat().st_size

    def abort(self) -> None:
        try:
            self.tar.close()
        finally:
            _unlink(self.temp)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
    """The local batch engine (``guides.batch.run_jobs``); annotators are built once, on first use."""

    def __init__(self, entries: Sequence[AnnotatorEntry], *, workers: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool | None = False) -> None:
        self.entries = list(entries)
        self.workers = workers
        self.max_pixels = max_pixels
        self.progress = progress
        self._stages: dict[str, Stage] | None = None

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
        if self._stages is None:
            return {}
        return {entry.name: describe_model_files(entry.name, self._stages[entry.name]) for entry in self.entries}

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
    """Read a photo with the package's reader and resize it as ControlNet does (0 keeps its size)."""
    return np.ascontiguousarray(resize_image(load_image(path, max_pixels), resolution))


def describe_model_files(name: str, stage: object) -> list[dict[str, Any]]:
    """The checkpoint files a loaded annotator used (its ``model_files`` or ``checkpoint_path``
    attribute), with size and sha256; else the catalog entries naming it, marked as such."""
    paths: list[Path] = []
    declared = getattr(stage, "model_files", None)
    if callable(declared):
        declared = declared()
    if declared:
        paths = [Path(p) for p in declared]
    elif getattr(stage, "checkpoint_path", None):
        paths = [Path(stage.checkpoint_path)]  # type: ignore[attr-defined]
    if paths:
        return [{"file": str(path), "size": path.stat().st_size, "sha256": _sha256(path)} for path in paths if path.is_file()]
    try:
        from ..weights.catalog import CHECKPOINTS
    except ImportError:  # pragma: no cover - the catalog is part of the package
        return []
    found = []
    for checkpoint in CHECKPOINTS.values():
        users = {part.strip().split(" ")[0] for part in checkpoint.used_by.split(",")}
        if name in users:
            found.append({
                "file": checkpoint.filename, "repo": checkpoint.repo, "sha256": checkpoint.sha256,
                "used_by": checkpoint.used_by, "note": "catalog entry: the annotator does not report the file it loaded",
            })
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
) -> ExportReport:
    """Export ``inputs`` (files and folders) with one guide per entry to ``out``; see the module doc.

    A photo without a caption is exported with an empty ``text`` and listed in ``uncaptioned``; with
    ``require_captions`` it is a failure instead. ``engine`` defaults to the local batch engine.
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

    shape = ShardLayout(format, layout, tuple(names))
    fingerprint = {
        "format": format, "layout": layout, "shard_size": shard_size, "resolution": resolution,
        "annotators": {entry.name: {k: v for k, v in entry.settings.items() if k not in RUNTIME_SETTINGS} for entry in entries},
    }
    manifest_path = out / MANIFEST_NAME
    previous = _read_manifest(manifest_path)
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
    card = dataset_card(out, shape, entries, manifest, report, exported, resolution, shard_size, command)
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
    if format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise UsageError('Parquet export needs pyarrow: pip install "controlnet-guides[dataset]" (or use --format webdataset)') from None


@dataclasses.dataclass
class _ShardResult:
    files: dict[str, int]
    rows: int
    failed: list[Failure]


def _export_shard(out: Path, staging: Path, token: str, shape: ShardLayout, group: Sequence[Photo],
                  files: Mapping[str, str], engine: ExportEngine, decode: Callable[[Path, int], np.ndarray]) -> _ShardResult:
    """Annotate one shard's photos into the staging folder, then stream them into the shard file(s)."""
    stages = (PHOTO_STAGE,) + shape.annotators
    jobs = [
        Job(photo.source, {stage: (staging / stage / f"{_staged_name(photo, token)}.png",) for stage in stages})
        for photo in group
    ]
    summary = engine.run(jobs, decode)
    failed_sources = {failure.path for failure in summary.failed}
    kept = [(photo, job) for photo, job in zip(group, jobs) if str(photo.source) not in failed_sources]
    writers: dict[str, _ShardFile] = {}
    sizes: dict[str, int] = {}
    try:
        for folder, name in files.items():
            kind = _ParquetShard if shape.format == "parquet" else _TarShard
            writers[folder] = kind(out / name, shape.image_columns(folder))
        for start in range(0, len(kept), ROWS_PER_GROUP):
            rows = [_Row(photo, {stage: job.outputs[stage][0].read_bytes() for stage in stages}) for photo, job in kept[start : start + ROWS_PER_GROUP]]
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


# ---------------------------------------------------------------------------------------------- card


def training_commands(out: Path, shape: ShardLayout, resolution: int) -> dict[str, str]:
    """The ``train_controlnet.py`` command for each dataset of the export (one per annotator)."""
    commands = {}
    for name in shape.annotators:
        folder = name if shape.layout == "per-annotator" else COLUMNS_FOLDER
        flags = []
        if shape.format == "webdataset":
            conditioning = "conditioning_image.png" if shape.layout == "per-annotator" else f"{name}.png"
            flags = ["--image_column=image.png", f"--conditioning_image_column={conditioning}", "--caption_column=txt"]
        elif shape.layout == "columns":
            flags = [f"--conditioning_image_column={name}"]
        parts = [
            f"accelerate launch {TRAIN_SCRIPT}",
            f"--pretrained_model_name_or_path={BASE_MODEL}",
            f"--train_data_dir={_quote(str(out / folder))}",
            *flags,
            f"--resolution={resolution or 512}",
            f"--output_dir=controlnet-{name}",
            "--learning_rate=1e-5 --train_batch_size=4",
        ]
        commands[name] = " \\\n  ".join(parts)
    return commands


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the libraries that shape the guides and the files (missing ones left out)."""
    versions = {"python": sys.version.split()[0], "guides (controlnet-guides)": __version__}
    for name in (*LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def dataset_card(out: Path, shape: ShardLayout, entries: Sequence[AnnotatorEntry], manifest: Mapping[str, Any],
                 report: ExportReport, photos: Sequence[Photo], resolution: int, shard_size: int, command: str | None) -> str:
    """The README.md of the export: YAML configs for ``datasets``, then what was made and how to train."""
    extension = "parquet" if shape.format == "parquet" else "tar"
    lines = ["---", "configs:"]
    for index, folder in enumerate(shape.datasets):
        config = folder if shape.layout == "per-annotator" else "default"
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {folder}/*.{extension}"]
        if index == 0:
            lines.append("  default: true")
    lines += ["tags:", "- controlnet", "- guides", "---", ""]
    names = ", ".join(shape.annotators)
    failed = len(report.summary.failed)
    origins: dict[str, int] = {}
    for photo in photos:
        origins[photo.caption_from or "none"] = origins.get(photo.caption_from or "none", 0) + 1
    lines += [
        f"# ControlNet training set: {names}",
        "",
        f"Made by guides {__version__} on {datetime.date.today().isoformat()}"
        + (f" with `{command}`." if command else "."),
        "",
        f"- photos in the dataset: {report.rows}; failed (left out): {failed}; without caption (empty `text`): "
        f"{len(report.uncaptioned)}",
        f"- format: {shape.format}, layout: {shape.layout}, up to {shard_size} photos per shard, "
        f"{len(manifest.get('shards', {}))} shard(s)",
        f"- photos resized with ControlNet's resize_image to {resolution} (short side, sides multiples of 64)"
        if resolution else "- photos kept at their own size",
        "- captions: " + ", ".join(f"{origin} {number}" for origin, number in sorted(origins.items())),
        "",
        "Each `image` is the photo exactly as every annotator saw it (decoded with EXIF orientation applied, "
        "alpha composited on white, resized once), stored as lossless PNG; each guide is that annotator's "
        "output for it, stored as PNG, so image and guides align pixel for pixel.",
        "",
        "## Layout",
        "",
    ]
    for folder in shape.datasets:
        columns = ", ".join(f"`{column}`" for column in shape.columns(folder))
        lines.append(f"- `{folder}/*.{extension}`: columns {columns}")
    if shape.format == "webdataset":
        lines += ["", "WebDataset samples are keyed by the photo's 9-digit index; `json` holds `{\"source\": relative path}`."]
    lines += ["", "## Load it", "", "```python", "from datasets import load_dataset", ""]
    for folder in shape.datasets:
        config = f', "{folder}"' if shape.layout == "per-annotator" else ""
        lines.append(f'ds = load_dataset("{out}"{config}, split="train")  # or load_dataset("{out / folder}")')
    if shape.format == "webdataset":
        lines += ["", "import webdataset as wds", f'wds.WebDataset("{out / shape.datasets[0]}/{{000000..{max(0, len(manifest.get("shards", {})) - 1):06d}}}.tar").decode("pil")']
    lines += ["```", "", f"## Train a ControlNet (diffusers `{TRAIN_SCRIPT}`)", ""]
    for name, text in report.commands.items():
        lines += [f"{name}:", "", "```bash", text, "```", ""]
    lines += ["## Annotators and settings", ""]
    for entry in entries:
        settings = ", ".join(f"{key}={value!r}" for key, value in entry.settings.items())
        lines.append(f"- `{entry.name}`: {settings or 'defaults'}")
    lines += ["", "`resolution=0` above: the annotators worked at the size of the stored image (see above).", ""]
    lines += ["## Model files", ""]
    model_files = manifest.get("model_files", {})
    for entry in entries:
        files = model_files.get(entry.name)
        if not files:
            lines.append(f"- `{entry.name}`: none" + (" (no model)" if files == [] else " recorded"))
            continue
        for item in files:
            details = ", ".join(f"{key} {value}" for key, value in item.items() if key != "file" and value is not None)
            lines.append(f"- `{entry.name}`: `{item['file']}` ({details})")
    lines += ["", "## Library versions (installed when the export ran)", ""]
    lines += [f"- {name} {version}" for name, version in library_versions().items()]
    lines += ["", "Random-weight or placeholder checkpoints make wiring-correct but meaningless guides: check the model files above.", ""]
    return "\n".join(lines)


__all__ = [
    "AnnotatorEntry", "ExportEngine", "ExportReport", "LocalExportEngine", "Photo", "PhotoStage", "ShardLayout",
    "dataset_card", "decode_resized", "describe_model_files", "export_dataset", "library_versions", "list_photos",
    "read_captions", "registry_entries", "training_commands",
]
