"""The CLI through click's CliRunner and through the installed console script."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.cli_testing import invoke
from PIL import Image

from guides.cli.main import cli

#: The console script installed beside the interpreter running the tests (what a user of this venv runs).
GUIDES = Path(sys.executable).parent / "guides"


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
    for name in ("canny", "lineart", "normals", "depth", "sam", "mask", "hed", "pidinet", "teed", "anyline", "mlsd",
                 "lineart-anime", "lineart-standard", "run", "composite"):
        assert f"  {name} " in result.output
    canny_help = CliRunner().invoke(cli, ["canny", "--help"])
    assert "<stem>.<annotator>.png" in canny_help.output and "--resolution" in canny_help.output


def test_console_script_and_module_without_torch(tmp_path: Path, refs: Path) -> None:
    script = str(GUIDES)
    assert GUIDES.exists(), "the console script must be installed (pip install -e .)"
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
    done = subprocess.run([str(GUIDES), "canny", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"failed: {bad}: not an image, or an unsupported image format" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------- what a user sees of the batch rules


#: Injected into the console script's process through PYTHONPATH: canny gets a bug (``GUIDES_FAULT=bug``)
#: or runs out of device memory (``oom``) on images whose first red value is 13; batches of 2 with ``oom``.
_FAULTS = '''
import os
import guides.annotators.canny as canny

class OutOfMemoryError(RuntimeError):
    pass

_annotate = canny.CannyAnnotator.annotate

def annotate(self, image):
    if image[0, 0, 0] == 13:
        if os.environ["GUIDES_FAULT"] == "oom":
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        raise ZeroDivisionError("a bug in canny")
    return _annotate(self, image)

def annotate_batch(self, images):
    if len(images) > 1:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 GiB")
    return [annotate(self, image) for image in images]

canny.CannyAnnotator.annotate = annotate
canny.CannyAnnotator.annotate_batch = annotate_batch
if os.environ["GUIDES_FAULT"] == "oom":
    canny.CannyAnnotator.batch_size = 2
'''


def _guides(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([str(GUIDES), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd, **kwargs)


def _squares(folder: Path, values: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, value in enumerate(values):
        image = np.zeros((16, 16, 3), np.uint8)
        image[:, :, 0] = value
        image[4:12, 4:12] = 255
        paths.append(folder / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def _faults(tmp_path: Path, kind: str) -> dict[str, str]:
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(_FAULTS)
    return {"PYTHONPATH": str(tmp_path / "inject"), "GUIDES_FAULT": kind}


def test_a_bug_in_an_annotator_stops_the_batch_with_exit_3(tmp_path: Path) -> None:
    paths = _squares(tmp_path / "in", [40, 41, 13, 43, 44, 45])
    out = tmp_path / "out"
    env = _faults(tmp_path, "bug")
    done = _guides("canny", tmp_path / "in", "-o", out, "-q", "-j", "1", env=env)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"internal error: canny on {paths[2]}: ZeroDivisionError: a bug in canny")
    assert "failed:" not in done.stderr and "Traceback" not in done.stderr
    left = os.listdir(out) if out.exists() else []  # guides done before the bug may be written, whole
    assert "2.png" not in left and all(not name.startswith(".") for name in left)
    verbose = _guides("-vv", "canny", tmp_path / "in", "-o", out, "-q", env=env)
    assert verbose.returncode == 3 and "Traceback" in verbose.stderr and "ZeroDivisionError: a bug in canny" in verbose.stderr


def test_out_of_memory_is_retried_alone_then_one_failed_line_naming_the_options(tmp_path: Path) -> None:
    paths = _squares(tmp_path / "in", [40, 41, 13, 43, 44])
    out = tmp_path / "out"
    done = _guides("canny", tmp_path / "in", "-o", out, "-q", env=_faults(tmp_path, "oom"))
    assert done.returncode == 1, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("failed:")] == [
        f"failed: {paths[2]}: canny ran out of memory on this image (OutOfMemoryError: CUDA out of memory. "
        "Tried to allocate 64.00 GiB); try a smaller --batch-size, a lower --resolution or --precision fp16/bf16"
    ]
    assert sorted(os.listdir(out)) == ["0.png", "1.png", "3.png", "4.png"]
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr


def _without_read_rights(tmp_path: Path) -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs the child without the right to read files it lacks permission for.

    Not root: none is needed. Root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so the exec'd child, still uid 0 (the interpreter may live under /root, which user 65534 cannot
    reach), obeys file modes. None when that is impossible here.
    """
    if os.geteuid() != 0:
        return lambda: None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    locked = tmp_path / "probe"
    locked.write_bytes(b"")
    locked.chmod(0)
    probe = subprocess.run([sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], preexec_fn=drop, capture_output=True)
    locked.unlink()
    return drop if probe.returncode != 0 and b"PermissionError" in probe.stderr else None


@pytest.mark.parametrize("command", [("canny",), ("run", "canny")])
def test_an_unreadable_file_named_on_the_command_line_is_one_failed_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    preexec = _without_read_rights(tmp_path)
    if preexec is None:
        pytest.skip("cannot drop the right to read unreadable files here (root without CAP_SETPCAP)")
    paths = _squares(tmp_path / "in", [40, 41, 42])
    paths[1].chmod(0)
    (tmp_path / "in" / "locked").mkdir()
    (tmp_path / "in" / "locked").chmod(0)
    reason = "cannot read: permission denied"
    named = _guides(*command, *paths, "-o", tmp_path / "named", "-q", preexec_fn=preexec)
    assert named.returncode == 1, named.stderr
    assert [line for line in named.stderr.splitlines() if line.startswith("failed:")] == [f"failed: {paths[1]}: {reason}"]
    assert "not readable" not in named.stderr
    walked = _guides(*command, tmp_path / "in", "-o", tmp_path / "walked", "-q", preexec_fn=preexec)
    assert walked.returncode == 1, walked.stderr
    assert sorted(line for line in walked.stderr.splitlines() if line.startswith("failed:")) == [
        f"failed: {paths[1]}: {reason}", f"failed: {tmp_path / 'in' / 'locked'}: cannot read folder: Permission denied",
    ]
    sub = ("canny",) if command == ("run", "canny") else ()
    for out in ("named", "walked"):
        assert sorted(os.listdir(tmp_path / out / Path(*sub))) == ["0.png", "2.png"]


def test_an_unreadable_file_in_process(tmp_path: Path) -> None:
    paths = _squares(tmp_path, [40, 41])
    paths[0].chmod(0)
    if os.access(paths[0], os.R_OK):
        pytest.skip("this user reads files without read permission (root): the subprocess test drops that right")
    result = invoke("canny", *map(str, paths), "-q")
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("failed:")] == [f"failed: {paths[0]}: cannot read: permission denied"]
    assert (tmp_path / "1.canny.png").exists()


def _summary(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_guides_are_not_read_back_as_photos_and_reruns_skip_everything(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _squares(photos, [40, 41])
    first = _summary(_guides("canny", photos, "--json", "-q"))
    assert (first["written"], first["failed"]) == (2, 0)
    again = _summary(_guides("canny", photos, "--json", "-q"))
    assert (again["written"], again["skipped"], again["failed"]) == (0, 2, 0)
    out = tmp_path / "out"
    run = _summary(_guides("run", "canny", photos, "-o", out, "--json", "-q"))
    assert run["written"] == 2 and sorted(os.listdir(out / "canny")) == ["0.png", "1.png"]  # no 0.canny.png
    for case, command in (("equal", "run"), ("inside", "run"), ("inside", "canny")):
        folder = tmp_path / f"{case}-{command}"
        _squares(folder, [40, 41])
        target = folder if case == "equal" else folder / "guides"  # -o equal to the input folder, and inside it
        runs = [_summary(_guides(*command.split(), *(["canny"] if command == "run" else []), folder, "-o", target,
                                 "--json", "-q")) for _ in range(2)]
        assert [(r["written"], r["skipped"], r["failed"]) for r in runs] == [(2, 0, 0), (0, 2, 0)], (case, command)
    same = _guides("canny", photos, "-o", photos, "-q")
    assert same.returncode == 2 and same.stderr.strip().splitlines() == [
        f"error: -o {photos}: is the input folder; the guides would be mixed with (and replace) the photos: "
        "choose another folder, e.g. a new folder inside it"
    ]


def test_inpaint_target_rerun_over_its_own_outputs_skips_everything(tmp_path: Path, make_photo) -> None:
    """Its outputs (x.mask.png, x.target.png; OUT/mask, OUT/target) are never inputs: nothing to do, no model."""
    empty = tmp_path / "no models"
    empty.mkdir()
    for case, outputs in (("beside", ("0.mask.png", "0.target.png")), ("inside", ("out/mask/0.png", "out/target/0.png"))):
        photos = tmp_path / case
        _squares(photos, [40])
        for name in outputs:
            (photos / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(make_photo(1, 8, 8)).save(photos / name)
        extra = ("-o", photos / "out") if case == "inside" else ()
        summary = _summary(_guides("inpaint-target", photos, *extra, "--models-dir", empty, "--json", "-q"))
        assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 1, 0), case


def test_the_same_input_twice_is_processed_once(photo_folder: Path, tmp_path: Path) -> None:
    photo = photo_folder / "a.png"
    twice = invoke("canny", str(photo), str(photo), "-o", str(tmp_path / "o1"), "-q", "--json")
    assert twice.exit_code == 0, twice.stderr
    assert json.loads(twice.stdout)["written"] == 1
    overlap = invoke("run", "canny", str(photo_folder), str(photo_folder / "sub dir" / "c.png"), "-o", str(tmp_path / "o2"), "-q", "--json")
    assert overlap.exit_code == 0 and "also the output of" not in overlap.stderr
    assert (json.loads(overlap.stdout)["written"], json.loads(overlap.stdout)["failed"]) == (5, 0)


def test_an_output_folder_that_is_a_file_is_one_usage_error(photo_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "guides.png"
    blocker.write_bytes(b"not a folder")
    for command in (("canny",), ("run", "canny")):
        done = _guides(*command, photo_folder, "-o", blocker, "-q")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: -o {blocker}: ") and "is a file, not a folder" in lines[0]


def test_an_empty_or_broken_output_is_not_counted_as_done(tmp_path: Path, make_photo) -> None:
    photo = tmp_path / "photo.jpg"
    Image.fromarray(make_photo(1)).save(photo)
    guide = tmp_path / "photo.canny.png"
    for leftover in (b"", b"\x89PNG\r\n\x1a\n" + b"\0" * 40):
        guide.write_bytes(leftover)
        result = invoke("canny", str(photo), "-q", "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["written"] == 1
        assert np.array_equal(cv2.imread(str(guide), cv2.IMREAD_UNCHANGED), cv2.Canny(cv2.imread(str(photo)), 100, 200))


ANNOTATORS = ["canny", "lineart", "normals", "depth", "sam", "mask", "hed", "pidinet", "teed", "anyline", "mlsd",
              "lineart-anime", "lineart-standard"]


@pytest.mark.parametrize("name", ANNOTATORS)
def test_each_annotator_help_shows_its_own_output_name(name: str) -> None:
    result = invoke(name, "--help")
    assert result.exit_code == 0
    text = re.sub(r"(\w)- (\w)", r"\1-\2", " ".join(result.stdout.split()))  # click wraps after a hyphen
    assert f"<stem>.{name}.png (photo.jpg -> photo.{name}.png)" in text
    others = set(ANNOTATORS) - {name}
    assert not [other for other in others if f"photo.{other}.png" in text]
    download = "--download Download missing checkpoints from the Hugging Face hub (otherwise a missing checkpoint is an error)."
    assert (download in text) is (name not in ("canny", "lineart-standard"))


def test_download_flag_reaches_only_the_annotators_that_have_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from guides.registry import AnnotatorSpec

    seen: list[tuple[str, dict]] = []
    options = AnnotatorSpec.options
    monkeypatch.setattr(AnnotatorSpec, "options", lambda self, **values: seen.append((self.name, values)) or options(self, **values))
    missing = str(tmp_path / "missing.png")  # nothing to do, so no model is loaded
    assert invoke("depth", missing, "-q").exit_code == 1
    assert invoke("depth", missing, "-q", "--download").exit_code == 1
    assert invoke("run", "canny,depth", missing, "-q", "--download").exit_code == 1
    assert invoke("inpaint-target", missing, "-q").exit_code == 1
    assert [(name, values.get("download", "absent")) for name, values in seen] == [
        ("depth", False), ("depth", True), ("canny", "absent"), ("depth", True), ("mask", False),
    ]
    help_text = " ".join(invoke("run", "--help").stdout.split())
    assert "--download Download missing checkpoints from the Hugging Face hub" in help_text
