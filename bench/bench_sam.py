"""SAM guide: time and peak RSS per 512x512 image, ours against controlnet_aux's SamDetector (issue 6).

Both use the same checkpoint file (random weights in the public ``sam_vit_b_01ec64.pth`` format, or the
model named by ``--model``) and the same generator settings, each in its own child process (same process
tree, one after the other):

* ``peer``: ``SamDetector(SamAutomaticMaskGenerator(sam, **settings))(image)`` (controlnet_aux 0.0.10;
  its own model loading: ``sam_model_registry[model](checkpoint=...)``);
* ``ours``: ``guides.get("sam").load(...)`` (weights contract) then ``annotate(image)``.

Per child: model load time, time for the image (resize, encoder, automatic masks, painting), peak RSS
(VmHWM: load + inference). The masks of both are saved and compared bit for bit by the parent (the
peer's colours are random, so the guides are compared as partitions).

Settings: ``default`` (segment_anything's defaults, what a user runs; random weights give no masks, so
ours skips all mask decoding) and ``lowered`` (IoU and stability thresholds 0: every candidate goes
through upsampling in both; the floor of our speed-up). Random weights measure speed, not quality.

Usage: ``python bench/bench_sam.py [--model vit_b] [--points-per-side 32] [--settings default,lowered]
[--device cpu] [--precision fp32] [--record]``. With ``--device cuda`` also reports images/s.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = {"vit_h": "sam_vit_h_4b8939.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_b": "sam_vit_b_01ec64.pth"}
SETTINGS = {
    "default": {"pred_iou_thresh": 0.88, "stability_score_thresh": 0.95},
    "lowered": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


def peak_rss_mb() -> float:
    """VmHWM of this process in MB (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_input(path: str | None) -> np.ndarray:
    from PIL import Image

    if path:
        return np.asarray(Image.open(path).convert("RGB"))
    rng = np.random.default_rng(0)  # smooth synthetic photo when the reference image is not given
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((512, 512), Image.BICUBIC))


# -------------------------------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> None:
    import torch

    image = load_input(args.image)
    settings = SETTINGS[args.settings]
    out = Path(args.out)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    started = time.perf_counter()
    note = ""
    if args.child == "peer":
        import warnings

        warnings.filterwarnings("ignore")
        from controlnet_aux.segment_anything import SamAutomaticMaskGenerator, SamDetector, sam_model_registry

        model = sam_model_registry[args.model](checkpoint=str(Path(args.models_dir) / FILES[args.model])).to(args.device)
        generator = SamAutomaticMaskGenerator(model, points_per_side=args.points_per_side, **settings)
        detector = SamDetector(generator)
        captured: list = []
        generate = generator.generate
        generator.generate = lambda img: captured.append(generate(img)) or captured[-1]  # type: ignore[method-assign]
        loaded = time.perf_counter() - started
        times = []
        for _ in range(args.repeat):
            sync()
            t0 = time.perf_counter()
            try:
                guide = np.asarray(detector(image, detect_resolution=512, image_resolution=512, output_type="np"))
            except AttributeError:  # controlnet_aux 0.0.10: show_anns returns None when there is no mask
                if captured[-1]:
                    raise
                guide = np.zeros_like(image)
                note = "SamDetector raised on an image without masks (show_anns returns None); timed to the error"
            sync()
            times.append(time.perf_counter() - t0)
        masks = np.stack([a["segmentation"] for a in captured[-1]]) if captured[-1] else np.zeros((0, 512, 512), bool)
    else:
        import guides

        annotator = guides.get("sam").load(
            model=args.model, models_dir=args.models_dir, device=args.device, precision=args.precision,
            points_per_side=args.points_per_side, **settings,
        )
        engine = annotator.engine
        captured = []
        generate = engine.generate
        engine.generate = lambda settings: captured.append(generate(settings)) or captured[-1]  # type: ignore[method-assign]
        loaded = time.perf_counter() - started
        times = []
        for _ in range(args.repeat):
            engine.reset()  # each timed image pays for its encoder pass
            sync()
            t0 = time.perf_counter()
            guide = annotator.annotate(image)
            sync()
            times.append(time.perf_counter() - t0)
        masks = captured[-1].masks
    np.savez_compressed(out / f"{args.child}.npz", masks=masks, guide=guide)
    (out / f"{args.child}.json").write_text(json.dumps({
        "load_s": loaded, "image_s": min(times), "all_s": times, "peak_rss_mb": peak_rss_mb(), "masks": int(len(masks)), "note": note,
    }))


# ---------------------------------------------------------------------------------------------- parent


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)], axis=1), axis=0)
    return len(pairs) == len(np.unique(a.reshape(-1, 3), axis=0)) == len(np.unique(b.reshape(-1, 3), axis=0))


def write_checkpoint(model: str, folder: Path) -> Path:
    import torch
    from segment_anything import sam_model_registry

    path = folder / FILES[model]
    if not path.exists():
        torch.manual_seed(0)
        torch.save(sam_model_registry[model]().state_dict(), path)
    return path


def run_child(role: str, settings: str, args: argparse.Namespace, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", role, "--settings", settings, "--out", str(out), "--model", args.model,
               "--models-dir", args.models_dir, "--points-per-side", str(args.points_per_side), "--device", args.device,
               "--precision", args.precision, "--repeat", str(args.repeat)]
    if args.image:
        command += ["--image", args.image]
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    result = json.loads((out / f"{role}.json").read_text())
    result["process_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=sorted(FILES))
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--settings", default="default,lowered")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=1, help="images timed per child (the best is reported)")
    parser.add_argument("--image", default=None, help="input image [default: $GUIDES_REFS/cutecat_init.png, else synthetic]")
    parser.add_argument("--models-dir", default=None, help="folder with the checkpoint [default: a random one in a temp folder]")
    parser.add_argument("--only", choices=["ours", "peer"], default=None, help="run one side only (e.g. GPU throughput)")
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    parser.add_argument("--child", choices=["ours", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    if args.image is None and os.environ.get("GUIDES_REFS"):
        candidate = Path(os.environ["GUIDES_REFS"]) / "cutecat_init.png"
        args.image = str(candidate) if candidate.is_file() else None
    temp = tempfile.TemporaryDirectory(prefix="bench-sam-")
    if args.models_dir is None:
        args.models_dir = temp.name
        write_checkpoint(args.model, Path(temp.name))
    lines = []
    header = (f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} CPU cores, load average "
              f"{os.getloadavg()[0]:.1f} at start; model {args.model} (random weights), {args.points_per_side}x"
              f"{args.points_per_side} points, device {args.device} {args.precision}, image "
              f"{Path(args.image).name if args.image else 'synthetic 512x512'}")
    print(header)
    lines += [header, "", "| settings | who | load | per image | peak RSS | masks | identical masks |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in args.settings.split(","):
        out = Path(temp.name) / name
        out.mkdir()
        roles = [args.only] if args.only else ["peer", "ours"]
        results = {role: run_child(role, name, args, out) for role in roles}
        identical = "-"
        if len(results) == 2:
            peer, ours = np.load(out / "peer.npz"), np.load(out / "ours.npz")
            identical = "yes" if peer["masks"].shape == ours["masks"].shape and np.array_equal(peer["masks"], ours["masks"]) else "NO"
            if identical == "yes" and not same_partition(peer["guide"], ours["guide"]):
                identical = "masks yes, guide regions NO"
        for role, result in results.items():
            row = (f"| {name} | {role} | {result['load_s']:.1f} s | {result['image_s']:.1f} s | {result['peak_rss_mb']:.0f} MB | "
                   f"{result['masks']} | {identical if role == 'ours' else ''} |")
            lines.append(row)
            print(row, flush=True)
            if result.get("note"):
                lines.append(f"  ({role}: {result['note']})")
                print(f"  ({role}: {result['note']})")
        if len(results) == 2:
            ratio = results["ours"]["image_s"] / results["peer"]["image_s"]
            rss = results["ours"]["peak_rss_mb"] / results["peer"]["peak_rss_mb"]
            summary = f"{name}: ours / SamDetector time per image = {ratio:.2f}x, peak RSS = {rss:.2f}x, identical masks: {identical}"
        else:
            summary = f"{name}: {1.0 / results[roles[0]]['image_s']:.2f} images/s ({roles[0]})"
        print(summary, flush=True)
        lines.append("")
        lines.append(summary)
        lines.append("")
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
    temp.cleanup()


if __name__ == "__main__":
    main()
