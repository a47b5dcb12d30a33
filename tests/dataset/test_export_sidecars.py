"""An annotator that makes a sidecar document (openpose: keypoints) exports it as a column of its own:
a string of JSON in Parquet (``datasets`` reads it as text), a ``KEY.<column>.json`` member in tar shards."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

importlib.import_module("pyarrow")  # in the test extra: a missing one fails

from guides.dataset.entries import AnnotatorEntry  # noqa: E402
from guides.dataset.export import export_dataset  # noqa: E402
from guides.engines.sidecars import with_sidecar  # noqa: E402
from guides.imaging import load_image  # noqa: E402
from tests.engines.test_sidecars import CountingHalves  # noqa: E402


def _entry() -> AnnotatorEntry:
    return AnnotatorEntry("halves", lambda: with_sidecar(CountingHalves()), sidecar="halves_sums")


def _tree(root: Path, make_photo) -> list[str]:
    names = ["a.png", "sub/b.png", "c.png"]
    for index, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_photo(index, 20 + 4 * index, 24)).save(root / name)
    return sorted(names, key=lambda n: (n.count("/"), n))


def _document(photo: np.ndarray) -> dict:
    guide = CountingHalves().annotate(photo)
    return {"sum": int(guide.sum()), "canvas_width": guide.shape[1], "canvas_height": guide.shape[0]}


def test_parquet_per_annotator_holds_the_documents(tmp_path: Path, make_photo, monkeypatch) -> None:
    datasets = importlib.import_module("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = _tree(tmp_path / "photos", make_photo)
    out = tmp_path / "export"
    report = export_dataset([tmp_path / "photos"], out, [_entry()], shard_size=2, resolution=0)
    assert report.rows == 3 and report.exit_code == 0, report.as_dict()
    train = datasets.load_dataset(str(out), "halves", split="train", cache_dir=str(tmp_path / "cache"))
    assert train.column_names == ["image", "conditioning_image", "halves_sums", "text", "source"]
    assert sorted(train["source"]) == sorted(names)
    for row in train:
        photo = load_image(tmp_path / "photos" / row["source"])
        assert json.loads(row["halves_sums"]) == _document(photo)
        assert np.array_equal(np.asarray(row["conditioning_image"]), CountingHalves().annotate(photo))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "`halves_sums`" in card
    again = export_dataset([tmp_path / "photos"], out, [_entry()], shard_size=2, resolution=0)
    assert again.shards_skipped == 2 and again.shards_written == 0


def test_webdataset_columns_layout_holds_json_members(tmp_path: Path, make_photo) -> None:
    wds = importlib.import_module("webdataset")
    _tree(tmp_path / "photos", make_photo)
    out = tmp_path / "export"
    report = export_dataset([tmp_path / "photos"], out, [_entry()], format="webdataset", layout="columns",
                            shard_size=5, resolution=0)
    assert report.rows == 3
    samples = list(wds.WebDataset(str(out / "data" / "000000.tar"), shardshuffle=False).decode("rgb8"))
    assert len(samples) == 3
    for sample in samples:
        assert {"image.png", "halves.png", "halves_sums.json", "txt", "json"} == set(sample) - {"__key__", "__url__", "__local_path__"}
        photo = load_image(tmp_path / "photos" / sample["json"]["source"])
        assert sample["halves_sums.json"] == _document(photo)


def test_union_model_columns_per_annotator(tmp_path: Path, make_photo, monkeypatch) -> None:
    """``--union-model xinsir``: each annotator's dataset carries its condition's name and mode index."""
    from guides.dataset.entries import registry_entries
    from guides.errors import UsageError
    from guides.weights.union_models import UNION_MODELS

    datasets = importlib.import_module("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tree(tmp_path / "photos", make_photo)
    out = tmp_path / "export"
    report = export_dataset([tmp_path / "photos"], out, registry_entries(["canny", "lineart-standard"]), resolution=64,
                            union_model="xinsir")
    assert report.rows == 3
    for name in ("canny", "lineart-standard"):
        train = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "cache"))
        assert train.column_names == ["image", "conditioning_image", "text", "source", "control_type", "control_mode"]
        assert set(train["control_type"]) == {"thin line"}
        assert set(train["control_mode"]) == {UNION_MODELS["xinsir"].mode("thin line")} == {3}
    with pytest.raises(UsageError) as raised:
        export_dataset([tmp_path / "photos"], tmp_path / "o2", registry_entries(["canny", "lineart-standard"]),
                       union_model="instantx")
    assert str(raised.value) == ("lineart-standard: no condition of the instantx union model (canny, tile, depth, blur, "
                                 "pose, gray, low quality) at --resolution 512")
    with pytest.raises(UsageError, match="needs --layout per-annotator"):
        export_dataset([tmp_path / "photos"], tmp_path / "o3", registry_entries(["canny"]), layout="columns",
                       union_model="xinsir")
