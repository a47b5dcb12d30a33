"""The CUDA path of the learned annotators: the one script to run when a GPU is lent (issues 4, 5, 6).

For lineart, normals, depth (ZoeD_N) and sam (vit_b, vit_h), built with random weights (the loading
path is tested on CPU; here only the device path matters) and for each precision:

* placement: after building, every parameter and buffer is on the device, in the dtype the precision
  asks for (normals: encoder fp32, decoder at the precision; depth: MiDaS core at the precision, metric
  head fp32; lineart and sam: all at the precision);
* throughput: images/s at ``--size`` (512) for each batch size (sam: one image at a time, the automatic
  masks with segment_anything's defaults), after one warm-up batch, CUDA synchronised;
* error against fp32 on the same images: share of guide pixels within 1 level and the largest
  difference (depth: also the largest relative difference of the metric depth).

Random weights, made to behave as in the tests (a default-initialised network gives a near-constant
output that any error bound passes, or activations that overflow in half precision): lineart's last
convolution scaled by 3, NormalBae's BatchNorm statistics calibrated on the photos, depth's metric head
scaled by 12; SAM as initialised. The precision errors show the arithmetic, not what trained weights give.

Usage (on the lent machine, from the repository root; segment_anything is not in its image, carry its
wheel, see bench/README.md): ``PYTHONPATH=toolkit python bench/bench_cuda.py [--record]``.
CPU smoke test: ``python bench/bench_cuda.py --device cpu --size 128 --batch-sizes 1,2
--precisions fp32,bf16 --kinds lineart,normals,sam-vit_b --points-per-side 4 --repeat 1``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD_SCALE = 12.0
LINEART_HEAD_SCALE = 3.0
DEPTH_SCALED_HEADS = ("conv2", "seed_bin_regressor", "seed_projector", "projectors", "attractors")


def photos(count: int, size: int) -> list[np.ndarray]:
    """Smooth synthetic photos (gradients and discs), distinct per index."""
    import cv2

    images = []
    for index in range(count):
        rng = np.random.default_rng(index)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        image = np.stack([127 + 100 * np.sin(xx / (11 + index % 7)), 127 + 100 * np.cos(yy / (13 + index % 5)),
                          (xx + yy) * 255 / (2 * size)], axis=2)
        for _ in range(5):
            center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            cv2.circle(image, center, int(rng.integers(size // 20, size // 4)), tuple(float(c) for c in rng.integers(0, 256, 3)), -1)
        images.append(image.clip(0, 255).astype(np.uint8))
    return images


def build(kind: str, device: Any, calibration: list[np.ndarray]) -> tuple[str, dict[str, Any], Callable[[], Any]]:
    """(registered annotator, its extra options, a factory of the random network it runs; the annotators
    move their networks to the device themselves, SAM's is handed over already there)."""
    import torch

    if kind == "lineart":
        from guides.nets.informative_drawings import lineart_generator

        def lineart_network() -> Any:
            network = lineart_generator()
            with torch.no_grad():
                network.model4[1].weight.mul_(LINEART_HEAD_SCALE)
            return network

        return "lineart", {}, lineart_network
    if kind == "normals":
        from guides.nets.normalbae import normalbae_network

        def normals_network() -> Any:
            network = normalbae_network()
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative statistics of the calibration photos
            network.train()
            mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            with torch.no_grad():
                for image in calibration:
                    network((torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std)
            return network.eval()

        return "normals", {}, normals_network
    if kind == "depth":
        from guides.nets.zoedepth import zoed_n

        def depth_network() -> Any:
            network = zoed_n()
            with torch.no_grad():
                for name in DEPTH_SCALED_HEADS:
                    for parameter in getattr(network, name).parameters():
                        parameter.mul_(HEAD_SCALE)
            return network

        return "depth", {"format": "rgba"}, depth_network
    model = kind.split("-", 1)[1]  # sam-vit_b, sam-vit_h
    from guides.nets.sam_fast import build_sam

    return "sam", {"model": model}, lambda: build_sam(model).to(device)


def expected_dtypes(kind: str, annotator: Any, dtype: Any) -> list[tuple[str, Any, Any]]:
    """(part, module, dtype it must hold) for the placement check."""
    import torch

    if kind == "normals":
        return [("encoder", annotator.model.encoder, torch.float32), ("decoder", annotator.model.decoder, dtype)]
    if kind == "depth":
        return [("core", annotator.model.core, dtype)] + [(f"head {i}", m, torch.float32) for i, m in enumerate(annotator.model.head_modules())]
    if kind.startswith("sam"):
        return [("sam", annotator.engine.model, torch.float32)]  # SAM runs under autocast; weights stay fp32
    return [("network", annotator.model, dtype)]


def placement(kind: str, annotator: Any, device: Any, dtype: Any) -> str:
    """'ok', or the first tensor that is on another device or in another floating dtype."""
    for part, module, want in expected_dtypes(kind, annotator, dtype):
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.device.type != device.type:
                return f"{part}.{name} on {tensor.device}"
            if tensor.is_floating_point() and tensor.dtype != want:
                return f"{part}.{name} is {tensor.dtype}, not {want}"
    return "ok"


def measure(annotator: Any, images: list[np.ndarray], batch: int, repeat: int, sync: Callable[[], None]) -> float:
    """Images/s of ``annotate_batch`` over ``repeat`` batches after one warm-up batch. SAM's engine
    forgets its image embeddings before each batch, so every timed image pays for its encoder pass."""
    chunk = (images * ((batch + len(images) - 1) // len(images)))[:batch]
    engine = getattr(annotator, "engine", None)
    annotator.annotate_batch(chunk)
    sync()
    elapsed = 0.0
    for _ in range(repeat):
        if engine is not None:
            engine.reset()
        started = time.perf_counter()
        annotator.annotate_batch(chunk)
        sync()
        elapsed += time.perf_counter() - started
    return batch * repeat / elapsed


def compare(kind: str, annotator: Any, reference: Any, images: list[np.ndarray]) -> str:
    """The guide (and for depth the metric depth) against the fp32 annotator's on the same images."""
    ours, theirs = annotator.annotate_batch(images), reference.annotate_batch(images)
    diff = np.concatenate([np.abs(a.astype(np.int32) - b.astype(np.int32)).ravel() for a, b in zip(ours, theirs)])
    text = f"{(diff <= 1).mean() * 100:.3f}% within 1, max {diff.max()}"
    if kind == "depth":
        stack = np.stack(images)
        depth, depth32 = annotator.predict(stack), reference.predict(stack)
        text += f"; depth max rel diff {float(np.max(np.abs(depth - depth32) / np.abs(depth32))):.2e}"
    return text


def main() -> None:
    import torch

    import guides
    from guides.devices import resolve_device, resolve_dtype
    from guides.errors import GuidesError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kinds", default="lineart,normals,depth,sam-vit_b,sam-vit_h")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--points-per-side", type=int, default=32, help="sam's point grid (32: segment_anything's default)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()

    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = (f"bench_cuda.py, {datetime.date.today()}, {name}, torch {torch.__version__}, {args.size}x{args.size}, "
              f"random weights, {args.repeat} timed batches after a warm-up")
    print(header, flush=True)
    rows = ["| annotator | precision | placement | " + " | ".join(f"batch {b} img/s" for b in args.batch_sizes.split(",")) + " | vs fp32 |",
            "| --- | --- | --- | " + " | ".join("---:" for _ in args.batch_sizes.split(",")) + " | --- |"]
    print("\n".join(rows), flush=True)
    images = photos(4, args.size)
    for kind in args.kinds.split(","):
        registered, extra, make_network = build(kind, device, images[:2])

        def factory(make_network: Callable[[], Any] = make_network) -> Any:
            torch.manual_seed(0)  # the same random network for every precision
            return make_network()

        if registered == "sam":
            extra = {**extra, "points_per_side": args.points_per_side}
        spec = guides.get(registered)
        reference = None
        for precision in args.precisions.split(","):
            dtype = resolve_dtype(precision, device)
            options = spec.options(device=str(device), precision=precision, resolution=args.size, **extra)
            try:
                annotator = spec.annotator_class()(options, model=factory())
            except GuidesError as error:
                rows.append(f"| {kind} | {precision} | refused: {error} |")
                print(rows[-1], flush=True)
                continue
            where = placement(kind, annotator, device, dtype)
            batches = [1] if kind.startswith("sam") else [int(b) for b in args.batch_sizes.split(",")]
            rates = []
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                if batch not in batches:
                    rates.append("-")
                    continue
                try:
                    rates.append(f"{measure(annotator, images, batch, args.repeat, sync):.2f}")
                except torch.OutOfMemoryError:
                    rates.append("out of memory")
                    torch.cuda.empty_cache()
            if precision == "fp32":
                reference, error_text = annotator, "(reference)"
            elif reference is not None:
                error_text = compare(kind, annotator, reference, images[:2])
            else:
                error_text = "no fp32 run"
            rows.append(f"| {kind} | {precision} | {where} | " + " | ".join(rates) + f" | {error_text} |")
            print(rows[-1], flush=True)
            if annotator is not reference:
                annotator.close()
        if reference is not None:
            reference.close()
        if device.type == "cuda":
            print(f"  {kind}: peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB", flush=True)
            torch.cuda.reset_peak_memory_stats(device)
    if args.record:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write("\n### " + header + "\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
