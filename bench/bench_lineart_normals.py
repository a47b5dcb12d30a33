"""Lineart and normals guides: time per image and peak RSS, ours against controlnet_aux's
``LineartDetector`` and ``NormalBaeDetector`` with the same weights (issue 4).

Checkpoints: random weights in the exact formats of ``sk_model.pth``/``sk_model2.pth`` (plain state
dicts) and ``scannet.pt`` (``{"model": state_dict}``, keys prefixed ``module.``). The NormalBae
reference's BatchNorm statistics are calibrated on the benchmark image (see tests/nets/test_normalbae.py):
a default-initialised NNET underflows to denormal floats, which makes *both* implementations several
times slower than with real weights and the comparison meaningless.

* single image: both detectors loaded in this process, 512x512 input, calls interleaved
  peer/ours/ours/peer per round (same machine load for both), median wall and CPU time per call;
  peer = ``detector(image, detect_resolution=512, image_resolution=512, output_type="np")``,
  ours = ``annotator.annotate(image)``.
* folder: N distinct 512x512 PNGs, each contender end to end in its own child process (import, load,
  read, annotate, write PNG): peer = a loop over the files with ``Image.open`` / detector / ``save``
  (what users write), ours = ``guides lineart|normals DIR -o OUT`` through the CLI's batch engine.
  Per-image time = total / N; peak RSS (VmHWM) of each child.

Usage: ``python bench/bench_lineart_normals.py [--only lineart|normals] [--folder 32] [--rounds 3]
[--batch-size 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 512


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photo(seed: int, size: int = SIZE) -> np.ndarray:
    """A synthetic 512x512 photo (gradients, discs, noise); the cat when GUIDES_REFS is set (seed 0)."""
    import cv2
    from PIL import Image

    refs = os.environ.get("GUIDES_REFS")
    if seed == 0 and refs and (Path(refs) / "cutecat_init.png").is_file():
        return np.asarray(Image.open(Path(refs) / "cutecat_init.png").convert("RGB").resize((size, size)))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([127 + 100 * np.sin(xx / (17 + seed % 7) + seed), 127 + 100 * np.cos(yy / (23 + seed % 5)),
                      (xx + yy) * 255 / (2 * size)], axis=2)
    for _ in range(6):
        center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(image, center, int(rng.integers(20, 120)), tuple(float(c) for c in rng.integers(0, 256, 3)), -1)
    return (image + rng.normal(0, 6, image.shape)).clip(0, 255).astype(np.uint8)


def make_checkpoints(folder: Path, calibration: list[np.ndarray]) -> None:
    """sk_model.pth, sk_model2.pth and scannet.pt with random weights (see the module docstring)."""
    import contextlib
    import io
    import types

    import torch
    import torchvision.transforms as transforms
    from controlnet_aux.lineart import Generator
    from controlnet_aux.normalbae.nets.NNET import NNET

    for seed, name in ((0, "sk_model.pth"), (1, "sk_model2.pth")):
        torch.manual_seed(seed)
        generator = Generator(3, 1, 3)
        with torch.no_grad():
            generator.model4[1].weight.mul_(3.0)  # as in the tests: a wider spread of grey levels
        torch.save(generator.state_dict(), folder / name)
    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4, importance_ratio=0.7)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        network = NNET(args)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    with torch.no_grad():
        for image in calibration:
            network(normalize(torch.from_numpy(image).float().div(255).permute(2, 0, 1)[None]))
    torch.save({"model": {f"module.{k}": v for k, v in network.state_dict().items()}}, folder / "scannet.pt")


def load_peer(kind: str, folder: Path):  # type: ignore[no-untyped-def]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        if kind == "lineart":
            from controlnet_aux.lineart import LineartDetector

            return LineartDetector.from_pretrained(str(folder))
        from controlnet_aux.normalbae import NormalBaeDetector

        return NormalBaeDetector.from_pretrained(str(folder))


def load_ours(kind: str, folder: Path, batch_size: int = 1):  # type: ignore[no-untyped-def]
    import guides

    return guides.load(kind, device="cpu", models_dir=str(folder), batch_size=batch_size)


def run_peer(detector, image: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    return detector(image, detect_resolution=SIZE, image_resolution=SIZE, output_type="np")


def as_issue_convention(kind: str, detected: np.ndarray) -> np.ndarray:
    """controlnet_aux's output in ours: lineart raw (255 - its inverted map), one channel."""
    return 255 - detected[..., 0] if kind == "lineart" else detected


def peer_folder_child(kind: str, folder: Path, inputs: Path, outputs: Path) -> None:
    """What a controlnet_aux user writes: load once, loop over the files."""
    from PIL import Image

    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    detector = load_peer(kind, folder)
    for path in sorted(inputs.glob("*.png")):
        detected = detector(Image.open(path).convert("RGB"), detect_resolution=SIZE, image_resolution=SIZE, output_type="pil")
        detected.save(outputs / path.name)
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))


def ours_folder_child(kind: str, folder: Path, inputs: Path, outputs: Path, batch_size: int) -> None:
    from guides.cli.main import main

    started = time.perf_counter()
    try:
        main([kind, str(inputs), "-o", str(outputs), "--models-dir", str(folder), "--device", "cpu",
              "--batch-size", str(batch_size), "-q"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    print(json.dumps({"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb()}))


def single_image(kind: str, folder: Path, image: np.ndarray, rounds: int) -> dict[str, float]:
    import torch

    peer, ours = load_peer(kind, folder), load_ours(kind, folder)
    walls: dict[str, list[float]] = {"peer": [], "ours": []}
    cpus: dict[str, list[float]] = {"peer": [], "ours": []}
    outputs: dict[str, np.ndarray] = {}
    calls = {"peer": lambda: run_peer(peer, image), "ours": lambda: ours.annotate(image)}
    for name in ("peer", "ours"):  # warm-up (oneDNN primitive creation)
        outputs[name] = calls[name]()
    for _ in range(rounds):
        for name in ("peer", "ours", "ours", "peer"):
            wall, cpu = time.perf_counter(), time.process_time()
            calls[name]()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    expected = as_issue_convention(kind, outputs["peer"])
    diff = np.abs(outputs["ours"].astype(np.int16) - expected.astype(np.int16))
    result = {
        "peer_s": statistics.median(walls["peer"]), "ours_s": statistics.median(walls["ours"]),
        "peer_cpu_s": statistics.median(cpus["peer"]), "ours_cpu_s": statistics.median(cpus["ours"]),
        "within_1_level": float((diff <= 1).mean()), "max_diff": int(diff.max()),
        "threads": torch.get_num_threads(),
    }
    return result


def folder_run(kind: str, folder: Path, count: int, batch_size: int) -> dict[str, dict[str, float]]:
    from PIL import Image

    results = {}
    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-folder-") as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for index in range(count):
            Image.fromarray(photo(100 + index)).save(inputs / f"{index:03d}.png")
        for name in ("peer", "ours"):
            outputs = Path(tmp) / f"out-{name}"
            outputs.mkdir()
            command = [sys.executable, __file__, "--child", f"{name}-folder", "--kind", kind, "--models",
                       str(folder), "--inputs", str(inputs), "--outputs", str(outputs), "--batch-size", str(batch_size)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeError(f"{name} folder run failed:\n{done.stderr[-3000:]}")
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            written = len(list(outputs.glob("*.png")))
            if written != count:
                raise RuntimeError(f"{name} wrote {written} of {count} guides")
    return results


def main() -> None:
    warnings.filterwarnings("ignore")  # controlnet_aux's import-time warnings
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["lineart", "normals"])
    parser.add_argument("--folder", type=int, default=32, help="images in the folder run (0 skips it)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--child", choices=["peer-folder", "ours-folder"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    parser.add_argument("--outputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "peer-folder":
        peer_folder_child(args.kind, Path(args.models), Path(args.inputs), Path(args.outputs))
        return
    if args.child == "ours-folder":
        ours_folder_child(args.kind, Path(args.models), Path(args.inputs), Path(args.outputs), args.batch_size)
        return

    import torch

    kinds = [args.only] if args.only else ["lineart", "normals"]
    image = photo(0)
    print(f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; image {image.shape}; folder {args.folder}; batch size {args.batch_size}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-lineart-normals-") as tmp:
        folder = Path(tmp)
        calibration = [image] + [photo(100 + index) for index in range(min(args.folder, 4))]
        make_checkpoints(folder, calibration)
        for kind in kinds:
            single = single_image(kind, folder, image, args.rounds)
            print(f"{kind} single 512x512: peer {single['peer_s']:.2f} s (cpu {single['peer_cpu_s']:.2f}), "
                  f"ours {single['ours_s']:.2f} s (cpu {single['ours_cpu_s']:.2f}), "
                  f"ours/peer = {single['ours_s'] / single['peer_s']:.2f}x wall, "
                  f"{single['ours_cpu_s'] / single['peer_cpu_s']:.2f}x cpu (target <= 0.8x); "
                  f"guides within 1 level: {single['within_1_level']:.5f} (max {single['max_diff']})", flush=True)
            if args.folder:
                run = folder_run(kind, folder, args.folder, args.batch_size)
                peer_per, ours_per = run["peer"]["seconds"] / args.folder, run["ours"]["seconds"] / args.folder
                print(f"{kind} folder of {args.folder} (end to end, load included): peer {peer_per:.2f} s/image, "
                      f"ours {ours_per:.2f} s/image, ours/peer = {ours_per / peer_per:.2f}x; peak RSS peer "
                      f"{run['peer']['peak_rss_mb']:.0f} MiB, ours {run['ours']['peak_rss_mb']:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
