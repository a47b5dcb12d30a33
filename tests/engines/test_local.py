"""The local engine with plain stages (``annotate_batch``): batching, failure isolation, bugs, out of
memory, bounded memory, progress. Staged annotators: ``test_local_staged.py``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guides.engines import output_is_complete, plan_jobs, run_jobs
from guides.errors import InputError, InternalError
from tests.engines.fakes import OutOfMemoryError, RecordingStage
from tests.engines.fakes import red_squares as _red_squares
from tests.engines.fakes import save_photo as _save


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


class BuggyStage(RecordingStage):
    """A bug (not bad input) on images whose first pixel is 13: ``ValueError``."""

    def annotate_batch(self, images):
        self.calls.append(len(images))
        if any(image[0, 0, 0] == 13 for image in images):
            raise ValueError("index out of range in our own code")
        return [(image[:, :, 0] // 2) for image in images]


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
