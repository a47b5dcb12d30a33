"""The local engine overlaps the stages of a staged annotator (issue: GPU-shaped engine, done criterion 1):
``prepare`` and ``finish`` run in the worker threads while ``predict`` runs on the one calling (device)
thread, so a folder costs about its slowest stage, not the sum of the three.

Proven on the CPU with ``DeviceShapedStages``: 40 ms of OpenCV work in ``prepare`` and in ``finish``, and a
40 ms GIL-free wait in ``predict``; 40 images with 2 workers must take at most 0.6x the time of the three
stages one after another (the ideal is about 0.33x; bench/bench_pipeline.py prints the figure). A ratio, not
a time: both sides run in this process on this machine, so a slow machine slows both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from guides.engines import plan_jobs, run_jobs
from tests.engines.fakes import DeviceShapedStages, single_threaded_opencv

BOUND = 0.6


def test_a_folder_costs_the_slowest_stage_not_the_sum(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    images = []
    for index in range(40):
        image = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{index:02d}.png")
        images.append(image)
    with single_threaded_opencv():
        stages = DeviceShapedStages()
        serial = stages.serial_seconds(images)
        jobs, _ = plan_jobs([folder], [stages.name], tmp_path / "out")
        summary = run_jobs(jobs, {stages.name: stages}, workers=2, progress=False)
    assert (summary.written, summary.failed) == (40, [])
    ratio = summary.seconds / serial
    assert ratio <= BOUND, f"folder run {summary.seconds:.2f} s against {serial:.2f} s serial: {ratio:.2f}x (bound {BOUND}x)"
    for index in (0, 39):
        written = np.asarray(Image.open(tmp_path / "out" / f"{index:02d}.png"))
        assert np.array_equal(written, images[index][:, :, 0] // 2)
