"""The Ray engine against the local engine on this machine (issue 8): overhead ratio, same outputs.

Measures, on one generated folder of N distinct 512x512 PNG photos:

* Canny end to end: ``guides run canny DIR -o OUT`` with ``--engine local`` and with ``--engine ray``
  (a fresh process each: Ray's local runtime start-up included), best of ``--repeat``;
* Canny warm: in one child process, the local engine (``run_jobs``) against the Ray engine
  (``run_jobs_ray``) on a Ray runtime started once (the second Ray run is timed: workers and actors are
  warm), i.e. the per-batch overhead of Ray Data itself;
* lineart warm: the same comparison for a model-bound stage on ``--lineart-count`` photos. The
  registered lineart annotator is used when it loads (with a random-weight ``sk_model.pth`` written
  to a temporary models folder); otherwise a stand-in stage running this package's lineart network
  (``guides.nets.informative_drawings``, random weights) at the photo's size, said so in the output;
* that both engines' output trees are byte-identical.

Every contender runs in a child process of this script (same process tree). The machine is shared:
ratios from one run are meaningful, absolute rates are noisy.
Usage: ``python bench/bench_ray.py [--count 200] [--lineart-count 16] [--repeat 3] [--record]``.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_canny import make_photo  # noqa: E402

WARM = r"""
import json, logging, sys, time
import numpy as np
from guides.engines import plan_jobs, run_jobs
from guides.engines.ray import run_jobs_ray, ray_runtime

src, out, stage_name, models_dir = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]


class LineartNetwork:
    # Stand-in for the lineart annotator: the package's lineart network, random weights, RGB/255 in,
    # (line * 255) uint8 out, at the photo's size.
    batch_size = 1

    def __init__(self):
        import torch
        from guides.nets.informative_drawings import lineart_generator
        torch.manual_seed(0)
        self.net = lineart_generator().eval()

    def batch_key(self, image):
        return image.shape

    def annotate_batch(self, images):
        import torch
        with torch.inference_mode():
            x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
            y = self.net(x)[:, 0]
        return [(y[i] * 255).clamp(0, 255).to(torch.uint8).numpy() for i in range(len(images))]

    def close(self):
        pass


def loader():
    if stage_name == "canny":
        from guides.registry import get
        return get("canny").load()
    if stage_name == "lineart":
        from guides.registry import get
        return get("lineart").load(models_dir=models_dir, device="cpu")
    return LineartNetwork()


result = {}
jobs, _ = plan_jobs([src], [stage_name], out + "/local")
stage = loader()
start = time.perf_counter()
summary = run_jobs(jobs, {stage_name: stage}, progress=False)
result["local"] = time.perf_counter() - start
result["local_written"] = summary.written
start = time.perf_counter()
with ray_runtime() as ray:
    result["ray_start"] = time.perf_counter() - start
    jobs, _ = plan_jobs([src], [stage_name], out + "/ray")
    start = time.perf_counter()
    first = run_jobs_ray(jobs, {stage_name: loader}, progress=False)
    result["ray_cold"] = time.perf_counter() - start
    start = time.perf_counter()
    second = run_jobs_ray(jobs, {stage_name: loader}, progress=False, overwrite=True)
    result["ray_warm"] = time.perf_counter() - start
    result["ray_written"] = [first.written, second.written]
    result["cluster_cpus"] = ray.cluster_resources().get("CPU")
print(json.dumps(result))
"""


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def best(command: list[str], repeat: int, clean: Path) -> float:
    times = []
    for _ in range(repeat):
        shutil.rmtree(clean, ignore_errors=True)
        times.append(timed(command))
    return min(times)


def same_tree(left: Path, right: Path) -> bool:
    names = sorted(p.relative_to(left) for p in left.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(right) for p in right.rglob("*") if p.is_file()):
        return False
    match, mismatch, errors = filecmp.cmpfiles(left, right, [str(n) for n in names], shallow=False)
    return not mismatch and not errors


def warm(src: Path, out: Path, stage: str, models_dir: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", WARM, str(src), str(out), stage, str(models_dir)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"warm {stage} failed: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["identical"] = same_tree(out / "local", out / "ray")
    return result


def lineart_choice(models_dir: Path) -> tuple[str, str]:
    """The registered lineart annotator with a random-weight checkpoint if it loads, else the stand-in."""
    probe = (
        "import sys, torch\n"
        "from guides.nets.informative_drawings import lineart_generator\n"
        "torch.manual_seed(0)\n"
        f"torch.save(lineart_generator().state_dict(), {str(models_dir / 'sk_model.pth')!r})\n"
        "from guides.registry import get\n"
        f"get('lineart').load(models_dir={str(models_dir)!r}, device='cpu')\n"
    )
    models_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode == 0:
        return "lineart", "registered lineart annotator, random-weight sk_model.pth"
    last = (done.stderr.strip().splitlines() or ["?"])[-1]
    return "lineart-network", f"stand-in: the package's lineart network with random weights (registered annotator unavailable: {last[:120]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--lineart-count", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    guides = shutil.which("guides") or sys.exit("install the package first: pip install -e .")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        src = work / "photos"
        src.mkdir()
        for index in range(args.count):
            cv2.imwrite(str(src / f"{index:05d}.png"), make_photo(index))
        small = work / "photos-lineart"
        small.mkdir()
        for index in range(min(args.lineart_count, args.count)):
            os.link(src / f"{index:05d}.png", small / f"{index:05d}.png")

        base = [guides, "run", "canny", str(src), "-q", "--overwrite"]
        local = best(base + ["-o", str(work / "local")], args.repeat, work / "local")
        ray = best(base + ["-o", str(work / "ray"), "--engine", "ray"], max(1, args.repeat - 1), work / "ray")
        identical = same_tree(work / "local", work / "ray")
        canny = warm(src, work / "warm-canny", "canny", work / "models")
        stage, what = lineart_choice(work / "models")
        lineart = warm(small, work / "warm-lineart", stage, work / "models")

        n, m = args.count, min(args.lineart_count, args.count)
        lines = [
            f"files: {n} distinct 512x512 PNG (lineart: first {m}); {cores} cores; Ray local runtime with {canny['cluster_cpus']:.0f} CPUs",
            f"canny end to end, guides run --engine local: {n / local:7.1f} img/s ({local:.2f} s, best of {args.repeat})",
            f"canny end to end, guides run --engine ray:   {n / ray:7.1f} img/s ({ray:.2f} s, best of {max(1, args.repeat - 1)})"
            f"  ray/local time = {ray / local:.2f}x; outputs identical: {identical}",
            f"canny warm (runtime up, second run): local {canny['local']:.2f} s, ray {canny['ray_warm']:.2f} s"
            f"  ray/local = {canny['ray_warm'] / canny['local']:.2f}x (ray start {canny['ray_start']:.1f} s, first run {canny['ray_cold']:.1f} s); identical: {canny['identical']}",
            f"lineart warm ({what}): local {m / lineart['local']:.2f} img/s ({lineart['local']:.1f} s), "
            f"ray {m / lineart['ray_warm']:.2f} img/s ({lineart['ray_warm']:.1f} s)  ray/local = {lineart['ray_warm'] / lineart['local']:.2f}x; identical: {lineart['identical']}",
        ]
        print("\n".join(lines))
        if args.record:
            stamp = datetime.date.today().isoformat()
            with open(Path(__file__).with_name("RESULTS.md"), "a", encoding="utf-8") as results:
                results.write(f"\n### bench_ray.py, {stamp}, {platform.machine()} {cores} cores, Python {platform.python_version()}\n\n```\n")
                results.write("\n".join(lines) + "\n```\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
