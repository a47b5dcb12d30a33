"""The batch engine: planning, naming, batching, failure isolation, skip/resume, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from guides.batch import plan_jobs, run_jobs
from guides.errors import InputError


def _save(path: Path, seed: int, make_photo, size=(48, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo(seed, *size)).save(path)


def test_naming_without_output_and_own_outputs_not_walked(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    (tmp_path / "a.canny.png").write_bytes(b"old guide")
    jobs, failures = plan_jobs([tmp_path], ["canny"], own_outputs=["canny", "depth"])
    assert failures == []
    assert [(j.source.name, j.outputs["canny"][0].name) for j in jobs] == [("a.png", "a.canny.png")]


def test_mirroring_per_stage_folders_and_single_file_output(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "x" / "b c.jpg", 1, make_photo)
    _save(tmp_path / "loose.png", 2, make_photo)
    jobs, _ = plan_jobs([tmp_path / "in", tmp_path / "loose.png"], ["canny", "depth"], tmp_path / "out", per_stage_folders=True)
    outputs = sorted(str(p.relative_to(tmp_path)) for j in jobs for ps in j.outputs.values() for p in ps)
    assert outputs == ["out/canny/loose.png", "out/canny/x/b c.png", "out/depth/loose.png", "out/depth/x/b c.png"]
    jobs, _ = plan_jobs([tmp_path / "loose.png"], ["canny"], tmp_path / "named.png")
    assert jobs[0].outputs["canny"] == (tmp_path / "named.png",)


def test_clashes_and_overwriting_inputs_are_refused(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "p.png", 1, make_photo)
    _save(tmp_path / "in" / "p.jpg", 2, make_photo)
    jobs, failures = plan_jobs([tmp_path / "in"], ["canny"], tmp_path / "out")
    assert len(jobs) == 1 and len(failures) == 1
    assert "is also the output of" in failures[0].reason
    jobs, failures = plan_jobs([tmp_path / "in" / "p.png"], ["canny"], tmp_path / "in" / "p.png")
    assert jobs == [] and "would overwrite an input" in failures[0].reason
    jobs, failures = plan_jobs([tmp_path / "missing"], ["canny"])
    assert failures[0].reason == "no such file or folder"


class RecordingStage:
    """Doubles the first channel; fails on images whose first pixel is 13; records batch sizes."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []

    def batch_key(self, image):
        return image.shape

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 13 for image in images):
            raise ValueError("unlucky pixel")
        return [(image[:, :, 0] // 2) for image in images]


def test_batches_by_key_and_isolates_a_failing_image(tmp_path: Path) -> None:
    paths = []
    for index in range(7):
        value = 13 if index == 3 else 40 + index
        size = (8, 8) if index % 2 else (8, 16)
        path = tmp_path / f"{index}.png"
        Image.new("RGB", size[::-1], (value, 0, 0)).save(path)
        paths.append(path)
    jobs, _ = plan_jobs(paths, ["half"], tmp_path / "out")
    stage = RecordingStage(batch_size=2)
    summary = run_jobs(jobs, {"half": stage}, workers=2, progress=False)
    assert summary.written == 6 and len(summary.failed) == 1
    assert summary.failed[0].path.endswith("3.png") and "half failed (ValueError: unlucky pixel)" in summary.failed[0].reason
    assert max(stage.calls) == 2 and 1 in stage.calls
    assert np.asarray(Image.open(tmp_path / "out" / "4.png"))[0, 0] == 22


class PairStage:
    batch_size = 1

    def batch_key(self, image):
        return None

    def annotate_batch(self, images):
        return [(image[:, :, 0], image[:, :, 1]) for image in images]


def test_stage_with_two_outputs_and_skip_then_overwrite(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    jobs, _ = plan_jobs([tmp_path / "a.png"], ["pair"])
    jobs = [type(jobs[0])(jobs[0].source, {"pair": (tmp_path / "r.png", tmp_path / "g.png")})]
    first = run_jobs(jobs, {"pair": PairStage()}, progress=False)
    assert (first.written, first.skipped) == (1, 0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), make_photo(1, 48, 64)[:, :, 1])
    again = run_jobs(jobs, {"pair": PairStage()}, progress=False)
    assert (again.written, again.skipped) == (0, 1)
    forced = run_jobs(jobs, {"pair": PairStage()}, overwrite=True, progress=False)
    assert (forced.written, forced.skipped) == (1, 0)


def test_decode_errors_are_failures_and_the_batch_goes_on(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "good.png", 1, make_photo)
    (tmp_path / "bad.png").write_bytes(b"nope")
    jobs, _ = plan_jobs([tmp_path], ["half"], tmp_path / "out")
    summary = run_jobs(jobs, {"half": RecordingStage(4)}, progress=False)
    assert summary.written == 1 and [f.reason for f in summary.failed] == ["not an image, or an unsupported image format"]
    assert summary.exit_code == 1 and summary.as_dict()["failed"] == 1


def test_unwritable_output_is_a_failure_per_file(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "a.png", 1, make_photo)
    _save(tmp_path / "in" / "b.png", 2, make_photo)
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"a file where the output folder should be")
    jobs, _ = plan_jobs([tmp_path / "in"], ["half"], blocker / "out")
    summary = run_jobs(jobs, {"half": RecordingStage(1)}, progress=False)
    assert summary.written == 0 and len(summary.failed) == 2
    assert all("cannot write" in f.reason for f in summary.failed)


def test_memory_window_is_bounded(tmp_path: Path, make_photo) -> None:
    """No more than the window of decoded images is alive at once, whatever the number of files."""
    for index in range(40):
        _save(tmp_path / f"{index:02d}.png", index, make_photo, (16, 16))
    alive = {"now": 0, "max": 0}

    def counting_decode(path, max_pixels):
        alive["now"] += 1
        alive["max"] = max(alive["max"], alive["now"])
        return np.asarray(Image.open(path).convert("RGB"))

    class Releasing(RecordingStage):
        def annotate_batch(self, images):
            alive["now"] -= len(images)
            return super().annotate_batch(images)

    jobs, _ = plan_jobs([tmp_path], ["half"], tmp_path / "out")
    summary = run_jobs(jobs, {"half": Releasing(1)}, workers=2, progress=False, decode=counting_decode)
    assert summary.written == 40 and alive["max"] <= 2 * 2 + 1 + 1


def test_killed_run_leaves_no_trusted_partial_files_and_rerun_completes(tmp_path: Path, make_photo) -> None:
    source = tmp_path / "in"
    for index in range(160):
        _save(source / f"{index:03d}.png", index, make_photo, (384, 384))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "guides", "canny", str(source), "-o", str(out), "-q", "--jobs", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and len(os.listdir(out)) >= 10:
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in out.glob("*.png"))
    assert 0 < len(done_before) < 160, "the kill must land mid-batch"
    for name in done_before:  # every visible guide is complete
        assert np.asarray(Image.open(out / name)).shape == (384, 384)
    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert '"skipped": %d' % len(done_before) in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{i:03d}.png" for i in range(160)]  # no temp files left


def test_input_error_message_names_the_file(tmp_path: Path) -> None:
    error = InputError(tmp_path / "x.png", "empty file (0 bytes)")
    assert str(error) == f"{tmp_path / 'x.png'}: empty file (0 bytes)"


def test_progress_bar_shows_rate_and_counts(tmp_path: Path, make_photo, capsys) -> None:
    for index in range(3):
        _save(tmp_path / f"{index}.png", index, make_photo)
    jobs, _ = plan_jobs([tmp_path], ["half"], tmp_path / "out")
    run_jobs(jobs, {"half": RecordingStage(1)}, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "file/s" in err
    run_jobs(jobs, {"half": RecordingStage(1)}, progress=False, overwrite=True)
    assert capsys.readouterr().err == ""
