"""Soft-edge and line annotators (issue 14): time per image and a folder end to end, ours against
controlnet_aux 0.0.10's detectors with the same (random) weights.

For each network annotator (hed, pidinet, teed, anyline, mlsd, lineart-anime):

* per image: one 512x512 photo, ours (``guides.load(NAME)``, annotate) and the reference detector (called
  with its defaults, ``detect_resolution`` = ``image_resolution`` = ours), interleaved in this process,
  best of ``--rounds`` after a warm-up; ratio ours / reference (target <= 0.8);
* end to end: a folder of ``--files`` 512x512 photos, ``guides NAME DIR`` against a plain loop over the
  reference detector (open, detect, save PNG), each in its own child process (the same process tree),
  wall time and peak RSS of each child (``wait4``); ratios (time target <= 0.8, RSS not above).

Random weights in the public on-disk formats (the same files the tests write) prove nothing about
quality; time and memory do not depend on the values (M-LSD's post-processing depends on how many
lines it finds: a few, with random weights).

Usage: ``python bench/bench_line_annotators.py [--only hed,mlsd] [--files 32] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    filename: str
    """The public file name, in a flat models folder."""
    build: str
    """Python expression building the reference network (controlnet_aux imports inside ``imports``)."""
    detector: str
    """Python expression of the reference detector around network ``net``."""
    imports: str
    container: str = "state_dict"
    """``state_dict``; ``module_state_dict`` (``module.`` keys); ``pidinet`` (``{"state_dict": module.*}``)."""
    call: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of the reference call besides ``output_type``."""
    inverted: bool = False
    """The reference's guide is the inverse of ours (lineart-anime: ours dark lines on white by default)."""


CONTENDERS = (
    Contender("hed", "ControlNetHED.pth", "ControlNetHED_Apache2()", "HEDdetector(net)",
              "from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector",
              call={"detect_resolution": 512, "image_resolution": 512}),
    Contender("pidinet", "table5_pidinet.pth", "pidinet()", "PidiNetDetector(net)",
              "from controlnet_aux.pidi import PidiNetDetector\nfrom controlnet_aux.pidi.model import pidinet",
              container="pidinet", call={"detect_resolution": 512, "image_resolution": 512}),
    Contender("teed", "5_model.pth", "TED()", "TEEDdetector(net)",
              "from controlnet_aux.teed import TEEDdetector\nfrom controlnet_aux.teed.ted import TED",
              call={"detect_resolution": 512}),
    Contender("anyline", "MTEED.pth", "TED()", "AnylineDetector(net)",
              "from controlnet_aux.anyline import AnylineDetector\nfrom controlnet_aux.teed.ted import TED",
              call={"detect_resolution": 1280}),
    Contender("mlsd", "mlsd_large_512_fp32.pth", "MobileV2_MLSD_Large()", "MLSDdetector(net)",
              "from controlnet_aux.mlsd import MLSDdetector\n"
              "from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large",
              call={"detect_resolution": 512, "image_resolution": 512}),
    Contender("lineart-anime", "netG.pth",
              "UnetGenerator(3, 1, 8, 64, norm_layer=functools.partial(torch.nn.InstanceNorm2d, affine=False, "
              "track_running_stats=False), use_dropout=False)",
              "LineartAnimeDetector(net)",
              "import functools\nfrom controlnet_aux.lineart_anime import LineartAnimeDetector, UnetGenerator",
              container="module_state_dict", call={"detect_resolution": 512, "image_resolution": 512}, inverted=True),
)


def reference_network(contender: Contender) -> Any:
    import torch  # noqa: F401  (used by the expressions)

    scope: dict[str, Any] = {"torch": torch}
    exec(contender.imports, scope)  # noqa: S102  (our own constant strings)
    torch.manual_seed(0)
    return eval(contender.build, scope).eval(), scope  # noqa: S307


def save_checkpoint(contender: Contender, net: Any, folder: Path) -> None:
    import torch

    state = net.state_dict()
    if contender.container == "module_state_dict":
        state = {f"module.{key}": value for key, value in state.items()}
    elif contender.container == "pidinet":
        state = {"state_dict": {f"module.{key}": value for key, value in state.items()}}
    torch.save(state, folder / contender.filename)


def photo(seed: int, size: int = 512) -> np.ndarray:
    sys.path.insert(0, str(HERE.parent))
    from tests.conftest import synthetic_photo

    return synthetic_photo(seed, size, size)


def best_time(function: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def per_image(contender: Contender, models: Path, rounds: int) -> tuple[float, float, float]:
    """(ours s, reference s, share of pixels within 1 level) on one 512x512 photo, interleaved."""
    import guides

    net, scope = reference_network(contender)
    detector = eval(contender.detector, {**scope, "net": net})  # noqa: S307
    ours = guides.load(contender.name, models_dir=str(models), device="cpu")
    image = photo(1)
    a, b = ours.annotate(image), detector(image, output_type="np", **contender.call)  # warm-up
    b = b[..., 0] if b.ndim == 3 else b
    b = 255 - b if contender.inverted else b
    if b.shape != a.shape:
        import cv2

        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    agree = float((np.abs(a.astype(int) - b.astype(int)) <= 1).mean())
    our_times, their_times = [], []
    for _ in range(rounds):
        our_times.append(best_time(lambda: ours.annotate(image), 1))
        their_times.append(best_time(lambda: detector(image, output_type="np", **contender.call), 1))
    return min(our_times), min(their_times), agree


REFERENCE_LOOP = """
import sys, time, functools
from pathlib import Path
import numpy as np, torch
from PIL import Image
{imports}
net = {build}.eval()
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
container = "{container}"
if container == "pidinet":
    state = state["state_dict"]
if container in ("pidinet", "module_state_dict"):
    state = {{key.removeprefix("module."): value for key, value in state.items()}}
net.load_state_dict(state)
detector = {detector}
out = Path(sys.argv[3]); out.mkdir(parents=True, exist_ok=True)
for path in sorted(Path(sys.argv[2]).iterdir()):
    image = np.asarray(Image.open(path).convert("RGB"))
    guide = detector(image, output_type="np", **{call!r})
    Image.fromarray(guide).save(out / (path.stem + ".png"))
"""


def child(command: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MiB) of one child process. The peak comes from ``/usr/bin/time -f %M``: Linux
    carries a forking process's high-water mark into its child across ``exec`` (``wait4`` would report this
    big benchmark process's peak for every child), while ``time``'s own child starts from a small process."""
    started = time.perf_counter()
    process = subprocess.run(["/usr/bin/time", "-f", "%M", *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {process.stderr[-2000:]}")
    return elapsed, int(process.stderr.strip().splitlines()[-1]) / 1024


def end_to_end(contender: Contender, models: Path, folder: Path, work: Path) -> tuple[float, float, float, float]:
    guides_script = shutil.which("guides") or str(Path(sys.executable).with_name("guides"))
    ours = child([guides_script, contender.name, str(folder), "--models-dir", str(models), "--device", "cpu",
                  "-o", str(work / f"ours-{contender.name}"), "-q", "--overwrite"])
    script = work / f"reference_{contender.name.replace('-', '_')}.py"
    script.write_text(REFERENCE_LOOP.format(imports=contender.imports, build=contender.build, detector=contender.detector,
                                            container=contender.container, call=contender.call))
    theirs = child([sys.executable, str(script), str(models / contender.filename), str(folder),
                    str(work / f"theirs-{contender.name}")])
    return (*ours, *theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated annotators (default: all)")
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chosen = [c for c in CONTENDERS if not args.only or c.name in args.only.split(",")]
    from PIL import Image
    import torch

    lines = [f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; random weights, 512x512 photos"]
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        models, folder = work / "models", work / "photos"
        models.mkdir()
        folder.mkdir()
        for index in range(args.files):
            Image.fromarray(photo(100 + index)).save(folder / f"{index:03d}.png")
        for contender in chosen:
            net, _ = reference_network(contender)
            save_checkpoint(contender, net, models)
            ours, theirs, agree = per_image(contender, models, args.rounds)
            our_wall, our_rss, their_wall, their_rss = end_to_end(contender, models, folder, work)
            lines.append(
                f"{contender.name:14s} per image {ours * 1000:7.0f} ms vs {theirs * 1000:7.0f} ms  ratio {ours / theirs:.2f}x"
                f" (target <= 0.8; within 1 level {agree:.4f}) | {args.files} files {our_wall:6.1f} s vs {their_wall:6.1f} s"
                f"  ratio {our_wall / their_wall:.2f}x, peak RSS {our_rss:.0f} vs {their_rss:.0f} MiB"
                f"  ratio {our_rss / their_rss:.2f}x"
            )
            print(lines[-1], flush=True)
    print(json.dumps({"lines": lines}))


if __name__ == "__main__":
    main()
