"""``guides dataset`` through the console-script entry point: messages, exit codes, JSON report."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from tests.cli_testing import invoke

importlib.import_module("pyarrow")  # in the test extra: a missing one fails


def test_dataset_command_reports_failures_uncaptioned_photos_and_commands(photo_tree: Path, tmp_path: Path) -> None:
    (photo_tree / "sub" / "c.txt").write_text("a caption for c", encoding="utf-8")
    out = tmp_path / "train set"
    result = invoke("dataset", str(photo_tree), "-a", "canny", "-o", str(out), "--resolution", "0", "--shard-size", "4")
    assert result.exit_code == 1, result.output
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert failed[:2] == [
        f"failed: {photo_tree / 'empty.png'}: empty file (0 bytes)",
        f"failed: {photo_tree / 'sub' / 'garbage.jpg'}: not an image, or an unsupported image format",
    ]
    assert len(failed) == 3 and failed[2].startswith(f"failed: {photo_tree / 'sub' / 'truncated.png'}: corrupt or truncated image")
    assert [line for line in result.stderr.splitlines() if line.startswith("no caption: ")] == [
        "no caption: a.png", "no caption: b.jpg", "no caption: z.png", "no caption: sub/e.jpeg", "no caption: sub/deep er/ünï d.png",
    ]
    assert "6 photos in" in result.stderr and "train a canny ControlNet" in result.stderr
    assert f"--train_data_dir='{out / 'canny'}'" in result.stderr
    assert "Traceback" not in result.output

    again = invoke("dataset", str(photo_tree), "-a", "canny", "-o", str(out), "--resolution", "0", "--shard-size", "4", "--json", "-q")
    report = json.loads(again.stdout)
    assert (report["rows"], report["written"], report["skipped"], report["failed"], report["shards_skipped"]) == (6, 0, 6, 3, 3)
    assert report["uncaptioned"] == ["a.png", "b.jpg", "z.png", "sub/e.jpeg", "sub/deep er/ünï d.png"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"guides dataset {photo_tree} -a canny -o '{out}'" in card


@pytest.mark.parametrize(
    "args, message",
    [
        (("-a", "nope"), "unknown annotator 'nope'"),
        (("-a", "canny", "--set", "canny.lo=1"), "--set canny.lo: unknown option; known: high, low"),
        (("-a", "canny", "--set", "depth.x=1"), "'depth' is not one of the exported annotators (canny)"),
        (("-a", "canny", "--set", "canny.low=-5"), "--set canny.low=-5: low must be between 0 and 10000, got -5"),
        (("-a", "canny", "--set", "canny.high=x"), "--set canny.high=x: expected a int"),
        (("-a", "canny", "--captions", "caps.txt"), "use a .jsonl or .csv file"),
        (("-a", "canny", "--format", "zip"), "Invalid value for '--format'"),
    ],
)
def test_dataset_usage_errors_exit_2(args, message: str, tmp_path: Path) -> None:
    result = invoke("dataset", str(tmp_path), "-o", str(tmp_path / "out"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_missing_weights_are_not_downloaded_unasked(photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the command line a learned annotator's missing checkpoint is an error (exit 2, one line naming
    --download), never a download; with --download the export asks the hub."""
    import guides.weights.resolve as resolve

    asked: list[str] = []

    def no_download(entry, to=None):  # type: ignore[no-untyped-def]
        asked.append(getattr(entry, "name", entry))
        raise resolve.WeightsError("no hub in this test")

    monkeypatch.setattr(resolve, "download_checkpoint", no_download)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf home"))
    monkeypatch.delenv("GUIDES_MODELS_DIR", raising=False)
    out = tmp_path / "train"
    result = invoke("dataset", str(photo_folder), "-a", "lineart", "-o", str(out), "--prompt", "a photo", "-q")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint 'lineart'") and "--download" in lines[0], result.stderr
    assert "downloading was not asked for" in lines[0] and asked == []
    # --download reaches the download step: offline (the suite's HF_HUB_OFFLINE=1) it says so, in one line
    again = invoke("dataset", str(photo_folder), "-a", "lineart", "-o", str(out), "--prompt", "a photo", "-q", "--download")
    assert again.exit_code == 2 and "HF_HUB_OFFLINE is set" in again.stderr, again.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(resolve, "is_offline", lambda: False)
    online = invoke("dataset", str(photo_folder), "-a", "lineart", "-o", str(out), "--prompt", "a photo", "-q", "--download")
    assert online.exit_code == 2 and "no hub in this test" in online.stderr, online.output
    assert asked == ["lineart"]
