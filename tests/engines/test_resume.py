"""Skip and resume: only complete PNGs count as done; a killed run leaves no trusted partial file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from guides.engines import output_is_complete, plan_jobs, run_jobs
from tests.engines.fakes import RecordingStage, kill_mid_run
from tests.engines.fakes import save_photo as _save


def test_killed_run_leaves_no_trusted_partial_files_and_rerun_completes(tmp_path: Path, make_photo) -> None:
    source = tmp_path / "in"
    for index in range(160):
        _save(source / f"{index:03d}.png", index, make_photo, (384, 384))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "guides", "canny", str(source), "-o", str(out), "-q", "--jobs", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before = kill_mid_run(process, out, 160, (384, 384))
    rerun = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert '"skipped": %d' % len(done_before) in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"{i:03d}.png" for i in range(160)]  # no temp files left


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
