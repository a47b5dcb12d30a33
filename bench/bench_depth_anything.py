"""depth-anything: network time at 518 on the CPU and peak RSS, ours against transformers'
``DepthAnythingForDepthEstimation`` with the same (random) weights.

Each side runs in its own child process (the same process tree: this script starts both), alternately,
``--repeats`` times; each child loads its network from the same files (ours: ``guides.load("depth-anything")``
from the flat models folder's ``depth_anything_v2_vit?.safetensors``, memory-mapped; transformers:
``from_pretrained`` of the ``save_pretrained`` folder), runs one warm-up and ``--rounds`` forwards of the
same normalised 518 x 518 input (and ours also a whole ``annotate`` of a 512 x 512 photo), and prints its
times as JSON. Peak RSS of each child comes from ``/usr/bin/time -f %M`` (as bench_line_annotators.py:
``wait4`` would report this process's high-water mark). Targets: time ratio ours / transformers <= 0.9,
peak RSS not above.

Random weights (the tests' ``scaled_reference``) prove nothing about quality; time and memory do not depend
on the values.

Usage: ``python bench/bench_depth_anything.py [--model small|base|large] [--rounds 3] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LETTER = {"small": "s", "base": "b", "large": "l"}

CHILD = r"""
import json, sys, time
import numpy as np, torch
side, model_name, folder, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
x = torch.randn(1, 3, 518, 518)
started = time.perf_counter()
if side == "ours":
    import guides
    annotator = guides.load("depth-anything", models_dir=folder + "/models", model=model_name, device="cpu")
    net = lambda: annotator.model(x)
else:
    from transformers import DepthAnythingForDepthEstimation
    model = DepthAnythingForDepthEstimation.from_pretrained(folder + "/hf").eval()
    net = lambda: model(pixel_values=x).predicted_depth
load = time.perf_counter() - started
times = []
with torch.inference_mode():
    net()
    for _ in range(rounds):
        started = time.perf_counter()
        net()
        times.append(time.perf_counter() - started)
result = {"load": load, "forward": min(times)}
if side == "ours":
    sys.path.insert(0, sys.argv[5])
    from tests.conftest import synthetic_photo
    image = synthetic_photo(1, 512, 512)
    annotator.annotate(image)
    started = time.perf_counter()
    annotator.annotate(image)
    result["annotate"] = time.perf_counter() - started
print(json.dumps(result))
"""


def make_weights(model: str, folder: Path) -> None:
    """The tests' random transformers network of size ``model``, saved as the hub's -hf folder and as our
    flat models folder's file (the same bytes)."""
    sys.path.insert(0, str(HERE.parent))
    from tests.nets.test_depth_anything import save_hf_file, scaled_reference

    hf_file = save_hf_file(scaled_reference(model), folder / "hf")
    (folder / "models").mkdir()
    (folder / "models" / f"depth_anything_v2_vit{LETTER[model]}.safetensors").symlink_to(hf_file)


def child(side: str, model: str, folder: Path, rounds: int) -> dict[str, float]:
    """One side in its own process: its JSON times and its peak RSS (MiB, ``/usr/bin/time -f %M``)."""
    process = subprocess.run(
        ["/usr/bin/time", "-f", "%M", sys.executable, "-c", CHILD, side, model, str(folder), str(rounds),
         str(HERE.parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if process.returncode != 0:
        raise RuntimeError(f"{side} failed: {process.stderr[-2000:]}")
    result = json.loads(process.stdout.strip().splitlines()[-1])
    result["rss_mib"] = int(process.stderr.strip().splitlines()[-1]) / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small", choices=sorted(LETTER))
    parser.add_argument("--rounds", type=int, default=3, help="timed forwards per child (best kept)")
    parser.add_argument("--repeats", type=int, default=2, help="children per side, alternating (best kept)")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="bench-depth-anything-") as work:
        folder = Path(work)
        started = time.perf_counter()
        make_weights(args.model, folder)
        print(f"# random {args.model} weights written in {time.perf_counter() - started:.1f} s")
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "transformers": []}
        for _ in range(args.repeats):
            for side in runs:
                runs[side].append(child(side, args.model, folder, args.rounds))
    best = {side: {key: min(run[key] for run in results) for key in results[0]} for side, results in runs.items()}
    ours, theirs = best["ours"], best["transformers"]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, model {args.model}, input 518 x 518, fp32")
    print(f"forward at 518: ours {ours['forward']:.3f} s, transformers {theirs['forward']:.3f} s, "
          f"ratio {ours['forward'] / theirs['forward']:.2f} (target <= 0.9)")
    print(f"load: ours {ours['load']:.2f} s, transformers {theirs['load']:.2f} s")
    print(f"peak RSS: ours {ours['rss_mib']:.0f} MiB, transformers {theirs['rss_mib']:.0f} MiB, "
          f"ratio {ours['rss_mib'] / theirs['rss_mib']:.2f} (target <= 1)")
    print(f"ours, whole annotate of a 512 x 512 photo (518 x 518 network input): {ours['annotate']:.3f} s")
    print(json.dumps({"model": args.model, "ours": ours, "transformers": theirs}))


if __name__ == "__main__":
    main()
