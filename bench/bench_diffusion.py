"""The ControlNet stage on tiny random models: placement, dtype and speed per device and precision, and our
generator against the plain diffusers recipe of the expected images (issue 7).

For each device (cpu, and cuda when present) and precision (fp32; fp16 and bf16 where the device runs
them), on the tiny SD 1.5-shaped models of tests/diffusion (512x512, 30 steps, the reference settings):

* placement: every parameter of the UNet, VAE, text encoder and ControlNets on the device, in the dtype;
* ours: ``ControlNetGenerator`` (models loaded once), seconds per image for one ControlNet and for the
  depth + canny stack, median of ``--repeat`` after one warm-up;
* plain (fp32 only): ``StableDiffusionControlNetPipeline.from_pretrained`` + ``DPMSolverMultistepScheduler
  .from_config`` + ``torch.manual_seed(2)``, timed the same way; ratio ours / plain and whether the
  images are identical (they must be wherever the global seed and our generator draw the same noise).

Random tiny weights: this measures the stage's overhead and wiring, not SD 1.5's real cost.
Usage: ``python bench/bench_diffusion.py [--repeat 3] [--devices cpu,cuda] [--record]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _tiny_models(folder: Path):
    spec = importlib.util.spec_from_file_location("_tiny_fixtures", ROOT / "tests" / "diffusion" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.build_tiny_models(folder)


def _guides() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    edges = ((rng.random((512, 512)) > 0.9) * 255).astype(np.uint8)
    ramp = np.tile(np.linspace(0, 255, 512).astype(np.uint8)[:, None], (1, 512))
    return {"canny": np.dstack([edges] * 3), "depth": np.dstack([ramp] * 3)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(run, device: torch.device, repeat: int) -> tuple[float, np.ndarray]:
    image = run()  # warm-up
    times = []
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        image = run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times), image


def _placement(generator, kinds) -> str:
    modules = [generator.base.unet, generator.base.vae, generator.base.text_encoder, *[generator.controlnet(k) for k in kinds]]
    wrong = [
        name for module in modules for name, parameter in module.named_parameters()
        if parameter.device.type != generator.device.type or parameter.dtype != generator.dtype
    ]
    return "all on device, in dtype" if not wrong else f"{len(wrong)} misplaced (first: {wrong[0]})"


def _plain(models, kinds, guides, scales, device, repeat):
    from diffusers import ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline

    nets = [ControlNetModel.from_pretrained(models.controlnets[k], low_cpu_mem_usage=False) for k in kinds]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        models.base, controlnet=nets[0] if len(nets) == 1 else nets, dtype=torch.float32,
        safety_checker=None, requires_safety_checker=False, low_cpu_mem_usage=False,
    ).to(device)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.fromarray(guides[k]) for k in kinds]

    def run():
        torch.manual_seed(2)
        out = pipe(prompt="a cute cat, detailed high-quality professional image",
                   negative_prompt="lowres, bad anatomy, bad hands, cropped, worst quality",
                   image=images[0] if len(images) == 1 else images, num_inference_steps=30, guidance_scale=7.5,
                   controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales)
        return np.asarray(out.images[0])

    return _median_time(run, device, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--record", action="store_true", help="Append the table to bench/RESULTS.md.")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "toolkit"))
    from guides.diffusion.generate import Control, ControlNetGenerator
    from guides.diffusion.models import locate_models
    from guides.diffusion.settings import REFERENCE_SETTINGS

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = _tiny_models(Path(tmp))
        guides = _guides()
        base, nets, _ = locate_models(str(models.base), {k: str(v) for k, v in models.controlnets.items() if k in ("canny", "depth")})
        for device_name in args.devices.split(","):
            device = torch.device(device_name)
            precisions = ["fp32", "bf16"] if device.type == "cpu" else ["fp32", "fp16", "bf16"]
            for precision in precisions:
                if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
                    continue
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                generator = ControlNetGenerator(base, nets, device_name, precision)
                generator.load(["canny", "depth"])
                settings = dataclasses.replace(REFERENCE_SETTINGS, precision=precision)
                for label, controls in (
                    ("canny 0.5", [Control("canny", guides["canny"], 0.5)]),
                    ("depth 0.3 + canny 0.7", [Control("depth", guides["depth"], 0.3), Control("canny", guides["canny"], 0.7)]),
                ):
                    seconds, image = _median_time(lambda c=controls, g=generator, s=settings: g.generate(c, s).image, device, args.repeat)
                    row = {"device": device_name, "precision": precision, "controls": label, "ours": seconds,
                           "placement": _placement(generator, ["canny", "depth"]), "plain": None, "identical": None}
                    if precision == "fp32":
                        kinds = [c.kind for c in controls]
                        plain_seconds, plain_image = _plain(models, kinds, guides, [c.scale for c in controls], device, args.repeat)
                        row.update(plain=plain_seconds, identical=bool(np.array_equal(image, plain_image)))
                    if device.type == "cuda":
                        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                    rows.append(row)
                    print(row, flush=True)
    lines = [
        "| device | precision | controls | ours s/image | plain diffusers s/image | ours / plain | identical to plain | placement |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        plain = f"{row['plain']:.2f}" if row["plain"] else "-"
        ratio = f"{row['ours'] / row['plain']:.2f}" if row["plain"] else "-"
        identical = "-" if row["identical"] is None else ("yes" if row["identical"] else "**no**")
        lines.append(f"| {row['device']} | {row['precision']} | {row['controls']} | {row['ours']:.2f} | {plain} | {ratio} "
                     f"| {identical} | {row['placement']} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        device_text = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        header = (f"\n{datetime.date.today().isoformat()}, {platform.machine()} with {torch.get_num_threads()} torch "
                  f"threads, {device_text}; torch {torch.__version__}. Tiny random models, 512x512, 30 steps, median of "
                  f"{args.repeat} after a warm-up.\n\n")
        with open(ROOT / "bench" / "RESULTS.md", "a") as handle:
            handle.write(header + table + "\n")


if __name__ == "__main__":
    main()
