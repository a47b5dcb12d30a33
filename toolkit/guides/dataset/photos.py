"""The photos of an export: listed as every batch command walks folders, each with its caption.

Captions come, per photo, from a captions file (JSONL or CSV keyed by the path relative to the photo's
input folder, as in a ``metadata.jsonl``), else a sidecar ``PHOTO.txt`` beside it, else ``--prompt``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..engines import Failure, is_own_output, output_names, walk_images
from ..errors import InputError, UsageError

#: Names accepted in captions files for the photo's relative path and for its caption.
PATH_KEYS = ("file_name", "path", "file", "image")
CAPTION_KEYS = ("text", "caption", "prompt")


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
    out_id = _identity(out)
    failures: list[Failure] = []
    found: list[tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            skip = functools.partial(_not_a_photo, own=output_names(), out_id=out_id)
            found.extend((file, file.relative_to(path).as_posix()) for file in walk_images(path, skip))
        elif path.exists() or path.is_symlink():
            found.append((path, path.name))
        else:
            failures.append(Failure(str(path), "no such file or folder"))
    photos: list[Photo] = []
    seen: dict[str, Path] = {}
    seen_files: set[Path] = set()
    for source, relative in found:
        if _identity(source) in seen_files:
            continue  # the same photo given twice (or a file inside a folder also given): exported once
        seen_files.add(_identity(source))
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
