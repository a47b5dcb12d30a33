"""The folder run every learned annotator must survive: a corrupt file and a 3 x 700 strip fail with one line
each, a 1 x 1 image and a fine 40 x 40 one are written at their input sizes, the exit code is 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli_testing import invoke


#: ``make_photo`` arguments (seed, height, width) of the fine photo, for tests that check its guide's pixels.
FINE_PHOTO = (7, 40, 40)


def write_bad_folder(tmp_path: Path, make_photo: Callable[..., np.ndarray]) -> Path:
    """``tmp_path/in`` with the four files: bad.png (not an image), strip.png (3 x 700), tiny.png (1 x 1) and
    fine.png (``FINE_PHOTO``)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not an image")
    Image.fromarray(make_photo(5, 3, 700)).save(folder / "strip.png")
    Image.fromarray(make_photo(6, 1, 1)).save(folder / "tiny.png")
    Image.fromarray(make_photo(*FINE_PHOTO)).save(folder / "fine.png")
    return folder


def run_bad_folder(name: str, tmp_path: Path, make_photo: Callable[..., np.ndarray], *options: str) -> tuple[Path, str]:
    """Run ``guides NAME IN -o OUT -q OPTIONS`` over the four files; check what every annotator shares and
    return the output folder and the strip's failure line (each annotator words its own limit)."""
    folder = write_bad_folder(tmp_path, make_photo)
    out = tmp_path / "out"
    result = invoke(name, str(folder), *options, "-o", str(out), "-q")
    assert result.exit_code == 1, result.output
    failures = sorted(line for line in result.output.splitlines() if line.startswith("failed:"))
    assert len(failures) == 2, result.output
    assert failures[0].startswith(f"failed: {folder / 'bad.png'}: not an image"), failures
    assert sorted(p.name for p in out.iterdir()) == ["fine.png", "tiny.png"]
    assert Image.open(out / "tiny.png").size == (1, 1) and Image.open(out / "fine.png").size == (40, 40)
    return out, failures[1]
