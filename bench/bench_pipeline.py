"""Pipeline overlap of the local engine (issue: GPU-shaped engine, done criterion 1): a folder of N images
through a staged annotator whose ``prepare`` and ``finish`` each do 40 ms of OpenCV work and whose
``predict`` waits 40 ms per image without the GIL (``tests.engines.fakes.DeviceShapedStages``), against
the three stages run one after another in this process (OpenCV single-threaded, so each stage holds one
core as the issue's model assumes). Prints the ratio for each worker count (target
<= 0.6x with 2 workers; the ideal on 2 cores is about 0.33x).

Usage: ``python bench/bench_pipeline.py [--count 40] [--workers 1,2,4] [--seconds 0.04]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=0.04)
    args = parser.parse_args()
    from guides.engines import plan_jobs, run_jobs
    from tests.engines.fakes import DeviceShapedStages, single_threaded_opencv

    rng = np.random.default_rng(0)
    with single_threaded_opencv(), tempfile.TemporaryDirectory() as work:
        stages = DeviceShapedStages(args.seconds)
        folder = Path(work) / "in"
        folder.mkdir()
        images = []
        for index in range(args.count):
            images.append(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
            Image.fromarray(images[-1]).save(folder / f"{index:05d}.png")
        serial = stages.serial_seconds(images)
        print(f"{args.count} images, stages of {args.seconds * 1000:.0f} ms ({stages.blurs} blurs each side); "
              f"serial {serial:.2f} s")
        for run, workers in enumerate(int(value) for value in args.workers.split(",")):
            jobs, _ = plan_jobs([folder], [stages.name], Path(work) / f"out-{run}")
            summary = run_jobs(jobs, {stages.name: stages}, workers=workers, progress=False)
            assert summary.written == args.count and not summary.failed
            print(f"workers {workers}: {summary.seconds:.2f} s, {summary.seconds / serial:.2f}x of serial"
                  + (" (target <= 0.6x)" if workers == 2 else ""))


if __name__ == "__main__":
    main()
