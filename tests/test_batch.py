"""The batch engine: planning, naming, batching, failure isolation, skip/resume, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guides.batch import is_out_of_memory, output_is_complete, plan_jobs, run_jobs
from guides.errors import InputError, InternalError, UsageError


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
    """Halves the first channel; refuses (bad input) images whose first pixel is 13; records batch sizes."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.calls: list[int] = []

    def batch_key(self, image):
        return image.shape

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 13 for image in images):
            raise InputError(None, "unlucky pixel")
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
    assert summary.failed[0].path.endswith("3.png") and summary.failed[0].reason == "unlucky pixel"
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


# ------------------------------------------------------------------- bugs, out of memory, resume


class BuggyStage(RecordingStage):
    """A bug (not bad input) on images whose first pixel is 13: ``ValueError``."""

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 13 for image in images):
            raise ValueError("index out of range in our own code")
        return [(image[:, :, 0] // 2) for image in images]


def _red_squares(folder: Path, values) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, value in enumerate(values):
        path = folder / f"{index:02d}.png"
        Image.new("RGB", (8, 8), (value, 0, 0)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("batch_size", [1, 3])
def test_a_bug_in_a_stage_stops_the_run_naming_the_file(tmp_path: Path, batch_size: int) -> None:
    values = [40 + index for index in range(12)]
    values[7] = 13
    paths = _red_squares(tmp_path / "in", values)
    jobs, _ = plan_jobs([tmp_path / "in"], ["half"], tmp_path / "out")
    with pytest.raises(InternalError) as caught:
        run_jobs(jobs, {"half": BuggyStage(batch_size)}, workers=2, progress=False)
    error = caught.value
    assert (error.path, error.stage, error.exit_code) == (str(paths[7]), "half", 3)
    assert isinstance(error.__cause__, ValueError)
    assert str(error) == f"half on {paths[7]}: ValueError: index out of range in our own code"
    out = tmp_path / "out"
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []  # queued writes are cancelled
    assert "07.png" not in written and all(not name.startswith(".") for name in written)  # no temporaries
    assert all(output_is_complete(tmp_path / "out" / name) for name in written)
    assert not [t for t in threading.enumerate() if t.name.startswith("guides-io")]  # the pool is shut down


def test_a_guide_that_cannot_be_encoded_is_a_bug_but_an_os_write_error_is_a_failure(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "a.png", 1, make_photo)

    class FloatStage(RecordingStage):
        def annotate_batch(self, images):
            return [image.astype(np.float32) for image in images]

    jobs, _ = plan_jobs([tmp_path / "in"], ["half"], tmp_path / "out")
    with pytest.raises(InternalError, match=r"^half on .*a\.png: TypeError: guides must be uint8 or uint16"):
        run_jobs(jobs, {"half": FloatStage(1)}, progress=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").mkdir()  # the OS refuses the rename: one file's failure
    summary = run_jobs(jobs, {"half": RecordingStage(1)}, progress=False)
    assert summary.written == 0 and [f.reason for f in summary.failed] == [f"{tmp_path / 'out' / 'a.png'}: cannot write: Is a directory"]


def test_a_bug_in_the_decoder_stops_the_run(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)

    def broken_decode(path, max_pixels):
        raise KeyError("a bug in a reader")

    jobs, _ = plan_jobs([tmp_path / "a.png"], ["half"], tmp_path / "out")
    with pytest.raises(InternalError) as caught:
        run_jobs(jobs, {"half": RecordingStage(1)}, progress=False, decode=broken_decode)
    assert (caught.value.path, caught.value.stage) == (str(tmp_path / "a.png"), "decode")


class OutOfMemoryError(RuntimeError):
    """Stands in for ``torch.cuda.OutOfMemoryError`` (recognised by its class name)."""


class GreedyStage(RecordingStage):
    """Runs out of memory on any batch of more than one image, and on images whose first pixel is 99."""

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if len(images) > 1 or images[0][0, 0, 0] == 99:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")
        return [(image[:, :, 0] // 2) for image in images]


def test_out_of_memory_is_retried_at_batch_size_1_then_reported_for_that_file(tmp_path: Path) -> None:
    values = [40 + index for index in range(6)]
    values[4] = 99
    paths = _red_squares(tmp_path / "in", values)
    jobs, _ = plan_jobs([tmp_path / "in"], ["half"], tmp_path / "out")
    stage = GreedyStage(3)
    summary = run_jobs(jobs, {"half": stage}, workers=1, progress=False)
    assert summary.written == 5 and [f.path for f in summary.failed] == [str(paths[4])]
    assert summary.failed[0].reason == (
        "half ran out of memory on this image (OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB); "
        "try a smaller --batch-size, a lower --resolution or --precision fp16/bf16"
    )
    assert 3 in stage.calls and stage.calls.count(1) == 6  # each batch of 3 failed, then every image alone
    assert np.asarray(Image.open(tmp_path / "out" / "05.png"))[0, 0] == 45 // 2


@pytest.mark.parametrize(
    "error, expected",
    [
        (OutOfMemoryError("x"), True),
        (MemoryError(), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB"), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
        (RuntimeError("expected scalar type Half but found Float"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_is_recognised_without_torch(error: BaseException, expected: bool) -> None:
    assert is_out_of_memory(error) is expected


def test_only_complete_pngs_count_as_done(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    whole = (tmp_path / "a.png").read_bytes()
    cases = {"empty.png": b"", "truncated.png": whole[:-1], "garbage.png": b"x" * 100, "whole.png": whole}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    assert {name: output_is_complete(tmp_path / name) for name in cases} == {
        "empty.png": False, "truncated.png": False, "garbage.png": False, "whole.png": True,
    }
    assert not output_is_complete(tmp_path / "missing.png") and not output_is_complete(tmp_path)
    target = tmp_path / "a.half.png"
    target.write_bytes(b"")  # left by a crash outside our atomic writes, or a full disk
    jobs, _ = plan_jobs([tmp_path / "a.png"], ["half"])
    summary = run_jobs(jobs, {"half": RecordingStage(1)}, progress=False)
    assert (summary.written, summary.skipped) == (1, 0)
    assert np.array_equal(np.asarray(Image.open(target)), make_photo(1, 48, 64)[:, :, 0] // 2)
    assert run_jobs(jobs, {"half": RecordingStage(1)}, progress=False).skipped == 1


# ------------------------------------------------------------------------------------- planning


def test_guides_of_any_annotator_and_output_folders_are_not_walked(tmp_path: Path, make_photo) -> None:
    photos = tmp_path / "photos"
    for name in ("a.png", "a.depth.png", "a.canny.png", "a.target.png", "a.composite.png", "a.mask.png",
                 "out/x.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "sam/w.png"):
        _save(photos / name, 1, make_photo)

    def walked(*args, **kwargs) -> list[str]:
        jobs, failures = plan_jobs([photos], *args, **kwargs)
        assert failures == []
        return sorted(str(j.source.relative_to(photos)) for j in jobs)

    assert walked(["canny"]) == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "out/x.png", "sam/w.png"]
    assert walked(["canny"], photos / "out") == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "sam/w.png"]
    # per annotator folders: OUT/<any annotator>/ is left out, also with -o equal to the input folder
    assert walked(["lineart"], photos / "o2", per_stage_folders=True) == ["a.png", "o2/keep.png", "out/x.png", "sam/w.png"]
    assert walked(["canny"], photos, per_stage_folders=True) == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "out/x.png"]
    jobs, _ = plan_jobs([photos / "a.depth.png"], ["canny"])  # named explicitly: still read
    assert [j.outputs["canny"][0].name for j in jobs] == ["a.depth.canny.png"]
    with pytest.raises(UsageError, match="is the input folder"):
        plan_jobs([photos], ["canny"], photos)


def test_the_same_input_twice_is_planned_once(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "a.png", 1, make_photo)
    _save(tmp_path / "in" / "sub" / "b.png", 2, make_photo)
    jobs, failures = plan_jobs([tmp_path / "in" / "a.png", tmp_path / "in", str(tmp_path / "in" / "." / "a.png")],
                               ["canny"], tmp_path / "out")
    assert failures == []
    assert [(j.source.name, j.outputs["canny"][0].relative_to(tmp_path)) for j in jobs] == [
        ("a.png", Path("out/a.png")), ("b.png", Path("out/sub/b.png")),
    ]


def test_an_output_folder_that_is_a_file_is_one_usage_error(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    _save(tmp_path / "b.png", 2, make_photo)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"-o .*file: .*file is a file, not a folder$"):
        plan_jobs([tmp_path / "a.png", tmp_path / "b.png"], ["canny"], tmp_path / "file")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "depth").write_bytes(b"x")
    with pytest.raises(UsageError, match="depth is a file, not a folder"):
        plan_jobs([tmp_path / "a.png"], ["canny", "depth"], tmp_path / "o", per_stage_folders=True)
    jobs, _ = plan_jobs([tmp_path / "a.png"], ["canny"], tmp_path / "b.png")  # one input, .png -o: a file
    assert jobs == [] or jobs[0].outputs["canny"] == (tmp_path / "b.png",)


def test_unreadable_folders_and_paths_are_failures(tmp_path: Path, make_photo) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    probe.chmod(0)
    if os.access(probe, os.R_OK):
        pytest.skip("this user reads files without read permission (root); tests/cli/test_cli.py drops that right")
    _save(tmp_path / "in" / "locked" / "a.png", 1, make_photo)
    _save(tmp_path / "in" / "b.png", 2, make_photo)
    (tmp_path / "in" / "locked").chmod(0)
    try:
        jobs, failures = plan_jobs([tmp_path / "in", tmp_path / "in" / "locked" / "a.png"], ["canny"], tmp_path / "out")
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert [j.source.name for j in jobs] == ["b.png"]
    assert [(f.path, f.reason) for f in failures] == [
        (str(tmp_path / "in" / "locked"), "cannot read folder: Permission denied"),
        (str(tmp_path / "in" / "locked" / "a.png"), "cannot read: permission denied"),
    ]
