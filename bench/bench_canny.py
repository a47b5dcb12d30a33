"""Canny throughput, memory and start-up against the raw OpenCV limit and controlnet_aux (issue 2).

Measures, in one run on the same generated folder (N distinct 512x512 PNG photos):

* ours: ``guides canny DIR -o OUT`` end to end (a fresh process: start-up, decode, Canny, encode, write);
* (a) a raw single-process OpenCV loop: imread, Canny, imwrite;
* (b) the same raw loop over a process pool of as many processes as cores (the practical limit);
* (c) controlnet_aux's CannyDetector in a plain loop (PIL in, PIL out, saved as PNG);
* peak RSS of ``guides canny`` on N and on 10 x N files (the 10 x N folder hard-links the N photos
  under other names: the engine's memory does not depend on the pixel content);
* start-up: wall time of ``guides canny photo.png`` against a process that only imports CannyDetector.

Every contender runs in its own child process (same process tree), timed by the parent.
Usage: ``python bench/bench_canny.py [--count 200] [--repeat 3]``; prints ratios, ``--record`` appends
them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

RAW_LOOP = r"""
import sys, cv2, glob, os
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for path in sorted(glob.glob(os.path.join(src, "*.png"))):
    cv2.imwrite(os.path.join(dst, os.path.basename(path)), cv2.Canny(cv2.imread(path), 100, 200))
"""

RAW_POOL = r"""
import sys, cv2, glob, os
from multiprocessing import Pool
src, dst, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst, exist_ok=True)
def one(path):
    cv2.imwrite(os.path.join(dst, os.path.basename(path)), cv2.Canny(cv2.imread(path), 100, 200))
if __name__ == "__main__":
    with Pool(procs) as pool:
        pool.map(one, sorted(glob.glob(os.path.join(src, "*.png"))), chunksize=4)
"""

AUX_LOOP = r"""
import sys, glob, os, time, warnings
warnings.filterwarnings("ignore")
from PIL import Image
from controlnet_aux.canny import CannyDetector
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
detector = CannyDetector()
start = time.perf_counter()
for path in sorted(glob.glob(os.path.join(src, "*.png"))):
    detector(Image.open(path), low_threshold=100, high_threshold=200).save(os.path.join(dst, os.path.basename(path)))
print(time.perf_counter() - start)
"""

AUX_IMPORT = "import warnings; warnings.filterwarnings('ignore'); from controlnet_aux.canny import CannyDetector"


def make_photo(seed: int, size: int = 512) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([127 + 100 * np.sin(xx / (9 + seed % 7) + seed), 127 + 100 * np.cos(yy / (11 + seed % 5)), (xx + yy) / 4], axis=2)
    for _ in range(12):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, (int(rng.integers(0, size)), int(rng.integers(0, size))), int(rng.integers(10, 90)), color, -1)
    image += rng.normal(0, 4, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def timed(command: list[str]) -> tuple[float, int, str]:
    """Run a child; return (wall seconds, peak RSS in MiB, stdout)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    out = process.stdout.read() if process.stdout else ""
    err = process.stderr.read() if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode not in (0,):
        raise SystemExit(f"{command} failed ({process.returncode}): {err[-2000:]}")
    return elapsed, usage.ru_maxrss // 1024, out


def best(command: list[str], repeat: int, clean: Path | None = None) -> tuple[float, int, str]:
    results = []
    for _ in range(repeat):
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
        results.append(timed(command))
    return min(results, key=lambda r: r[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = parser.parse_args()
    guides = shutil.which("guides") or sys.exit("install the package first: pip install -e .")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-canny-"))
    try:
        src = work / "photos"
        src.mkdir()
        for index in range(args.count):
            cv2.imwrite(str(src / f"{index:05d}.png"), make_photo(index))
        big = work / "photos10x"
        big.mkdir()
        for copy in range(10):
            for index in range(args.count):
                os.link(src / f"{index:05d}.png", big / f"{copy}_{index:05d}.png")

        ours, ours_rss, _ = best([guides, "canny", str(src), "-o", str(work / "ours"), "-q", "--overwrite"], args.repeat)
        raw, _, _ = best([sys.executable, "-c", RAW_LOOP, str(src), str(work / "raw")], args.repeat)
        pool, _, _ = best([sys.executable, "-c", RAW_POOL, str(src), str(work / "pool"), str(cores)], args.repeat)
        aux_wall, _, aux_out = best([sys.executable, "-c", AUX_LOOP, str(src), str(work / "aux")], 1)
        aux_loop = float(aux_out.strip().splitlines()[-1])
        _, big_rss, _ = timed([guides, "canny", str(big), "-o", str(work / "ours10x"), "-q"])
        # identical output to the raw OpenCV loop
        same = all(
            np.array_equal(cv2.imread(str(work / "ours" / p.name), -1), cv2.imread(str(work / "raw" / p.name), -1))
            for p in sorted(src.iterdir())
        )
        one = src / "00000.png"
        start_ours, _, _ = best([guides, "canny", str(one), "-o", str(work / "one.png"), "--overwrite", "-q"], args.repeat)
        start_aux, _, _ = best([sys.executable, "-c", AUX_IMPORT], args.repeat)

        n = args.count
        lines = [
            f"files: {n} distinct 512x512 PNG; {cores} cores; best of {args.repeat}; outputs identical to the raw loop: {same}",
            f"guides canny DIR (end to end, with start-up): {n / ours:7.1f} img/s ({ours:.2f} s)",
            f"(a) raw OpenCV loop, 1 process:               {n / raw:7.1f} img/s ({raw:.2f} s)  ours/a = {raw / ours:.2f}x",
            f"(b) raw OpenCV loop, {cores}-process pool:          {n / pool:7.1f} img/s ({pool:.2f} s)  ours/b = {pool / ours:.2f}x (target >= 0.85x)",
            f"(c) controlnet_aux CannyDetector loop:        {n / aux_loop:7.1f} img/s ({aux_loop:.2f} s loop, {aux_wall:.2f} s with import)  ours/c = {aux_loop / ours:.2f}x (target >= 2x)",
            f"peak RSS guides canny: {n} files {ours_rss} MiB, {10 * n} files {big_rss} MiB, difference {abs(big_rss - ours_rss) / ours_rss:.1%} (target < 20%)",
            f"start-up: guides canny photo.png {start_ours:.3f} s vs import CannyDetector {start_aux:.3f} s  ratio = {start_ours / start_aux:.2f}x (target <= 0.25x)",
        ]
        print("\n".join(lines))
        if args.record:
            stamp = datetime.date.today().isoformat()
            with open(Path(__file__).with_name("RESULTS.md"), "a", encoding="utf-8") as results:
                results.write(f"\n### bench_canny.py, {stamp}, {platform.machine()} {cores} cores, Python {platform.python_version()}\n\n```\n")
                results.write("\n".join(lines) + "\n```\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
