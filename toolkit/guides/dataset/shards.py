"""Shard files: where they go, which columns or tar members they hold, and their atomic writers.

Parquet shards carry the Hugging Face features in their schema (images are ``datasets.Image``
``{bytes, path}`` structs); WebDataset shards follow the webdataset package's conventions (one sample
per photo, members ``KEY.<field>.<ext>`` in a row, keys without dots). Both are streamed into a hidden
temporary file beside the target and renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..imaging import commit_temp, temp_path
from .photos import Photo

FORMATS = ("parquet", "webdataset")
LAYOUTS = ("per-annotator", "columns")
COLUMNS_FOLDER = "data"
#: The pseudo-stage that stores the photo itself (as every annotator saw it).
PHOTO_STAGE = "image"
#: Rows per Parquet row group (Hugging Face's recommendation for image datasets).
ROWS_PER_GROUP = 100


@dataclasses.dataclass(frozen=True)
class ShardLayout:
    """Where shards go and which columns (or tar members) each file holds."""

    format: str
    layout: str
    annotators: tuple[str, ...]
    sidecars: tuple[tuple[str, str], ...] = ()
    """(annotator, column) of the annotators that make a sidecar document (``openpose``,
    ``openpose_keypoints``): a string column of JSON (Parquet) or a ``KEY.<column>.json`` member (tar)."""
    modes: tuple[tuple[str, str, int], ...] = ()
    """(annotator, condition, index) of a union-model export (``--union-model``, per-annotator layout): the
    columns ``control_type`` and ``control_mode`` of each annotator's dataset (tar: in ``KEY.json``)."""

    def mode(self, folder: str) -> tuple[str, int] | None:
        """(control_type, control_mode) of one dataset folder; None outside a union-model export."""
        return next(((condition, index) for name, condition, index in self.modes if name == folder), None)

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

    def document_columns(self, folder: str) -> list[tuple[str, str]]:
        """(column name, annotator whose sidecar document fills it) for one dataset folder."""
        if self.layout == "per-annotator":
            return [(column, name) for name, column in self.sidecars if name == folder]
        return [(column, name) for name, column in self.sidecars]

    def columns(self, folder: str) -> list[str]:
        """The dataset's columns as ``datasets`` shows them."""
        images = [column for column, _ in self.image_columns(folder)]
        documents = [column for column, _ in self.document_columns(folder)]
        modes = ["control_type", "control_mode"] if self.mode(folder) is not None else []
        if self.format == "parquet":
            return images + documents + ["text", "source"] + modes
        return [f"{column}.png" for column in images] + [f"{column}.json" for column in documents] + ["txt", "json"]


@dataclasses.dataclass
class ShardRow:
    """One photo's row: the photo (caption, source), the PNG bytes of each stage (photo and guides) and the
    sidecar documents (JSON text) of the annotators that make one."""

    photo: Photo
    pngs: dict[str, bytes]
    documents: dict[str, str] = dataclasses.field(default_factory=dict)


class ShardFile(Protocol):
    """A shard being written: ``add`` rows, then ``commit`` (rename into place, returns the size) or ``abort``."""

    def add(self, rows: Sequence[ShardRow]) -> None: ...
    def commit(self) -> int: ...
    def abort(self) -> None: ...


def _temp_path(target: Path) -> Path:
    """A hidden temporary name beside ``target`` that ``remove_stale_temp_files`` recognises."""
    return temp_path(target)


class ParquetShard:
    """Streams rows into a Parquet file (one row group per ``add``) and renames it into place."""

    def __init__(self, target: Path, columns: list[tuple[str, str]], documents: list[tuple[str, str]] = (),
                 mode: tuple[str, int] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.target = target
        self.columns = columns
        self.documents = list(documents)
        self.mode = mode
        image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        fields = ([pa.field(name, image) for name, _ in columns] + [pa.field(name, pa.string()) for name, _ in self.documents]
                  + [pa.field("text", pa.string()), pa.field("source", pa.string())])
        features: dict[str, Any] = {name: {"_type": "Image"} for name, _ in columns}
        features.update({name: {"dtype": "string", "_type": "Value"} for name, _ in self.documents})
        features.update(text={"dtype": "string", "_type": "Value"}, source={"dtype": "string", "_type": "Value"})
        if mode is not None:
            fields += [pa.field("control_type", pa.string()), pa.field("control_mode", pa.int64())]
            features.update(control_type={"dtype": "string", "_type": "Value"}, control_mode={"dtype": "int64", "_type": "Value"})
        metadata = {"huggingface": json.dumps({"info": {"features": features}})}
        self.schema = pa.schema(fields, metadata=metadata)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = _temp_path(target)
        self.writer = pq.ParquetWriter(str(self.temp), self.schema, use_dictionary=False)

    def add(self, rows: Sequence[ShardRow]) -> None:
        if not rows:
            return
        data: dict[str, list[Any]] = {name: [{"bytes": row.pngs[stage], "path": None} for row in rows] for name, stage in self.columns}
        data.update({name: [row.documents[stage] for row in rows] for name, stage in self.documents})
        data["text"] = [row.photo.caption or "" for row in rows]
        data["source"] = [row.photo.relative for row in rows]
        if self.mode is not None:
            data["control_type"] = [self.mode[0]] * len(rows)
            data["control_mode"] = [self.mode[1]] * len(rows)
        self.writer.write_table(self._pa.Table.from_pydict(data, schema=self.schema))

    def commit(self) -> int:
        self.writer.close()
        commit_temp(self.temp, self.target)
        return self.target.stat().st_size

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            unlink_quietly(self.temp)


class TarShard:
    """Streams samples into a WebDataset tar (deterministic headers) and renames it into place."""

    def __init__(self, target: Path, columns: list[tuple[str, str]], documents: list[tuple[str, str]] = (),
                 mode: tuple[str, int] | None = None) -> None:
        self.target = target
        self.columns = columns
        self.documents = list(documents)
        self.mode = mode
        target.parent.mkdir(parents=True, exist_ok=True)
        self.temp = _temp_path(target)
        self.tar = tarfile.open(self.temp, "w", format=tarfile.USTAR_FORMAT)

    def add(self, rows: Sequence[ShardRow]) -> None:
        for row in rows:
            key = row.photo.key
            for name, stage in self.columns:
                self._member(f"{key}.{name}.png", row.pngs[stage])
            for name, stage in self.documents:
                self._member(f"{key}.{name}.json", row.documents[stage].encode("utf-8"))
            self._member(f"{key}.txt", (row.photo.caption or "").encode("utf-8"))
            meta: dict[str, Any] = {"source": row.photo.relative}
            if self.mode is not None:
                meta.update(control_type=self.mode[0], control_mode=self.mode[1])
            self._member(f"{key}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        info.uname = info.gname = ""
        self.tar.addfile(info, io.BytesIO(data))

    def commit(self) -> int:
        self.tar.close()
        commit_temp(self.temp, self.target)
        return self.target.stat().st_size

    def abort(self) -> None:
        try:
            self.tar.close()
        finally:
            unlink_quietly(self.temp)


def open_shard(format: str, target: Path, columns: list[tuple[str, str]],  # noqa: A002
               documents: list[tuple[str, str]] = (), mode: tuple[str, int] | None = None) -> ShardFile:
    """Start writing a shard of ``format`` to a temporary file beside ``target`` (``documents``: the
    sidecar columns, ``ShardLayout.document_columns``; ``mode``: ``ShardLayout.mode``)."""
    shard = ParquetShard if format == "parquet" else TarShard
    return shard(target, columns, documents, mode)


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
