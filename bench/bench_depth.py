"""Depth guide: time and peak RSS per image, ours against controlnet_aux's ZoeDetector (issue 5).

Both load the same checkpoint: random ZoeD_N weights written in the exact format of ``ZoeD_M12_N.pt``
(``{"model": state_dict}`` with the 24 ``relative_position_index`` tables; the metric head scaled by 12
as in the tests so that the depth varies). Like is compared with like: ZoeDetector's ``infer`` pads and
averages a flipped pass, and so does ours by default (``guides depth`` = pad + flip).

* ``peer``: ``ZoeDetector.from_pretrained(folder)`` (controlnet_aux 0.0.10, its own loading), called as
  ``detector(image, detect_resolution=S, image_resolution=S)``;
* ``ours``: ``guides.get("depth").load(device="cpu", checkpoint=...)`` then ``annotate(image)`` (RGBA).

Peak RSS (VmHWM: loading + one image) and load time come from one child process per contender (same
process tree, one after the other). Per-image times come from this process with both loaded, calls
interleaved peer/ours/ours/peer per round so both see the same machine load; wall and CPU time are
reported. Output parity: the metric depth each produced for the timed image (max relative difference)
and our RGBA guide against the original ZoeDepth colouring (matplotlib ``gray_r``) of the peer's depth.

Usage: ``python bench/bench_depth.py [--image PATH] [--size 512] [--rounds 2] [--skip-rss]``
(without ``--image``: ``$GUIDES_REFS/cutecat_init.png`` when set, else a synthetic photo).
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
HEAD_SCALE = 12.0
SCALED_HEADS = ("conv2", "seed_bin_regressor", "seed_projector", "projectors", "attractors")
FILENAME = "ZoeD_M12_N.pt"


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


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load_image(path: str | None, size: int) -> np.ndarray:
    import cv2
    from PIL import Image

    refs = os.environ.get("GUIDES_REFS")
    if path is None and refs and (Path(refs) / "cutecat_init.png").is_file():
        path = str(Path(refs) / "cutecat_init.png")
    if path is not None:
        image = np.asarray(Image.open(path).convert("RGB"))
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        image = np.stack([127 + 100 * np.sin(xx / 23), 127 + 100 * np.cos(yy / 31), (xx + yy) / 4], 2)
        image = (image + rng.normal(0, 6, image.shape)).clip(0, 255).astype(np.uint8)
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image)


def make_checkpoint(folder: Path) -> Path:
    """Random ZoeD_N weights in the format of ZoeD_M12_N.pt (see the module docstring)."""
    import torch
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config
    from timm.models.beit import gen_relative_position_index

    torch.manual_seed(0)
    network = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
    with torch.no_grad():
        for name in SCALED_HEADS:
            for parameter in getattr(network, name).parameters():
                parameter.mul_(HEAD_SCALE)
    state = dict(network.state_dict())
    for block in range(24):
        state[f"core.core.pretrained.model.blocks.{block}.attn.relative_position_index"] = gen_relative_position_index((24, 24))
    path = folder / FILENAME
    torch.save({"model": state}, path)
    return path


def original_colorize(depth: np.ndarray) -> np.ndarray:
    """zoedepth.utils.misc.colorize with its defaults (gray_r, 2nd/85th percentiles), via matplotlib."""
    import matplotlib

    vmin, vmax = np.percentile(depth, 2), np.percentile(depth, 85)
    value = (depth - vmin) / (vmax - vmin) if vmin != vmax else depth * 0.0
    return matplotlib.colormaps["gray_r"](value, bytes=True)


def load_peer(checkpoint: Path):  # type: ignore[no-untyped-def]
    import contextlib
    import io

    from controlnet_aux.zoe import ZoeDetector

    with contextlib.redirect_stdout(io.StringIO()):  # it prints the strict-loading failure it works around
        return ZoeDetector.from_pretrained(str(checkpoint.parent), filename=checkpoint.name)


def load_ours(checkpoint: Path):  # type: ignore[no-untyped-def]
    import guides

    return guides.load("depth", device="cpu", checkpoint=str(checkpoint))


def run_peer(detector, image: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    size = image.shape[0]
    return detector(image, detect_resolution=size, image_resolution=size, output_type="np")


def child(kind: str, checkpoint: Path, image_path: Path) -> None:
    """Load one contender, annotate the image once, print load time and memory as JSON."""
    import torch

    warnings.filterwarnings("ignore")

    image = np.load(image_path)
    started = time.perf_counter()
    model = load_peer(checkpoint) if kind == "peer" else load_ours(checkpoint)
    loaded = time.perf_counter() - started
    after_load = rss_mb()
    started = time.perf_counter()
    with torch.inference_mode():
        run_peer(model, image) if kind == "peer" else model.annotate(image)
    first = time.perf_counter() - started
    print(json.dumps({"load_s": loaded, "first_image_s": first, "rss_after_load_mb": after_load, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    warnings.filterwarnings("ignore")  # controlnet_aux's import-time deprecation and registry warnings
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--child", choices=["peer", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--image-array", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.checkpoint), Path(args.image_array))
        return

    import torch

    image = load_image(args.image, args.size)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; image {image.shape}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-depth-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        checkpoint = make_checkpoint(folder)
        print(f"checkpoint written in {time.perf_counter() - started:.1f} s ({checkpoint.stat().st_size / 1e9:.2f} GB)", flush=True)
        image_path = folder / "image.npy"
        np.save(image_path, image)

        memory: dict[str, dict[str, float]] = {}
        if not args.skip_rss:
            for kind in ("peer", "ours"):
                output = subprocess.run(
                    [sys.executable, __file__, "--child", kind, "--checkpoint", str(checkpoint), "--image-array", str(image_path)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                ).stdout
                memory[kind] = json.loads(output.strip().splitlines()[-1])
                print(kind, memory[kind], flush=True)

        peer, ours = load_peer(checkpoint), load_ours(checkpoint)
        depths: dict[str, list[np.ndarray]] = {"peer": [], "ours": []}
        peer_infer = peer.model.infer

        def record_peer_infer(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = peer_infer(*args, **kwargs)
            depths["peer"].append(out.clone())  # ZoeDetector normalises its numpy view of it in place
            return out

        peer.model.infer = record_peer_infer  # type: ignore[method-assign]
        ours_predict = ours.predict
        ours.predict = lambda images: depths["ours"].append(ours_predict(images).copy()) or depths["ours"][-1]  # type: ignore[method-assign]
        calls = {"peer": lambda: run_peer(peer, image), "ours": lambda: ours.annotate(image)}
        wall: dict[str, list[float]] = {"peer": [], "ours": []}
        cpu: dict[str, list[float]] = {"peer": [], "ours": []}
        with torch.inference_mode():
            guide = {kind: call() for kind, call in calls.items()}  # warm-up; kept for the parity check
            for round_index in range(args.rounds):
                for kind in ("peer", "ours", "ours", "peer") if round_index % 2 == 0 else ("ours", "peer", "peer", "ours"):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    calls[kind]()
                    wall[kind].append(time.perf_counter() - started)
                    cpu[kind].append(time.process_time() - cpu_started)
                print(f"round {round_index + 1}: peer {wall['peer'][-2:]} ours {wall['ours'][-2:]}", flush=True)

    peer_depth = depths["peer"][0][0, 0].numpy()
    ours_depth = depths["ours"][0][0]
    difference = np.abs(ours_depth - peer_depth)
    scale = float(np.abs(peer_depth).max())
    # Random weights can give depths around 0 m, where a per-pixel relative difference means nothing:
    # report it where |depth| is at least 5% of the largest, and the largest difference over that.
    away = np.abs(peer_depth) >= 0.05 * scale
    relative = float(np.max(difference[away] / np.abs(peer_depth[away])))
    expected = original_colorize(peer_depth)
    within = float((np.abs(guide["ours"].astype(int) - expected.astype(int)) <= 1).all(axis=2).mean())
    median = {kind: statistics.median(values) for kind, values in wall.items()}
    best = {kind: min(values) for kind, values in wall.items()}
    cpu_median = {kind: statistics.median(values) for kind, values in cpu.items()}
    print()
    print("| contender | load | peak RSS | per image (median wall) | min wall | median CPU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind in ("peer", "ours"):
        m = memory.get(kind, {})
        load = f"{m['load_s']:.1f} s" if m else "-"
        peak = f"{m['peak_rss_mb']:.0f} MB" if m else "-"
        print(f"| {kind} | {load} | {peak} | {median[kind]:.2f} s | {best[kind]:.2f} s | {cpu_median[kind]:.2f} s |")
    print()
    print(f"ours / peer per image: median wall {median['ours'] / median['peer']:.3f}x, min wall "
          f"{best['ours'] / best['peer']:.3f}x, median CPU {cpu_median['ours'] / cpu_median['peer']:.3f}x "
          f"({2 * args.rounds} calls each)")
    if memory:
        print(f"peak RSS ours / peer: {memory['ours']['peak_rss_mb'] / memory['peer']['peak_rss_mb']:.3f}x; "
              f"load ours / peer: {memory['ours']['load_s'] / memory['peer']['load_s']:.3f}x")
    print(f"metric depth: max |difference| {difference.max():.2e} m = {difference.max() / scale:.2e} of max |depth|, max "
          f"relative difference {relative:.2e} where |depth| >= 5% of max (peer depth {peer_depth.min():.2f} .. {peer_depth.max():.2f} m); "
          f"RGBA guide vs the original colouring of the peer's depth: {within:.4%} of pixels within 1")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
