"""The CUDA path of the learned annotators: the one script to run when a GPU is lent (issues 4, 5, 6).

What is benchmarked comes from the registry: one run per checkpoint that a built-in annotator declares
(``Annotator.checkpoints``; a file several annotators declare is run with the first of them), named after
the checkpoint (``lineart``, ``lineart-coarse``, ``normals``, ``depth``, ``sam-vit-h``, ...) and built
with the option values that select it (``Checkpoint.when``). Each annotator loads its network through its
own ``load`` path, with the file read replaced by the network's random initialisation (the loading path is
tested on CPU; here only the device path matters). For each precision:

* placement: after building, every parameter and buffer is on the device, in the dtype the precision
  asks for (NormalBae: encoder fp32, decoder at the precision; ZoeDepth: MiDaS core at the precision,
  metric head fp32; SAM: weights fp32, run under autocast; other networks: all at the precision);
* throughput: images/s at ``--size`` (512) for each batch size (annotators that are not one network per
  batch, SAM: one image at a time, the automatic masks with segment_anything's defaults), after one
  warm-up batch, CUDA synchronised;
* error against fp32 on the same images: share of guide pixels within 1 level and the largest
  difference, and for the one-network-per-batch annotators the largest relative difference of the raw
  predictions (``forward``: ZoeDepth's metric depth, NormalBae's normals, the line maps).

Random weights, made to behave as in the tests (a default-initialised network gives a near-constant
output that any error bound passes, or activations that overflow in half precision), chosen by network
type: the informative-drawings generator's last convolution scaled by 3, NormalBae's BatchNorm statistics
calibrated on the photos, ZoeDepth's metric head scaled by 12; SAM as initialised. The precision errors
show the arithmetic, not what trained weights give.

Usage (on the lent machine, from the repository root; segment_anything is not in its image, carry its
wheel, see bench/README.md): ``PYTHONPATH=toolkit python bench/bench_cuda.py [--record]``.
CPU smoke test: ``python bench/bench_cuda.py --device cpu --size 128 --batch-sizes 1,2
--precisions fp32,bf16 --kinds lineart,normals,sam-vit-b --points-per-side 4 --repeat 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HEAD_SCALE = 12.0
LINEART_HEAD_SCALE = 3.0
DEPTH_SCALED_HEADS = ("conv2", "seed_bin_regressor", "seed_projector", "projectors", "attractors")
#: Options given to every annotator that has them: depth's 8-bit guide (comparable within 1 level).
BENCH_OPTIONS = {"format": "rgba"}


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmarked run: checkpoint ``label`` loaded by annotator ``annotator`` with ``options``."""

    label: str
    annotator: str
    options: dict[str, Any]


def configs() -> list[Config]:
    """One config per checkpoint a built-in annotator declares, in registry order."""
    from guides.registry import REGISTRY, loadable_classes

    found: dict[str, Config] = {}
    for cls in loadable_classes({name: spec for name, spec in REGISTRY.items() if spec.builtin}):
        for checkpoint in cls.checkpoints:
            found.setdefault(checkpoint.name, Config(checkpoint.name, cls.name, dict(checkpoint.when)))
    return list(found.values())


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


def behave(network: Any, calibration: list[np.ndarray]) -> Any:
    """A randomly initialised network made to behave as in the tests (see the module doc), by its type."""
    import torch

    from guides.nets.informative_drawings import Generator
    from guides.nets.normalbae import NNET
    from guides.nets.zoedepth import ZoeDepth

    with torch.no_grad():
        if isinstance(network, Generator):
            network.model4[1].weight.mul_(LINEART_HEAD_SCALE)
        elif isinstance(network, ZoeDepth):
            for name in DEPTH_SCALED_HEADS:
                for parameter in getattr(network, name).parameters():
                    parameter.mul_(HEAD_SCALE)
        elif isinstance(network, NNET):
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative statistics of the calibration photos
            network.train()
            mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
            std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
            for image in calibration:
                network((torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255 - mean) / std)
            network.eval()
    return network


@contextlib.contextmanager
def random_weights(calibration: list[np.ndarray]) -> Iterator[Path]:
    """While active, every annotator's checkpoint load builds its network with random weights instead
    (``torch.manual_seed(0)`` first: the same network for every precision); yields a placeholder file to
    pass as ``checkpoint`` (nothing reads it)."""
    import torch

    from guides.weights import load

    original = load.load_checkpoint_into

    def random_network(factory: Callable[[], Any], path: Any, **_: Any) -> Any:
        torch.manual_seed(0)
        return behave(factory(), calibration).eval()

    with tempfile.TemporaryDirectory() as folder:
        placeholder = Path(folder) / "random-weights.pth"
        placeholder.write_bytes(b"")
        load.load_checkpoint_into = random_network
        try:
            yield placeholder
        finally:
            load.load_checkpoint_into = original


def expected_dtypes(annotator: Any, dtype: Any) -> list[tuple[str, Any, Any]]:
    """(part, module, dtype it must hold) for the placement check, by network type."""
    import torch

    engine = getattr(annotator, "engine", None)
    if engine is not None:
        return [("sam", engine.model, torch.float32)]  # SAM runs under autocast; weights stay fp32
    from guides.nets.normalbae import NNET
    from guides.nets.zoedepth import ZoeDepth

    model = annotator.model
    if isinstance(model, NNET):
        return [("encoder", model.encoder, torch.float32), ("decoder", model.decoder, dtype)]
    if isinstance(model, ZoeDepth):
        return [("core", model.core, dtype)] + [(f"head {i}", m, torch.float32) for i, m in enumerate(model.head_modules())]
    return [("network", model, dtype)]


def placement(annotator: Any, device: Any, dtype: Any) -> str:
    """'ok', or the first tensor that is on another device or in another floating dtype."""
    for part, module, want in expected_dtypes(annotator, dtype):
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


def compare(annotator: Any, reference: Any, images: list[np.ndarray]) -> str:
    """The guides (and the raw predictions of a one-network-per-batch annotator) against the fp32
    annotator's on the same images."""
    from guides.annotators.learned import LearnedAnnotator

    ours, theirs = annotator.annotate_batch(images), reference.annotate_batch(images)
    diff = np.concatenate([np.abs(a.astype(np.int32) - b.astype(np.int32)).ravel() for a, b in zip(ours, theirs)])
    text = f"{(diff <= 1).mean() * 100:.3f}% within 1, max {diff.max()}"
    if isinstance(annotator, LearnedAnnotator):
        stack = np.stack([annotator.prepare(image).pixels for image in images])
        raw, raw32 = np.asarray(annotator.forward(stack), np.float64), np.asarray(reference.forward(stack), np.float64)
        scale = np.maximum(np.abs(raw32), 1e-6 * max(float(np.abs(raw32).max()), 1e-12))
        text += f"; raw max rel diff {float(np.max(np.abs(raw - raw32) / scale)):.2e}"
    return text


def main() -> None:
    import torch

    import guides
    from guides.annotators.learned import LearnedAnnotator
    from guides.devices import resolve_device, resolve_dtype
    from guides.errors import GuidesError
    from guides.options import option_infos

    known = {config.label: config for config in configs()}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kinds", default=",".join(known), help=f"checkpoints to run [default: all: {', '.join(known)}]")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--points-per-side", type=int, default=32,
                        help="the point grid of annotators that have one (sam; 32: segment_anything's default)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    unknown = [kind for kind in args.kinds.split(",") if kind not in known]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; use {', '.join(known)}")

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
    with random_weights(images[:2]) as placeholder:
        for kind in args.kinds.split(","):
            config = known[kind]
            spec = guides.get(config.annotator)
            cls = spec.annotator_class()
            fields = {info.name for info in option_infos(cls.Options)}
            extra = {key: value for key, value in {**BENCH_OPTIONS, "points_per_side": args.points_per_side}.items()
                     if key in fields}
            batched = issubclass(cls, LearnedAnnotator)  # one network per batch; others: one image at a time
            reference = None
            for precision in args.precisions.split(","):
                dtype = resolve_dtype(precision, device)
                try:
                    options = spec.options(device=str(device), precision=precision, resolution=args.size,
                                           checkpoint=str(placeholder), **{**extra, **config.options})
                    annotator = cls(options)
                except GuidesError as error:
                    rows.append(f"| {kind} | {precision} | refused: {error} |")
                    print(rows[-1], flush=True)
                    continue
                where = placement(annotator, device, dtype)
                batches = [int(b) for b in args.batch_sizes.split(",")] if batched else [1]
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
                    error_text = compare(annotator, reference, images[:2])
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
