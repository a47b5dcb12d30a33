"""The CLI through click's CliRunner and through the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from guides.cli.testing import invoke
from PIL import Image

from guides.cli.main import cli




def test_canny_single_file_default_name_then_skip_then_overwrite(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(make_photo(1)).save(photo)
    first = invoke("canny", str(photo), "-q")
    assert first.exit_code == 0, first.output
    guide = tmp_path / "photo.canny.png"
    assert np.array_equal(cv2.imread(str(guide), cv2.IMREAD_UNCHANGED), cv2.Canny(cv2.imread(str(photo)), 100, 200))
    second = invoke("canny", str(photo), "-q", "--json")
    assert json.loads(second.stdout)["skipped"] == 1
    third = invoke("canny", str(photo), "-q", "--json", "--overwrite", "--low", "10")
    assert json.loads(third.stdout)["written"] == 1
    assert np.array_equal(cv2.imread(str(guide), cv2.IMREAD_UNCHANGED), cv2.Canny(cv2.imread(str(photo)), 10, 200))


def test_folder_mirrored_with_failures_reported(photo_folder: Path, tmp_path: Path) -> None:
    (photo_folder / "sub dir" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (photo_folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out put"
    result = invoke("canny", str(photo_folder), "-o", str(out), "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["written"], summary["failed"]) == (5, 2)
    lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert lines == [
        f"failed: {photo_folder / 'empty.jpg'}: empty file (0 bytes)",
        f"failed: {photo_folder / 'sub dir' / 'broken.png'}: not an image, or an unsupported image format",
    ]
    assert "Traceback" not in result.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["a.png", "b.png", "sub dir/c.png", "sub dir/déjà/ünï cödé.png", "sub dir/e.png"]


def test_run_several_annotators_writes_per_annotator_folders(photo_folder: Path, tmp_path: Path) -> None:
    result = invoke("run", "canny", str(photo_folder / "a.png"), str(photo_folder / "sub dir"), "-o", str(tmp_path / "o"), "-q")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*.png")) == [
        "canny/a.png", "canny/c.png", "canny/déjà/ünï cödé.png", "canny/e.png",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (("canny",), "Missing argument 'INPUTS...'"),
        (("canny", "x.png", "--low", "abc"), "'abc' is not a valid integer"),
        (("run", "canny,nope", "x.png"), "unknown annotator 'nope'; available: canny"),
        (("frobnicate",), "No such command 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2(args, message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_output_over_input_is_refused(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo(2)).save(photo)
    before = photo.read_bytes()
    result = invoke("canny", str(photo), "-o", str(photo), "-q")
    assert result.exit_code == 1 and "would overwrite an input" in result.stderr
    assert photo.read_bytes() == before


def test_unwritable_output_folder(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "p.png"
    Image.fromarray(make_photo(2)).save(photo)
    (tmp_path / "file").write_bytes(b"")
    result = invoke("canny", str(photo), "-o", str(tmp_path / "file" / "out"), "-q")
    assert result.exit_code == 1
    assert f"failed: {photo}: {tmp_path / 'file' / 'out' / 'p.png'}: cannot write" in result.stderr


def test_composite_command(tmp_path: Path, make_photo) -> None:
    image = tmp_path / "img.png"
    mask = tmp_path / "mask.png"
    Image.fromarray(make_photo(3)).save(image)
    mask_array = np.zeros((96, 128), np.uint8)
    mask_array[:, 64:] = 255
    Image.fromarray(mask_array).save(mask)
    result = invoke("composite", str(image), str(mask), "--background", "black")
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "img.composite.png"))
    assert np.array_equal(out[:, :64], make_photo(3)[:, :64]) and not out[:, 64:].any()
    small = tmp_path / "small.png"
    Image.fromarray(mask_array[:10, :10]).save(small)
    bad = invoke("composite", str(image), str(small))
    assert bad.exit_code == 2 and "error: mask is 10x10 but the image is 128x96; pass --resize-mask" in bad.stderr


def test_composite_reference_through_cli(refs: Path, tmp_path: Path) -> None:
    out = tmp_path / "target.png"
    result = invoke("composite", str(refs / "kitchen_dog.png"), str(refs / "inpainting-mask.png"), "-o", str(out))
    assert result.exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(refs / "inpainting-target.png").convert("RGB")))


def test_help_lists_every_annotator() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("canny", "lineart", "normals", "depth", "sam", "mask", "run", "composite"):
        assert f"  {name} " in result.output
    canny_help = CliRunner().invoke(cli, ["canny", "--help"])
    assert "<stem>.<annotator>.png" in canny_help.output and "--resolution" in canny_help.output


def test_console_script_and_module_without_torch(tmp_path: Path, refs: Path) -> None:
    script = shutil.which("guides")
    assert script, "the console script must be installed (pip install -e .)"
    out = tmp_path / "cat.png"
    done = subprocess.run([script, "canny", str(refs / "cutecat_init.png"), "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(refs / "cutecat_guide_canny.png")))
    probe = (
        "import sys\nfrom guides.cli.main import main\n"
        f"sys.argv = ['guides', 'canny', {str(refs / 'cutecat_init.png')!r}, '-o', {str(tmp_path / 'b.png')!r}, '-q']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "0 []", done.stdout + done.stderr
    version = subprocess.run([sys.executable, "-m", "guides", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "guides, version" in version.stdout


def test_bad_input_through_console_script_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad image.png"
    bad.write_bytes(b"garbage")
    done = subprocess.run([shutil.which("guides") or "guides", "canny", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"failed: {bad}: not an image, or an unsupported image format" in done.stderr
    assert "Traceback" not in done.stderr
