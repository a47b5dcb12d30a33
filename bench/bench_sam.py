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

Per image: wall time and the child's CPU time (less sensitive to other work on a shared machine).

The glibc allocator setting (``guides.tune_allocator()``: allocations under 1 GiB served from the heap,
process-wide, so the library never makes it by itself) is **off** for ``ours`` unless
``--tune-allocator`` is given, as for a user who does not opt in; the header and every row say which.
``--breakdown`` adds the other side of that choice for ours (``ours+tuned``, or ``ours-untuned`` with
``--tune-allocator``) and the peer with the same setting through glibc's environment variables
(``peer+heap``: ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), separating that gain from the
decoder's.

Usage: ``python bench/bench_sam.py [--model vit_b] [--points-per-side 32] [--settings default,lowered]
[--tune-allocator] [--breakdown] [--device cpu] [--precision fp32] [--record]``. ``--only ours --device
cuda`` gives images/s.
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
        times, cpu = [], []
        for _ in range(args.repeat):
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                guide = np.asarray(detector(image, detect_resolution=512, image_resolution=512, output_type="np"))
            except AttributeError:  # controlnet_aux 0.0.10: show_anns returns None when there is no mask
                if captured[-1]:
                    raise
                guide = np.zeros_like(image)
                note = "SamDetector raised on an image without masks (show_anns returns None); timed to the error"
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        masks = np.stack([a["segmentation"] for a in captured[-1]]) if captured[-1] else np.zeros((0, 512, 512), bool)
    else:
        import guides

        if args.tune_allocator and not guides.tune_allocator():
            note = "allocator tuning asked for but not available here (not glibc)"
        annotator = guides.get("sam").load(
            model=args.model, models_dir=args.models_dir, device=args.device, precision=args.precision,
            points_per_side=args.points_per_side, **settings,
        )
        engine = annotator.engine
        captured = []
        generate = engine.generate
        engine.generate = lambda settings: captured.append(generate(settings)) or captured[-1]  # type: ignore[method-assign]
        loaded = time.perf_counter() - started
        times, cpu = [], []
        for _ in range(args.repeat):
            engine.reset()  # each timed image pays for its encoder pass
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            guide = annotator.annotate(image)
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        masks = captured[-1].masks
    np.savez_compressed(out / f"{args.child}.npz", masks=masks, guide=guide)
    (out / f"{args.child}.json").write_text(json.dumps({
        "load_s": loaded, "image_s": min(times), "image_cpu_s": min(cpu), "all_s": times, "peak_rss_mb": peak_rss_mb(), "masks": int(len(masks)), "note": note,
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


_HEAP_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
#: Contenders: (child role, environment, allocator tuning by ``guides.tune_allocator()``). ``ours`` follows
#: ``--tune-allocator``; the others are added by ``--breakdown`` (what the allocator setting alone gives).
VARIANTS = {
    "peer": ("peer", {}, False),
    "ours": ("ours", {}, None),
    "peer+heap": ("peer", _HEAP_ENV, False),
    "ours+tuned": ("ours", {}, True),
    "ours-untuned": ("ours", {}, False),
}


def run_child(variant: str, settings: str, args: argparse.Namespace, out: Path) -> dict:
    role, env, tuned = VARIANTS[variant]
    tuned = args.tune_allocator if tuned is None else tuned
    command = [sys.executable, __file__, "--child", role, "--settings", settings, "--out", str(out / variant), "--model", args.model,
               "--models-dir", args.models_dir, "--points-per-side", str(args.points_per_side), "--device", args.device,
               "--precision", args.precision, "--repeat", str(args.repeat)] + (["--tune-allocator"] if tuned else [])
    if args.image:
        command += ["--image", args.image]
    (out / variant).mkdir()
    started = time.perf_counter()
    environ = {key: value for key, value in os.environ.items() if key not in (*_HEAP_ENV, "GUIDES_MALLOC_TUNING")}
    subprocess.run(command, check=True, env={**environ, "PYTHONWARNINGS": "ignore", **env})
    result = json.loads((out / variant / f"{role}.json").read_text())
    result["process_s"] = time.perf_counter() - started
    result["allocator"] = "tuned" if tuned or env else "glibc default"
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
    parser.add_argument("--tune-allocator", action="store_true",
                        help="ours calls guides.tune_allocator() (process-wide glibc setting; off by default, as for users)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run the peer with the allocator setting and ours with the other allocator choice")
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
              f"{Path(args.image).name if args.image else 'synthetic 512x512'}; allocator tuning for ours: "
              f"{'on (--tune-allocator)' if args.tune_allocator else 'off (the default; --tune-allocator turns it on)'}")
    print(header)
    lines += [header, "", "| settings | who | allocator | load | per image (wall) | per image (CPU) | peak RSS | masks | identical masks |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes: list[str] = []
    summaries: list[str] = []
    for name in args.settings.split(","):
        out = Path(temp.name) / name
        out.mkdir()
        other = "ours-untuned" if args.tune_allocator else "ours+tuned"
        variants = [args.only] if args.only else ["peer", "ours"] + (["peer+heap", other] if args.breakdown else [])
        results = {variant: run_child(variant, name, args, out) for variant in variants}
        identical = {}
        if "peer" in results:
            peer = np.load(out / "peer" / "peer.npz")
            for variant in results:
                if variant.startswith("ours"):
                    ours = np.load(out / variant / "ours.npz")
                    same = peer["masks"].shape == ours["masks"].shape and np.array_equal(peer["masks"], ours["masks"])
                    identical[variant] = "yes" if same else "NO"
                    if same and not same_partition(peer["guide"], ours["guide"]):
                        identical[variant] = "masks yes, guide regions NO"
        for variant, result in results.items():
            row = (f"| {name} | {variant} | {result['allocator']} | {result['load_s']:.1f} s | {result['image_s']:.1f} s | {result['image_cpu_s']:.1f} s | "
                   f"{result['peak_rss_mb']:.0f} MB | {result['masks']} | {identical.get(variant, '')} |")
            lines.append(row)
            print(row, flush=True)
            if result.get("note"):
                notes.append(f"{name}, {variant}: {result['note']}")
        if "peer" in results and "ours" in results:
            peer, ours = results["peer"], results["ours"]
            summary = (f"{name}: ours / SamDetector per image = {ours['image_s'] / peer['image_s']:.2f}x wall, "
                       f"{ours['image_cpu_s'] / peer['image_cpu_s']:.2f}x CPU; peak RSS {ours['peak_rss_mb'] / peer['peak_rss_mb']:.2f}x; "
                       f"identical masks: {identical['ours']}")
            summary += f" (ours with allocator tuning {'on' if args.tune_allocator else 'off'})"
            if args.breakdown:
                tuned = results["ours" if args.tune_allocator else "ours+tuned"]
                untuned = results["ours-untuned" if args.tune_allocator else "ours"]
                summary += (f"; tuning on both sides: {tuned['image_cpu_s'] / results['peer+heap']['image_cpu_s']:.2f}x CPU, "
                            f"on neither: {untuned['image_cpu_s'] / peer['image_cpu_s']:.2f}x CPU, "
                            f"ours tuned vs untuned peer: {tuned['image_cpu_s'] / peer['image_cpu_s']:.2f}x CPU")
        else:
            summary = f"{name}: {1.0 / results[variants[0]]['image_s']:.2f} images/s ({variants[0]})"
        summaries.append(summary)
        print(summary, flush=True)
    lines += [""] + [f"- {summary}" for summary in summaries] + [f"- note: {note}" for note in notes]
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")
    temp.cleanup()


if __name__ == "__main__":
    main()
