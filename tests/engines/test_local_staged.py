"""The local engine pipelines staged annotators (``prepare``/``predict``/``finish``): the same guides as
``annotate``, ``predict`` on the calling thread only, batches by ``item_key``, failures isolated, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guides.engines import is_staged, output_is_complete, plan_jobs, run_jobs
from guides.errors import InternalError
from tests.engines.fakes import OutOfMemoryError, kill_mid_run, RecordingStage, StagedHalves, Unstaged

REPO_ROOT = Path(__file__).resolve().parents[2]


def _photos(folder: Path, make_photo, firsts, sizes=((8, 12), (12, 8))) -> list[Path]:
    """One tiny photo per value of ``firsts`` (its top-left red value; None keeps the photo's), sizes alternating."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, first in enumerate(firsts):
        photo = make_photo(index, *sizes[index % len(sizes)])
        photo[0, 0, 0] = 100 + index % 100 if first is None else first
        path = folder / f"{index:02d}.png"
        Image.fromarray(photo).save(path)
        paths.append(path)
    return paths


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_a_folder_run_writes_the_guides_annotate_gives(tmp_path: Path, make_photo) -> None:
    paths = _photos(tmp_path / "in", make_photo, [None] * 9)
    staged = StagedHalves(batch_size=2)
    assert is_staged(staged) and not is_staged(Unstaged(staged)) and not is_staged(RecordingStage(2))
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves", "half"], tmp_path / "out", per_stage_folders=True)
    summary = run_jobs(jobs, {"halves": staged, "half": RecordingStage(2)}, workers=3, progress=False)
    assert (summary.written, summary.skipped, summary.failed) == (9, 0, [])
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        assert np.array_equal(_read(tmp_path / "out" / "halves" / path.name), StagedHalves().annotate(image))
        assert np.array_equal(_read(tmp_path / "out" / "half" / path.name), image[:, :, 0] // 2)
    # the unstaged path (annotate_batch) through the same engine writes the same files
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "plain")
    plain = run_jobs(jobs, {"halves": Unstaged(StagedHalves(batch_size=2))}, workers=3, progress=False)
    assert plain.written == 9
    for path in paths:
        assert (tmp_path / "plain" / path.name).read_bytes() == (tmp_path / "out" / "halves" / path.name).read_bytes()


def test_predict_runs_on_the_calling_thread_prepare_and_finish_in_workers(tmp_path: Path, make_photo) -> None:
    _photos(tmp_path / "in", make_photo, [None] * 12)
    staged = StagedHalves(batch_size=3)
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    assert run_jobs(jobs, {"halves": staged}, workers=3, progress=False).written == 12
    caller = threading.get_ident()
    assert set(staged.threads["predict"]) == {caller}
    assert len(staged.threads["prepare"]) == len(staged.threads["finish"]) == 12
    assert caller not in staged.threads["prepare"] and caller not in staged.threads["finish"]
    assert all(name.startswith("guides-io") for name in staged.thread_names["prepare"] + staged.thread_names["finish"])


def test_predict_batches_share_an_item_key_up_to_batch_size(tmp_path: Path, make_photo) -> None:
    _photos(tmp_path / "in", make_photo, [None] * 11, sizes=((8, 12), (8, 12), (12, 8)))
    staged = StagedHalves(batch_size=3)
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    assert run_jobs(jobs, {"halves": staged}, workers=2, progress=False).written == 11
    assert sum(len(batch) for batch in staged.batches) == 11
    assert all(len(set(batch)) == 1 and len(batch) <= 3 for batch in staged.batches)
    assert {batch[0] for batch in staged.batches} == {(8, 12), (12, 8)} and max(map(len, staged.batches)) == 3


def test_bad_input_in_prepare_predict_or_finish_fails_that_file_only(tmp_path: Path, make_photo) -> None:
    paths = _photos(tmp_path / "in", make_photo, [None, 13, None, 77, None, 99, None, None])
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    staged = StagedHalves(batch_size=2)
    summary = run_jobs(jobs, {"halves": staged}, workers=2, progress=False)
    assert (summary.written, len(summary.failed), summary.exit_code) == (5, 3, 1)
    assert sorted(failure.line() for failure in summary.failed) == [
        f"{paths[1]}: unlucky pixel", f"{paths[3]}: predict refused", f"{paths[5]}: finish refused",
    ]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [p.name for i, p in enumerate(paths) if i not in (1, 3, 5)]
    # the same counts and lines as the unstaged path (annotate_batch) through the same engine
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "plain")
    plain = run_jobs(jobs, {"halves": Unstaged(StagedHalves(batch_size=2))}, workers=2, progress=False)
    assert (plain.written, sorted(f.reason for f in plain.failed)) == (5, sorted(f.reason for f in summary.failed))


class GreedyHalves(StagedHalves):
    """Runs out of memory in ``predict`` on any batch of several, and on items whose first value is 55."""

    def predict(self, items):
        self.batches.append([self.item_key(item) for item in items])
        if len(items) > 1 or items[0][0, 0] == 55:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return [item // 2 for item in items]


def test_out_of_memory_in_predict_is_retried_alone_then_reported_for_that_file(tmp_path: Path, make_photo) -> None:
    paths = _photos(tmp_path / "in", make_photo, [None, None, 55, None], sizes=((8, 12),))
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    staged = GreedyHalves(batch_size=4)
    summary = run_jobs(jobs, {"halves": staged}, workers=1, progress=False)
    assert summary.written == 3 and [f.line() for f in summary.failed] == [
        f"{paths[2]}: halves ran out of memory on this image (OutOfMemoryError: CUDA out of memory. Tried to allocate "
        "20.00 GiB); try a smaller --batch-size, a lower --resolution or --precision fp16/bf16"
    ]
    assert [len(batch) for batch in staged.batches] == [4, 1, 1, 1, 1]


class BuggyHalves(StagedHalves):
    """A bug (``ValueError``, not bad input) in one stage on items whose first red value is 21."""

    def __init__(self, stage: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.buggy = stage

    def prepare(self, image):
        if self.buggy == "prepare" and image[0, 0, 0] == 21:
            raise ValueError("a bug in prepare")
        return super().prepare(image)

    def predict(self, items):
        if self.buggy == "predict" and any(item[0, 0] == 21 for item in items):
            raise ValueError("a bug in predict")
        return super().predict(items)

    def finish(self, item, output):
        if self.buggy == "finish" and item[0, 0] == 21:
            raise ValueError("a bug in finish")
        return super().finish(item, output)


@pytest.mark.parametrize("stage", ["prepare", "predict", "finish"])
def test_a_bug_in_a_stage_stops_the_run_naming_the_file(tmp_path: Path, make_photo, stage: str) -> None:
    paths = _photos(tmp_path / "in", make_photo, [None, None, None, 21, None, None], sizes=((8, 12),))
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    with pytest.raises(InternalError) as caught:
        run_jobs(jobs, {"halves": BuggyHalves(stage, batch_size=2)}, workers=2, progress=False)
    assert (caught.value.path, caught.value.stage) == (str(paths[3]), "halves")
    assert str(caught.value) == f"halves on {paths[3]}: ValueError: a bug in {stage}"
    out = tmp_path / "out"
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert "03.png" not in written and all(output_is_complete(out / name) for name in written)
    assert not [t for t in threading.enumerate() if t.name.startswith("guides-io")]


def test_memory_holds_a_few_batches_of_prepared_items(tmp_path: Path, make_photo) -> None:
    """Items are prepared ahead of ``predict`` in a bounded window, whatever the number of files."""
    _photos(tmp_path / "in", make_photo, [None] * 40, sizes=((8, 8),))
    alive = {"now": 0, "max": 0}
    lock = threading.Lock()

    class Counting(StagedHalves):
        def prepare(self, image):
            with lock:
                alive["now"] += 1
                alive["max"] = max(alive["max"], alive["now"])
            return super().prepare(image)

        def predict(self, items):
            with lock:
                alive["now"] -= len(items)
            return super().predict(items)

    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out")
    assert run_jobs(jobs, {"halves": Counting(batch_size=2)}, workers=2, progress=False).written == 40
    assert alive["max"] <= 2 * 2 + 2 + 2


KILLED_RUN = """
import sys
from guides.engines import plan_jobs, run_jobs
from tests.engines.fakes import StagedHalves
jobs, _ = plan_jobs([sys.argv[1]], ["halves"], sys.argv[2])
run_jobs(jobs, {"halves": StagedHalves(batch_size=2, delay=0.01)}, workers=2, progress=False)
"""


def test_a_killed_staged_run_leaves_no_partial_file_and_a_rerun_resumes(tmp_path: Path, make_photo) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    _photos(source, make_photo, [None] * 300, sizes=((64, 64),))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(source), str(out)], env=env, cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = kill_mid_run(process, out, 300, (64, 64))
    jobs, _ = plan_jobs([source], ["halves"], out)
    rerun = run_jobs(jobs, {"halves": StagedHalves(batch_size=2)}, workers=2, progress=False)
    assert (rerun.skipped, rerun.written, rerun.failed) == (len(done_before), 300 - len(done_before), [])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i:02d}.png" for i in range(300))  # no temp files left
