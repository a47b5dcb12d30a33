"""Union-condition throughput: ``guides <cond> DIR -o OUT`` against a raw OpenCV loop of the same formula.

For each of blur, tile, gray, low-quality, shuffle, color and binary, on one generated folder (N distinct
512x512 PNG photos, bench_canny's ``make_photo``):

* ours: the installed ``guides`` console script in a fresh process (start-up, decode, formula, encode, write);
* raw: the same formula over a 2-process pool: ``cv2.imread``, formula, ``cv2.imwrite`` PNG (the photos are
  512x512, so the reference resizes at resolution 512 are the identity and the raw loop skips them);

and prints images/s, the ratio ours/raw (target >= 0.85x) and whether the outputs are identical.
Usage: ``python bench/bench_union_conditions.py [--count 100] [--repeat 2] [--only blur,tile]``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_canny import best, make_photo  # noqa: E402  (bench/ is not a package)

RAW_POOL = r"""
import sys, cv2, glob, os
import numpy as np
from multiprocessing import Pool
src, dst, cond = sys.argv[1], sys.argv[2], sys.argv[3]

def noise(rng, h, w):
    u = cv2.resize(rng.uniform(0, 1, (h // 256 + 2, w // 256 + 2)), (w + 512, h + 512), interpolation=cv2.INTER_CUBIC)
    u = u[256:256 + h, 256:256 + w]
    u -= u.min()
    return u / u.max()

def formula(x):
    h, w = x.shape[:2]
    if cond == "blur":
        return cv2.GaussianBlur(x, (0, 0), 9.0)
    if cond in ("tile", "low-quality"):
        f = 8.0 if cond == "tile" else 4.0
        y = cv2.resize(cv2.resize(x, (int(w / f), int(h / f)), interpolation=cv2.INTER_AREA), (w, h),
                       interpolation=cv2.INTER_CUBIC)
        return y if cond == "tile" else cv2.imdecode(cv2.imencode(".jpg", y, [cv2.IMWRITE_JPEG_QUALITY, 30])[1], 1)
    if cond == "gray":
        return cv2.cvtColor(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if cond == "binary":
        return cv2.threshold(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)[1]
    if cond == "color":
        return cv2.resize(cv2.resize(x, (w // 64, h // 64), interpolation=cv2.INTER_CUBIC), (w, h),
                          interpolation=cv2.INTER_NEAREST)
    rng = np.random.RandomState(0)
    mx = (noise(rng, h, w) * float(w - 1)).astype(np.float32)
    my = (noise(rng, h, w) * float(h - 1)).astype(np.float32)
    return cv2.remap(x, mx, my, cv2.INTER_LINEAR)

def one(path):
    cv2.imwrite(os.path.join(dst, os.path.basename(path)), formula(cv2.imread(path)))

if __name__ == "__main__":
    os.makedirs(dst, exist_ok=True)
    with Pool(2) as pool:
        pool.map(one, sorted(glob.glob(os.path.join(src, "*.png"))), chunksize=4)
"""

CONDITIONS = ("blur", "tile", "gray", "low-quality", "shuffle", "color", "binary")


def compile_package() -> None:
    """Byte-compile the guides package first, as ``pip install`` does for a regular install (an editable
    install compiles on first import, unless PYTHONDONTWRITEBYTECODE is set, as on the development
    machines): otherwise every fresh process of ours recompiles ~30 modules (~90 ms) while the raw loop's
    numpy and cv2 come precompiled."""
    import importlib.util

    spec = importlib.util.find_spec("guides")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        done = subprocess.run([sys.executable, "-m", "compileall", "-q", folder], capture_output=True)
        print(f"byte-compiled {folder}" if done.returncode == 0 else f"could not byte-compile {folder}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default=",".join(CONDITIONS), help="comma-separated conditions")
    parser.add_argument("--guides", help="the guides executable (default: the installed console script)")
    args = parser.parse_args()
    guides = args.guides or shutil.which("guides") or str(Path(sys.executable).with_name("guides"))
    if not Path(guides).exists():
        sys.exit("install the package first: pip install -e .")
    compile_package()
    work = Path(tempfile.mkdtemp(prefix="bench-union-"))
    try:
        src = work / "photos"
        src.mkdir()
        for index in range(args.count):
            cv2.imwrite(str(src / f"{index:05d}.png"), make_photo(index))
        lines = [f"files: {args.count} distinct 512x512 PNG; raw loop: 2 processes; best of {args.repeat}"]
        for cond in args.only.split(","):
            ours_dir, raw_dir = work / f"ours-{cond}", work / f"raw-{cond}"
            ours, _, _ = best([guides, cond, str(src), "-o", str(ours_dir), "-q", "--overwrite"], args.repeat)
            raw, _, _ = best([sys.executable, "-c", RAW_POOL, str(src), str(raw_dir), cond], args.repeat, clean=raw_dir)
            same = all(np.array_equal(cv2.imread(str(ours_dir / p.name), -1), cv2.imread(str(raw_dir / p.name), -1))
                       for p in sorted(src.iterdir()))
            n = args.count
            lines.append(f"{cond:12s} ours {n / ours:7.1f} img/s ({ours:.2f} s)  raw 2-process {n / raw:7.1f} img/s "
                         f"({raw:.2f} s)  ours/raw = {raw / ours:.2f}x (target >= 0.85x)  identical: {same}")
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
