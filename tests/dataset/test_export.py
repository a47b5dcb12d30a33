"""guides.dataset.export: the export loads with datasets / webdataset, holds exactly the annotators'
outputs for exactly the stored photos, with the right captions, and resumes."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

importlib.import_module("pyarrow")  # in the test extra: a missing one fails

from guides.dataset.export import (  # noqa: E402
    AnnotatorEntry,
    LocalExportEngine,
    export_dataset,
    read_captions,
    registry_entries,
)
from guides.errors import UsageError  # noqa: E402
from guides.imaging import encode_png, load_image, resize_image  # noqa: E402
from guides.registry import get  # noqa: E402

CANNY = get("canny").load(resolution=0)
EXPORTED = ["a.png", "b.jpg", "sub/c.png", "sub/e.jpeg", "sub/deep er/ünï d.png"]


def _entries(invert_class) -> list[AnnotatorEntry]:
    return registry_entries(["canny"]) + [AnnotatorEntry("invert", invert_class, {"channel": "green"})]


def _captions(root: Path) -> Path:
    (root / "a.txt").write_text("sidecar a (the captions file wins)", encoding="utf-8")
    (root / "sub" / "e.txt").write_text("  sidecar e  \n", encoding="utf-8")
    records = [{"file_name": "a.png", "text": "jsonl a"}, {"file_name": "sub/c.png", "text": "jsonl c"},
               {"file_name": "nowhere.png", "text": "names no photo"}]
    path = root / "metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _failures(report) -> dict[str, str]:
    return {Path(f.path).name: f.reason for f in report.summary.failed}


def _load(*args, cache: Path, **kwargs):
    datasets = importlib.import_module("datasets")  # in the test extra: a missing one fails
    return datasets.load_dataset(*args, cache_dir=str(cache), **kwargs)


def test_parquet_per_annotator_loads_with_datasets_and_holds_each_annotators_output(photo_tree: Path, tmp_path: Path, invert_class, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    report = export_dataset([photo_tree], out, _entries(invert_class), shard_size=2, resolution=64, captions=_captions(photo_tree))

    assert report.rows == 5 and report.summary.written == 5 and report.shards_written == 5, report.as_dict()
    failures = _failures(report)
    assert failures["empty.png"] == "empty file (0 bytes)"
    assert failures["garbage.jpg"] == "not an image, or an unsupported image format"
    assert failures["truncated.png"].startswith("corrupt or truncated image")
    assert failures["z.png"] == "unlucky pixel"
    assert len(failures) == 4 and report.exit_code == 1
    assert report.uncaptioned == ["b.jpg", "sub/deep er/ünï d.png"]
    assert report.unmatched_captions == ["nowhere.png"]
    assert sorted(p.name for p in out.iterdir()) == [".guides-export.json", "README.md", "canny", "invert"]

    expected_text = {"a.png": "jsonl a", "sub/c.png": "jsonl c", "sub/e.jpeg": "sidecar e", "b.jpg": "", "sub/deep er/ünï d.png": ""}
    cache = tmp_path / "hf-cache"
    for name, annotate in (("canny", CANNY.annotate), ("invert", lambda image: 255 - image[:, :, 1])):
        train = _load(str(out), name, split="train", cache=cache)
        assert train.column_names == ["image", "conditioning_image", "text", "source"]
        assert train["source"] == EXPORTED
        for row in train:
            photo = resize_image(load_image(photo_tree / row["source"]), 64)
            image, guide = np.asarray(row["image"]), np.asarray(row["conditioning_image"])
            assert row["image"].mode == "RGB" and row["conditioning_image"].mode == "L"
            assert np.array_equal(image, photo), row["source"]
            assert min(image.shape[:2]) == 64 and guide.shape == image.shape[:2]
            assert np.array_equal(guide, annotate(photo)), f"{name} guide differs for {row['source']}"
            assert row["text"] == expected_text[row["source"]]

    # The stored guide bytes are what `guides run` writes for the stored photo.
    import pyarrow.parquet as pq

    first = pq.read_table(out / "canny" / "train-00000-of-00005.parquet").to_pylist()[0]
    assert first["conditioning_image"]["bytes"] == encode_png(CANNY.annotate(resize_image(load_image(photo_tree / "a.png"), 64)))

    card = (out / "README.md").read_text(encoding="utf-8")
    for text in ("config_name: canny", "path: canny/*.parquet", "config_name: invert", f"--train_data_dir={out / 'canny'}",
                 "- `canny`: resolution=0, low=100, high=200", "- `canny`: none (no model)", "- pyarrow "):
        assert text in card, text


def test_train_controlnet_reads_the_folder_with_its_default_columns(photo_tree: Path, tmp_path: Path, monkeypatch) -> None:
    """What diffusers' make_train_dataset does with --train_data_dir and the default column names."""
    transforms = importlib.import_module("torchvision.transforms")  # in the test extra: a missing one fails
    import torch

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    export_dataset([photo_tree], out, registry_entries(["canny"]), resolution=64, prompt="a photo")
    dataset = _load(str(out / "canny"), cache=tmp_path / "hf-cache")
    columns = dataset["train"].column_names
    assert {"image", "conditioning_image", "text"} <= set(columns)
    image_transforms = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    conditioning_transforms = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.ToTensor()])

    def preprocess(examples):
        examples["pixel_values"] = [image_transforms(image.convert("RGB")) for image in examples["image"]]
        examples["conditioning_pixel_values"] = [conditioning_transforms(image.convert("RGB")) for image in examples["conditioning_image"]]
        assert all(isinstance(caption, str) for caption in examples["text"])
        return examples

    train = dataset["train"].with_transform(preprocess)
    batch = [train[i] for i in range(len(train))]
    assert torch.stack([b["pixel_values"] for b in batch]).shape == (6, 3, 64, 64)
    assert torch.stack([b["conditioning_pixel_values"] for b in batch]).shape == (6, 3, 64, 64)


def test_webdataset_columns_layout_loads_with_webdataset_and_datasets(photo_tree: Path, tmp_path: Path, invert_class, monkeypatch) -> None:
    wds = importlib.import_module("webdataset")  # in the test extra: a missing one fails
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    _captions(photo_tree)
    report = export_dataset([photo_tree], out, _entries(invert_class), format="webdataset", layout="columns",
                            shard_size=4, resolution=0, captions=photo_tree / "metadata.jsonl", prompt="a prompt")
    assert report.rows == 5 and report.uncaptioned == []
    shards = sorted((out / "data").iterdir())
    assert [p.name for p in shards] == ["000000.tar", "000001.tar", "000002.tar"]
    assert "--conditioning_image_column=canny.png" in report.commands["canny"]
    assert "--conditioning_image_column=invert.png" in report.commands["invert"]

    captions = {"a.png": "jsonl a", "sub/c.png": "jsonl c", "sub/e.jpeg": "sidecar e", "b.jpg": "a prompt", "sub/deep er/ünï d.png": "a prompt"}
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("rgb8"))
    assert [s["json"]["source"] for s in samples] == EXPORTED
    for sample in samples:
        assert {"image.png", "canny.png", "invert.png", "txt", "json"} <= set(sample)
        photo = load_image(photo_tree / sample["json"]["source"])
        assert np.array_equal(sample["image.png"], photo)
        assert np.array_equal(sample["canny.png"][:, :, 0], CANNY.annotate(photo))
        assert np.array_equal(sample["invert.png"][:, :, 0], 255 - photo[:, :, 1])
        assert sample["txt"] == captions[sample["json"]["source"]]

    train = _load(str(out), split="train", cache=tmp_path / "hf-cache")
    assert {"image.png", "canny.png", "invert.png", "txt", "json"} <= set(train.column_names)
    assert [row["source"] for row in train["json"]] == EXPORTED
    assert np.array_equal(np.asarray(train[2]["canny.png"]), CANNY.annotate(load_image(photo_tree / "sub/c.png")))


class _Interrupted(Exception):
    pass


class _StopsOnSecondShard(LocalExportEngine):
    """Annotates the second shard (its guides are staged), then dies before the shard is written."""

    def run(self, jobs, decode):
        summary = super().run(jobs, decode)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 2:
            raise _Interrupted
        return summary


class _Recording(LocalExportEngine):
    """Records how many photos of each shard the engine found already staged."""

    def run(self, jobs, decode):
        self.skipped = getattr(self, "skipped", [])
        summary = super().run(jobs, decode)
        self.skipped.append(summary.skipped)
        return summary


def _visible(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}


def test_resume_skips_finished_shards_redoes_changed_ones_and_survives_a_kill(photo_tree: Path, tmp_path: Path, make_photo) -> None:
    entries = registry_entries(["canny"])
    reference = tmp_path / "reference"
    first = export_dataset([photo_tree], reference, entries, shard_size=2, resolution=0, prompt="p")
    assert (first.rows, first.shards_written) == (6, 5)
    files = sorted((reference / "canny").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in files}

    again = export_dataset([photo_tree], reference, entries, shard_size=2, resolution=0, prompt="p")
    assert (again.shards_written, again.shards_skipped, again.summary.written, again.summary.skipped) == (0, 5, 0, 6)
    assert _failures(again) == _failures(first) and again.rows == 6
    assert {p.name: p.stat().st_mtime_ns for p in files} == stamps

    # Killed while the second shard was being made: only finished shards are visible, under real names.
    out = tmp_path / "killed"
    with pytest.raises(_Interrupted):
        export_dataset([photo_tree], out, entries, shard_size=2, resolution=0, prompt="p", engine=_StopsOnSecondShard(entries))
    assert sorted(_visible(out)) == ["canny/train-00000-of-00005.parquet"]
    engine = _Recording(entries)
    resumed = export_dataset([photo_tree], out, entries, shard_size=2, resolution=0, prompt="p", engine=engine)
    engine.close()
    assert (resumed.shards_skipped, resumed.shards_written) == (1, 4)
    assert engine.skipped[0] == 1, "the staged guides of the interrupted shard were made again"  # z.png was staged
    shards = {name: data for name, data in _visible(out).items() if name != "README.md"}
    assert shards == {name: data for name, data in _visible(reference).items() if name != "README.md"}  # byte for byte
    assert not (out / ".guides-staging").exists()

    # A changed photo redoes its shard only.
    Image.fromarray(make_photo(99, 48, 48)).save(photo_tree / "sub" / "c.png")
    changed = export_dataset([photo_tree], reference, entries, shard_size=2, resolution=0, prompt="p")
    assert (changed.shards_written, changed.shards_skipped) == (1, 4)
    assert [p.name for p in files if p.stat().st_mtime_ns != stamps[p.name]] == ["train-00002-of-00005.parquet"]

    # Other settings need --overwrite.
    with pytest.raises(UsageError, match=r"canny.low 100 -> 50.*pass --overwrite"):
        export_dataset([photo_tree], reference, registry_entries(["canny"], overrides=["canny.low=50"]), shard_size=2, resolution=0, prompt="p")
    redone = export_dataset([photo_tree], reference, registry_entries(["canny"], overrides=["canny.low=50"]), shard_size=2,
                            resolution=0, prompt="p", overwrite=True)
    assert redone.shards_written == 5


def test_captions_files_and_their_errors(tmp_path: Path) -> None:
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text('file_name,text\n./a.png,"a, with comma"\nsub\\b.jpg,b\n', encoding="utf-8")
    assert read_captions(csv_path) == {"a.png": "a, with comma", "sub/b.jpg": "b"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file_name": "a.png", "caption": "ok"}\n{nope\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.jsonl:2: not a JSON object"):
        read_captions(bad)
    bad.write_text('{"file_name": "a.png"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.jsonl:1: no caption string"):
        read_captions(bad)
    with pytest.raises(UsageError, match=r"use a .jsonl or .csv file"):
        read_captions(tmp_path / "captions.txt")
    with pytest.raises(UsageError, match=r"expected ANNOTATOR.OPTION=VALUE"):
        registry_entries(["canny"], overrides=["low=5"])
    with pytest.raises(UsageError, match=r"--set canny.low=x: expected a int"):
        registry_entries(["canny"], overrides=["canny.low=x"])
    # values are read as the option's declared type and checked by its declaration: the options' message
    with pytest.raises(UsageError, match=r"^--set canny.low=-5: low must be between 0 and 10000, got -5$"):
        registry_entries(["canny"], overrides=["canny.low=-5"])
    [entry] = registry_entries(["canny"], overrides=["canny.max-working-pixels=none", "canny.high=150"])
    assert (entry.options.max_working_pixels, entry.options.high, entry.options.resolution) == (None, 150, 0)


def test_require_captions_leaves_uncaptioned_photos_out(photo_tree: Path, tmp_path: Path) -> None:
    (photo_tree / "a.txt").write_text("only a has a caption", encoding="utf-8")
    report = export_dataset([photo_tree / "a.png", photo_tree / "b.jpg"], tmp_path / "out", registry_entries(["canny"]),
                            resolution=0, require_captions=True)
    assert report.rows == 1 and report.uncaptioned == []
    assert _failures(report) == {"b.jpg": "no caption (--captions, sidecar .txt or --prompt)"}


def test_bad_arguments_are_usage_errors(photo_tree: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        export_dataset([photo_tree], tmp_path / "file", registry_entries(["canny"]))
    with pytest.raises(UsageError, match="unknown format"):
        export_dataset([photo_tree], tmp_path / "o", registry_entries(["canny"]), format="zip")
    with pytest.raises(UsageError, match="clash with the dataset's own columns"):
        export_dataset([photo_tree], tmp_path / "o", [AnnotatorEntry("text", lambda: CANNY)])
    assert not os.path.exists(tmp_path / "o")
    (photo_tree / "README.md").write_text("the user's own notes", encoding="utf-8")
    with pytest.raises(UsageError, match="holds a README.md that is not a guides export's card"):
        export_dataset([photo_tree], photo_tree, registry_entries(["canny"]))
    assert (photo_tree / "README.md").read_text(encoding="utf-8") == "the user's own notes"


def test_model_files_on_the_card(tmp_path: Path) -> None:
    import hashlib

    from guides.dataset.card import describe_model_files

    checkpoint = tmp_path / "sk_model.pth"
    checkpoint.write_bytes(b"weights" * 1000)

    class Loaded:
        loaded_files = (checkpoint,)

    assert describe_model_files("lineart", Loaded()) == [
        {"file": str(checkpoint), "size": 7000, "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    ]
    catalog = describe_model_files("depth", object())
    assert [item["file"] for item in catalog] == ["ZoeD_M12_N.pt"] and "does not report" in catalog[0]["note"]
    in_workers = describe_model_files("depth", None)  # the Ray engine: loaded elsewhere
    assert [item["file"] for item in in_workers] == ["ZoeD_M12_N.pt"] and "Ray workers" in in_workers[0]["note"]
    assert describe_model_files("canny", object()) == []


def test_resolution_guard_refuses_an_extreme_strip_as_one_failed_photo(tmp_path: Path, make_photo) -> None:
    """1 x 100000 at --resolution 512 would be resized to 512 x 51200000: refused before resizing (the
    resized photo is held to --max-pixels), the other photos are exported."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("L", (1, 100_000), 128).save(photos / "strip.png")
    Image.fromarray(make_photo(1)).save(photos / "good.png")
    report = export_dataset([photos], tmp_path / "out", registry_entries(["canny"]), resolution=512, prompt="p")
    assert _failures(report) == {"strip.png": (
        "1x100000 image: working size 512x51200000 at --resolution 512 has 26,214,400,000 pixels, over the "
        "dataset limit of 268,435,456 (use a smaller --resolution or raise --max-pixels)")}
    assert report.summary.written == 1


def test_the_card_says_what_each_annotator_declares() -> None:
    """Summary, checkpoints (with the options' selection) and ControlNet on the card come from the declarations."""
    from guides.dataset.card import annotator_lines, describe_model_files
    from guides.registry import REGISTRY
    from guides.weights.catalog import CHECKPOINTS, guide_controlnet

    for name in REGISTRY:
        [entry] = registry_entries([name])
        cls = get(name).annotator_class()
        lines = annotator_lines(entry)
        assert lines[0] == f"- `{name}`: {cls.summary}"
        text = "\n".join(lines)
        selected = cls.checkpoint_names(entry.options)
        for checkpoint in (CHECKPOINTS[n] for n in selected):
            assert f"`{checkpoint.name}`: `{checkpoint.filename}` from {checkpoint.repo}" in text and checkpoint.licence in text
        unselected = [c.name for c in cls.checkpoints if c.name not in selected]
        assert not any(f"checkpoint `{n}`:" in text for n in unselected), (name, text)
        assert ("checkpoints: none" in text) == (not selected), text
        meant_for = guide_controlnet(cls, entry.options)  # the ControlNet its options' guide is meant for
        for controlnet in cls.controlnets:
            assert (controlnet.repo in text) == (controlnet == meant_for), (name, text)
        if meant_for is not None:
            assert meant_for.licence in text and f"scale {meant_for.scale:g}" in text
        assert ("ControlNet: none declared" in text) == (not cls.controlnets), text
        # Loaded elsewhere (Ray): the declared checkpoints its options select.
        assert [item["file"] for item in describe_model_files(name, None, entry.options)] == [
            CHECKPOINTS[n].filename for n in selected]
    assert annotator_lines(AnnotatorEntry("invert", lambda: CANNY)) == ["- `invert`: not a registered annotator (no declarations)"]
