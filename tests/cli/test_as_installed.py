"""``guides`` as a user gets it: the installed console script, run in subprocesses.

Everything else in the suite runs the CLI inside the test process, where whatever pytest or an earlier
test imported is already there (the ``importlib.util`` bug of issue 12 hid behind exactly that). Here each
call is a fresh process started from the ``guides`` script beside the test interpreter (once through
``python -m guides``), in a temporary folder (nothing is found in the checkout by accident), with the
environment a user would have: the test process's own variables (``PYTHONPATH``, ``PYTEST_*``, the
``HF_HUB_OFFLINE`` of tests/conftest.py, ...) are left out.

Covered: ``guides``, ``guides --help``, the ``--help`` of every command and sub-command, and one real call
of every command on small inputs made here. Every call asserts its exit code and that stderr holds neither
``internal error`` nor ``Traceback``; every real call also gets its own empty hub cache and a loopback hub
(tests/weights/conftest.py) that records what it is asked, so only ``models download`` may ask it for
anything. Learned annotators load checkpoints in their public formats with random weights: lineart
(``sk_model.pth``, controlnet_aux's generator) and SAM (``sam_vit_b_01ec64.pth``: the CLI builds
segment_anything's ViT-B/L/H and loads strictly, so a random ViT-B is the smallest SAM it can load);
normals and depth (290 MB and 1.4 GB checkpoints) are called without weights and must fail at once with
one line, exit 2, and no download.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.cli_testing import ProcessResult as Result
from tests.cli_testing import user_environment

TESTS = Path(__file__).resolve().parents[1]

#: Every command ``guides --help`` must list: a command that vanishes (or fails to import) fails here.
EXPECTED_COMMANDS = (
    "canny", "lineart", "normals", "depth", "sam", "mask", "hed", "pidinet", "teed", "anyline", "mlsd",
    "lineart-anime", "lineart-standard", "openpose", "depth-anything", "blur", "tile", "gray", "low-quality",
    "shuffle", "color", "binary", "run", "composite", "inpaint-target", "dataset",
    "models", "generate", "reproduce", "compare",
)
MODELS_SUBCOMMANDS = ("download", "list", "path", "verify")

#: Variables a user's shell would not have: set by the test process, pytest, or plugins (or, for HF_*,
#: GUIDES_* and RAY_*, a developer's own settings that would make the outcome depend on their machine).

HELP_TIMEOUT = 120
CALL_TIMEOUT = 420


# ----------------------------------------------------------------------------------------- helpers


def conftest_module(folder: str) -> ModuleType:
    """tests/<folder>/conftest.py as a module, for its builder functions: pytest loads a sub-folder's
    conftest only for the tests under it and tests/ is not a package, so it is loaded by path (its
    fixtures are not registered here)."""
    name = f"_as_installed_{folder}_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / folder / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_process(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Result:
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"$ {' '.join(argv)} did not finish in {timeout} s (stderr: {expired.stderr!r:.2000})")
    return Result(tuple(argv), done.returncode, done.stdout, done.stderr)


def assert_clean(result: Result, code: int) -> None:
    """The exit code is ``code`` and stderr shows no bug (no ``internal error``, no traceback)."""
    assert result.returncode == code, result.describe()
    assert "internal error" not in result.stderr, result.describe()
    assert "Traceback" not in result.stderr, result.describe()


def blocks_photo(height: int = 64, width: int = 80, seed: int = 0) -> np.ndarray:
    """Flat colour blocks on a gradient, a little noise: edges for Canny, regions for SAM. RGB uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 200 // width + 20, yy * 180 // height + 30, np.full_like(xx, 90)], axis=2).astype(np.int16)
    image[height // 8:height // 2, width // 10:width // 2] = (240, 40, 40)
    image[height // 2:height - 4, width // 2:width - 6] = (40, 230, 60)
    image += rng.integers(-4, 5, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def save_photo(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ----------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def console_script() -> Path:
    """The ``guides`` script that ``pip install -e ".[test]"`` put beside this interpreter."""
    script = Path(sys.executable).parent / ("guides.exe" if os.name == "nt" else "guides")
    if not script.is_file():
        pytest.fail(f"the console script {script} is missing: install the package into this environment "
                    f"with pip install -e \".[test]\" (then run the tests with {sys.executable} -m pytest)")
    return script


@pytest.fixture(scope="module")
def help_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("as-installed-help")


@pytest.fixture(scope="module")
def guides_help(console_script: Path, help_cwd: Path) -> Callable[..., Result]:
    """``guides_help(*args)``: the console script with a user's environment, in an empty folder."""

    def invoke(*args: str) -> Result:
        return run_process([str(console_script), *args], help_cwd, user_environment(), HELP_TIMEOUT)

    return invoke


@pytest.fixture(scope="module")
def top_help(guides_help: Callable[..., Result]) -> Result:
    return guides_help("--help")


@pytest.fixture
def hub() -> Iterator[Any]:
    """The loopback hub of tests/weights/conftest.py (127.0.0.1, serves only what a test adds)."""
    weights = conftest_module("weights")
    with weights.serving(weights.FakeHub()) as fake:
        yield fake


def model_requests(hub: Any) -> list[tuple[str, str]]:
    """What was asked of the hub about models and files (huggingface_hub also fetches its list of
    "agent harnesses" before its first request: not a model request)."""
    return [(method, path) for method, path in hub.requests if not path.startswith("/api/agent-harnesses")]


@pytest.fixture(scope="module")
def sam_vit_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding a random ViT-B SAM as the public ``sam_vit_b_01ec64.pth`` (a plain state dict)."""
    torch = importlib.import_module("torch")  # in the test extra: a missing one fails
    registry = importlib.import_module("segment_anything").sam_model_registry  # in the test extra: a missing one fails
    folder = tmp_path_factory.mktemp("sam-vit-b")
    torch.manual_seed(0)
    torch.save(registry["vit_b"]().state_dict(), folder / "sam_vit_b_01ec64.pth")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 375 MB: not left for pytest's three kept runs


@pytest.fixture(scope="module")
def lineart_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a random lineart generator as the public ``sk_model.pth`` (a plain state dict of
    controlnet_aux's ``Generator(3, 1, 3)``)."""
    import warnings

    torch = importlib.import_module("torch")  # in the test extra: a missing one fails
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet_aux warns about optional packages when imported
        from controlnet_aux.lineart import Generator
    folder = tmp_path_factory.mktemp("lineart-models")
    torch.manual_seed(0)
    torch.save(Generator(3, 1, 3).state_dict(), folder / "sk_model.pth")
    return folder


@pytest.fixture(scope="module")
def tiny_diffusion(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny random SD 1.5 + ControlNets of tests/diffusion/conftest.py (local diffusers folders)."""
    importlib.import_module("diffusers")  # in the test extra: a missing one fails
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tests/diffusion/conftest.py: faster for tiny models on a shared machine
    try:
        return conftest_module("diffusion").build_tiny_models(tmp_path_factory.mktemp("tiny-diffusion"))
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ help, no arguments


def command_names(help_text: str) -> list[str]:
    """The names in the "Commands:" section of a click help text (continuation lines skipped)."""
    _, found, section = help_text.partition("\nCommands:\n")
    assert found, help_text
    return [match.group(1) for match in re.finditer(r"^  (\S+)", section, flags=re.MULTILINE)]


def test_top_level_help(top_help: Result) -> None:
    assert_clean(top_help, 0)
    assert top_help.stdout.startswith("Usage: guides [OPTIONS] COMMAND [ARGS]..."), top_help.describe()
    assert top_help.stderr == "", top_help.describe()


def test_help_lists_exactly_the_expected_commands(top_help: Result) -> None:
    listed = command_names(top_help.stdout)
    assert sorted(listed) == sorted(EXPECTED_COMMANDS), top_help.stdout


def test_bare_guides_prints_the_help_and_exits_0(guides_help: Callable[..., Result], top_help: Result) -> None:
    """A bare ``guides`` asks for help (as git and pip answer): the same text on stdout, exit 0."""
    bare = guides_help()
    assert_clean(bare, 0)
    assert bare.stdout == top_help.stdout and bare.stderr == "", bare.describe()


def test_version_is_the_installed_distribution(guides_help: Callable[..., Result]) -> None:
    result = guides_help("--version")
    assert_clean(result, 0)
    assert result.stdout.strip() == f"guides, version {importlib.metadata.version('controlnet-guides')}", result.describe()


def test_python_dash_m_guides_is_the_console_script(console_script: Path, help_cwd: Path, top_help: Result) -> None:
    result = run_process([sys.executable, "-m", "guides", "--help"], help_cwd, user_environment(), HELP_TIMEOUT)
    assert_clean(result, 0)
    assert result.stdout == top_help.stdout and result.stderr == "", result.describe()


HELP_CASES = [(name,) for name in EXPECTED_COMMANDS] + [("models", name) for name in MODELS_SUBCOMMANDS]


@pytest.mark.parametrize("command", HELP_CASES, ids=["-".join(case) for case in HELP_CASES])
def test_command_help(guides_help: Callable[..., Result], command: tuple[str, ...]) -> None:
    result = guides_help(*command, "--help")
    assert_clean(result, 0)
    assert result.stdout.startswith(f"Usage: guides {' '.join(command)} [OPTIONS]"), result.describe()
    assert "-h, --help" in result.stdout and result.stderr == "", result.describe()


def test_models_help_lists_its_subcommands(guides_help: Callable[..., Result]) -> None:
    result = guides_help("models", "--help")
    assert_clean(result, 0)
    assert sorted(command_names(result.stdout)) == sorted(MODELS_SUBCOMMANDS), result.stdout


# ------------------------------------------------------------------------------------- real calls


@dataclass
class Call:
    """What a real call needs: a folder to work in, the console script, the loopback hub, fixtures."""

    tmp: Path
    script: Path
    hub: Any
    request: pytest.FixtureRequest

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)

    def guides(self, *args: object, code: int, one_thread: bool = True) -> Result:
        """``guides ARGS`` in ``tmp``: its own empty hub cache, the loopback hub as endpoint (online).

        ``one_thread``: torch on one thread (unless the user's OMP_NUM_THREADS says otherwise). It changes
        no code path; on a shared 2-core machine the tiny models run several times faster without thread
        hand-offs (tests/diffusion/conftest.py does the same in-process). The ViT-B SAM keeps torch's default.
        """
        environment = user_environment(HF_HOME=str(self.tmp / "hf-home"), HF_ENDPOINT=self.hub.url)
        if one_thread:
            environment.setdefault("OMP_NUM_THREADS", "1")
        result = run_process([str(self.script), *map(str, args)], self.tmp, environment, CALL_TIMEOUT)
        assert_clean(result, code)
        return result

    def photo(self, name: str = "photo.png", seed: int = 0) -> Path:
        return save_photo(self.tmp / name, blocks_photo(seed=seed))


#: Real call id -> (command, function): one subprocess call (or two) of that command, with its checks.
REAL_CALLS: dict[str, tuple[str, Callable[[Call], None]]] = {}


def real_call(call_id: str, command: str) -> Callable[[Callable[[Call], None]], Callable[[Call], None]]:
    def register(function: Callable[[Call], None]) -> Callable[[Call], None]:
        REAL_CALLS[call_id] = (command, function)
        return function

    return register


@real_call("canny", "canny")
def _canny(call: Call) -> None:
    photo = call.photo()
    call.guides("canny", photo, "-o", call.tmp / "edges.png", "-q", code=0)
    written = cv2.imread(str(call.tmp / "edges.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(written, cv2.Canny(cv2.imread(str(photo)), 100, 200))


@real_call("lineart", "lineart")
def _lineart(call: Call) -> None:
    checkpoint = call.fixture("lineart_models") / "sk_model.pth"
    photo = call.photo()
    call.guides("lineart", photo, "--checkpoint", checkpoint, "--resolution", "64", "--device", "cpu",
                "-o", call.tmp / "lines.png", "-q", code=0)
    written = Image.open(call.tmp / "lines.png")
    assert written.mode == "L" and written.size == (80, 64)


def _line_network(command: str) -> tuple[str, dict]:
    """(public file name, its on-disk contents) of a random reference network of ``command``."""
    import functools

    import torch

    torch.manual_seed(0)
    if command == "hed":
        from controlnet_aux.hed import ControlNetHED_Apache2

        return "ControlNetHED.pth", ControlNetHED_Apache2().state_dict()
    if command == "pidinet":
        from controlnet_aux.pidi.model import pidinet

        return "table5_pidinet.pth", {"state_dict": {f"module.{k}": v for k, v in pidinet().state_dict().items()}}
    if command in ("teed", "anyline"):
        from controlnet_aux.teed.ted import TED

        return ("5_model.pth" if command == "teed" else "MTEED.pth"), TED().state_dict()
    if command == "mlsd":
        from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

        return "mlsd_large_512_fp32.pth", MobileV2_MLSD_Large().state_dict()
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    network = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    return "netG.pth", {f"module.{k}": v for k, v in network.state_dict().items()}


def _line_annotator_call(command: str) -> Callable[[Call], None]:
    def call_it(call: Call) -> None:
        import torch

        filename, contents = _line_network(command)
        models = call.tmp / "models"
        models.mkdir()
        torch.save(contents, models / filename)
        photo = call.photo()
        call.guides(command, photo, "--models-dir", models, "--resolution", "64", "--device", "cpu",
                    "-o", call.tmp / "guide.png", "-q", code=0)
        written = Image.open(call.tmp / "guide.png")
        assert written.mode == "L" and written.size == (80, 64)
        _without_weights(call, command, filename)

    return call_it


for _command in ("hed", "pidinet", "teed", "anyline", "mlsd", "lineart-anime"):
    real_call(_command, _command)(_line_annotator_call(_command))


@real_call("lineart-standard", "lineart-standard")
def _lineart_standard(call: Call) -> None:
    from guides.registry import get

    photo = call.photo()
    call.guides("lineart-standard", photo, "--resolution", "64", "-o", call.tmp / "lines.png", "-q", code=0)
    written = np.asarray(Image.open(call.tmp / "lines.png"))
    expected = get("lineart-standard").load(resolution=64).annotate(np.asarray(Image.open(photo).convert("RGB")))
    assert np.array_equal(written, expected)


#: The union models' cheap conditions (no network), with options that are not their defaults.
CHEAP_CONDITIONS = {
    "blur": ("--sigma", "3"), "tile": ("--factor", "4"), "gray": (), "low-quality": ("--quality", "50", "--seed", "2"),
    "shuffle": ("--seed", "3"), "color": ("--resolution", "256"), "binary": ("--threshold", "90"),
}


def _cheap_condition_call(command: str) -> Callable[[Call], None]:
    def call_it(call: Call) -> None:
        from guides.registry import get

        args = CHEAP_CONDITIONS[command]
        photo = call.photo()
        call.guides(command, photo, *args, "-o", call.tmp / "guide.png", "-q", code=0)
        written = np.asarray(Image.open(call.tmp / "guide.png"))
        options = {args[i].removeprefix("--"): float(args[i + 1]) if command in ("blur", "tile") else int(args[i + 1])
                   for i in range(0, len(args), 2)}
        expected = get(command).load(**options).annotate(np.asarray(Image.open(photo).convert("RGB")))
        assert np.array_equal(written, expected), command
        bad = call.tmp / "bad.png"
        bad.write_bytes(b"not a png")
        result = call.guides(command, bad, "-o", call.tmp / "bad-guide.png", "-q", code=1)
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith("failed: ") and lines[0].endswith("bad.png: not an image, or an unsupported "
                                                                     "image format"), result.describe()
        assert "Traceback" not in result.stderr and not (call.tmp / "bad-guide.png").exists()

    return call_it


for _command in CHEAP_CONDITIONS:
    real_call(_command, _command)(_cheap_condition_call(_command))


def _openpose_models(call: Call) -> Path:
    """A models folder with random body weights in the hub's layout (keys without their block name)."""
    import torch
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    models = call.tmp / "models"
    models.mkdir()
    state = {key.split(".", 1)[1]: value for key, value in bodypose_model().state_dict().items()}
    torch.save(state, models / "body_pose_model.pth")
    return models


@real_call("openpose", "openpose")
def _openpose(call: Call) -> None:
    """Random body weights in the hub's layout (keys without their block name): a guide at the input size
    and the OpenPose JSON under --keypoints-out; no weights: one line naming the file."""
    models = _openpose_models(call)
    call.photo("photo.png")
    keypoints = call.tmp / "keypoints"
    call.guides("openpose", call.tmp / "photo.png", "--models-dir", models, "--resolution", "64", "--device", "cpu",
                "--keypoints-out", keypoints, "-o", call.tmp / "pose.png", "-q", code=0)
    written = Image.open(call.tmp / "pose.png")
    assert written.mode == "RGB" and written.size == (80, 64)
    document = json.loads((keypoints / "photo.json").read_text())
    assert set(document) == {"people", "canvas_width", "canvas_height"}, document
    assert (document["canvas_width"], document["canvas_height"]) == (80, 64) and isinstance(document["people"], list)
    _without_weights(call, "openpose", "body_pose_model.pth")


@real_call("depth-anything", "depth-anything")
def _depth_anything(call: Call) -> None:
    """Random Small weights as transformers saves them, under the flat name; the default (Large) missing:
    one line naming its file."""
    from tests.nets.test_depth_anything import save_hf_file, scaled_reference

    models = call.tmp / "models"
    save_hf_file(scaled_reference("small", seed=1), call.tmp / "hf").rename(
        models.mkdir() or models / "depth_anything_v2_vits.safetensors")
    call.guides("depth-anything", call.photo(), "--model", "small", "--input-size", "28", "--models-dir", models,
                "--device", "cpu", "-o", call.tmp / "depth.png", "-q", code=0)
    written = Image.open(call.tmp / "depth.png")
    assert written.mode == "L" and written.size == (80, 64)
    assert np.ptp(np.asarray(written)) > 0, "a min-max depth spans levels"
    _without_weights(call, "depth-anything", "depth_anything_v2_vitl.safetensors")


def _without_weights(call: Call, command: str, filename: str) -> None:
    """No checkpoint anywhere: one ``error:`` line naming the file, exit 2, no download started."""
    (call.tmp / "no-models").mkdir()
    result = call.guides(command, call.photo(), "--models-dir", call.tmp / "no-models", "--device", "cpu", "-q",
                         code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and filename in lines[0], result.describe()
    assert not (call.tmp / f"photo.{command}.png").exists()


@real_call("normals", "normals")
def _normals(call: Call) -> None:
    _without_weights(call, "normals", "scannet.pt")


@real_call("depth", "depth")
def _depth(call: Call) -> None:
    _without_weights(call, "depth", "ZoeD_M12_N.pt")


@real_call("sam", "sam")
def _sam(call: Call) -> None:
    photo = call.photo()
    call.guides("sam", photo, "--model", "vit_b", "--models-dir", call.fixture("sam_vit_b"), "--device", "cpu",
                "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                "-o", call.tmp / "segments.png", "-q", code=0, one_thread=False)
    written = Image.open(call.tmp / "segments.png")
    assert written.mode == "RGB" and written.size == (80, 64)  # every guide comes out at the input size


@real_call("mask", "mask")
def _mask(call: Call) -> None:
    checkpoint = call.fixture("sam_vit_b") / "sam_vit_b_01ec64.pth"
    call.guides("mask", call.photo(), "--model", "vit_b", "--checkpoint", checkpoint, "--device", "cpu",
                "--point", "20,20", "-o", call.tmp / "mask.png", "-q", code=0, one_thread=False)
    written = Image.open(call.tmp / "mask.png")
    assert written.mode == "L" and written.size == (80, 64)
    assert set(np.unique(np.asarray(written)).tolist()) <= {0, 255}


@real_call("inpaint-target", "inpaint-target")
def _inpaint_target(call: Call) -> None:
    image = blocks_photo()
    save_photo(call.tmp / "in" / "photo.png", image)
    out = call.tmp / "out"
    call.guides("inpaint-target", call.tmp / "in", "--model", "vit_b", "--models-dir", call.fixture("sam_vit_b"),
                "--device", "cpu", "--point", "20,20", "-o", out, "-q", code=0, one_thread=False)
    mask = np.asarray(Image.open(out / "mask" / "photo.png"))
    target = read_rgb(out / "target" / "photo.png")
    assert mask.shape == image.shape[:2] and set(np.unique(mask).tolist()) <= {0, 255}
    assert np.array_equal(target, np.where(mask[:, :, None] == 255, np.uint8(255), image))  # white background


@real_call("run", "run")
def _run(call: Call) -> None:
    photo = save_photo(call.tmp / "in" / "photo.png", blocks_photo())
    out = call.tmp / "out"
    call.guides("run", "canny,lineart", call.tmp / "in", "-o", out, "--models-dir", call.fixture("lineart_models"),
                "--device", "cpu", "-q", code=0)
    assert np.array_equal(cv2.imread(str(out / "canny" / "photo.png"), cv2.IMREAD_UNCHANGED),
                          cv2.Canny(cv2.imread(str(photo)), 100, 200))
    assert Image.open(out / "lineart" / "photo.png").size == (80, 64)


@real_call("run-openpose-gray", "run")
def _run_openpose_gray(call: Call) -> None:
    """A pose network, its keypoints beside its guide, and a cheap condition in one pass."""
    from guides.registry import get

    photo = save_photo(call.tmp / "in" / "photo.png", blocks_photo())
    out = call.tmp / "out"
    call.guides("run", "openpose,gray", call.tmp / "in", "-o", out, "--models-dir", _openpose_models(call),
                "--resolution", "64", "--device", "cpu", "-q", code=0)
    assert Image.open(out / "openpose" / "photo.png").size == (80, 64)
    document = json.loads((out / "openpose" / "photo.json").read_text())
    assert (document["canvas_width"], document["canvas_height"]) == (80, 64), document
    expected = get("gray").load(resolution=64).annotate(read_rgb(photo))
    assert np.array_equal(np.asarray(Image.open(out / "gray" / "photo.png")), expected)


@real_call("composite", "composite")
def _composite(call: Call) -> None:
    image = blocks_photo()
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[:, :40] = 255  # repaint the left half
    save_photo(call.tmp / "image.png", image)
    save_photo(call.tmp / "mask.png", mask)
    call.guides("composite", call.tmp / "image.png", call.tmp / "mask.png", "--background", "#102030",
                "-o", call.tmp / "target.png", code=0)
    expected = image.copy()
    expected[:, :40] = (0x10, 0x20, 0x30)
    assert np.array_equal(read_rgb(call.tmp / "target.png"), expected)


def _dataset(call: Call, format_: str) -> Path:
    for seed in (1, 2):
        save_photo(call.tmp / "photos" / f"p{seed}.png", blocks_photo(seed=seed))
    out = call.tmp / "train"
    result = call.guides("dataset", call.tmp / "photos", "-a", "canny", "--prompt", "a photo", "-o", out,
                         "--format", format_, "--resolution", "64", "--json", "-q", code=0)
    report = json.loads(result.stdout)
    assert (report["rows"], report["written"], report["failed"]) == (2, 2, 0), report
    return out


@real_call("dataset-parquet", "dataset")
def _dataset_parquet(call: Call) -> None:
    parquet = importlib.import_module("pyarrow.parquet")  # in the test extra: a missing one fails
    out = _dataset(call, "parquet")
    (shard,) = sorted((out / "canny").glob("*.parquet"))
    table = parquet.read_table(shard)
    assert table.num_rows == 2 and {"image", "conditioning_image", "text"} <= set(table.column_names)
    assert table.column("text").to_pylist() == ["a photo", "a photo"]


@real_call("dataset-webdataset", "dataset")
def _dataset_webdataset(call: Call) -> None:
    out = _dataset(call, "webdataset")
    (shard,) = sorted((out / "canny").glob("*.tar"))
    with tarfile.open(shard) as archive:
        names = archive.getnames()
    suffixes = ("image.png", "conditioning_image.png", "txt", "json")
    assert sorted(names) == sorted(f"{key:09d}.{suffix}" for key in range(2) for suffix in suffixes), names


@real_call("dataset-openpose-union", "dataset")
def _dataset_openpose_union(call: Call) -> None:
    """openpose and tile as one Parquet dataset each, with the keypoints column and xinsir's modes."""
    parquet = importlib.import_module("pyarrow.parquet")
    for seed in (1, 2):
        save_photo(call.tmp / "photos" / f"p{seed}.png", blocks_photo(seed=seed))
    out = call.tmp / "train"
    result = call.guides("dataset", call.tmp / "photos", "-a", "openpose,tile", "--prompt", "a photo", "-o", out,
                         "--models-dir", _openpose_models(call), "--device", "cpu", "--union-model", "xinsir",
                         "--resolution", "64", "--json", "-q", code=0)
    report = json.loads(result.stdout)
    assert report["failed"] == 0, report
    pose = parquet.read_table(next((out / "openpose").glob("*.parquet")))
    tile = parquet.read_table(next((out / "tile").glob("*.parquet")))
    assert pose.num_rows == tile.num_rows == 2
    assert {"openpose_keypoints", "control_type", "control_mode"} <= set(pose.column_names), pose.column_names
    assert all(set(json.loads(text)) == {"people", "canvas_width", "canvas_height"}
               for text in pose.column("openpose_keypoints").to_pylist())
    assert pose.column("control_mode").to_pylist() == [0, 0] and tile.column("control_mode").to_pylist() == [6, 6]


@real_call("models-list", "models")
def _models_list(call: Call) -> None:
    folder = call.fixture("lineart_models")
    result = call.guides("models", "list", "--models-dir", folder, code=0)
    lines = result.stdout.splitlines()
    lineart = next(line for line in lines if line.startswith("lineart "))
    assert f"{folder / 'sk_model.pth'} (models-dir)" in lineart, result.stdout
    assert next(line for line in lines if line.startswith("depth ")).endswith("missing"), result.stdout


@real_call("models-path", "models")
def _models_path(call: Call) -> None:
    folder = call.fixture("lineart_models")
    result = call.guides("models", "path", "lineart", "--models-dir", folder, code=0)
    assert result.stdout.strip() == str(folder / "sk_model.pth"), result.describe()


def _small_torch_checkpoint() -> bytes:
    """A zip-format torch file holding ``{"model": {...}}`` (the container of ``scannet.pt``)."""
    import torch

    buffer = io.BytesIO()
    torch.save({"model": {"weight": torch.arange(64, dtype=torch.float32)}}, buffer)
    return buffer.getvalue()


@real_call("models-verify", "models")
def _models_verify(call: Call) -> None:
    folder = call.tmp / "models"
    folder.mkdir()
    (folder / "scannet.pt").write_bytes(_small_torch_checkpoint())
    result = call.guides("models", "verify", "normals", "--models-dir", folder, code=0)
    assert result.stdout.strip() == f"normals: ok (archive CRC only) {folder / 'scannet.pt'}", result.describe()


@real_call("models-download", "models")
def _models_download(call: Call) -> None:
    from guides.weights.catalog import CHECKPOINTS

    entry = CHECKPOINTS["normals"]  # no recorded size or checksum: any torch file is accepted
    payload = _small_torch_checkpoint()
    call.hub.add(entry.repo, entry.filename, payload)
    result = call.guides("models", "download", "normals", code=0)
    name, _, path = result.stdout.strip().partition(": ")
    assert name == "normals" and Path(path).read_bytes() == payload, result.describe()
    assert Path(path).resolve().is_relative_to((call.tmp / "hf-home").resolve()), path  # into the hub cache
    assert len(call.hub.downloads()) == 1, call.hub.requests
    found = call.guides("models", "path", "normals", code=0)  # now found in the cache, offline or not
    assert found.stdout.strip() == path, found.describe()


@real_call("generate", "generate")
def _generate(call: Call) -> None:
    models = call.fixture("tiny_diffusion")
    photo = call.photo()
    cv2.imwrite(str(call.tmp / "edges.png"), cv2.Canny(cv2.imread(str(photo)), 100, 200))
    call.guides("generate", call.tmp / "edges.png", "--control", "canny", "-o", call.tmp / "image.png",
                "--width", "64", "--height", "64", "--steps", "2", "--device", "cpu", "-q", *models.args("canny"),
                code=0)
    image = Image.open(call.tmp / "image.png")
    assert image.mode == "RGB" and image.size == (64, 64)
    sidecar = json.loads((call.tmp / "image.json").read_text())
    assert (sidecar["settings"]["steps"], sidecar["settings"]["width"]) == (2, 64), sidecar["settings"]


@real_call("reproduce", "reproduce")
def _reproduce(call: Call) -> None:
    """Our canny guide of a small photo through the tiny models: random weights cannot reproduce the
    expected image, so the run completes, reports the failed comparison and exits 1."""
    models = call.fixture("tiny_diffusion")
    refs = call.tmp / "refs"
    save_photo(refs / "cutecat_init.png", blocks_photo())
    rng = np.random.default_rng(5)
    save_photo(refs / "expected_controlnet_canny.png", rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    out = call.tmp / "repro"
    call.guides("reproduce", "--refs", refs, "--out", out, "--only", "canny", "--device", "cpu", "-q",
                *models.args("canny"), code=1)
    report = json.loads((out / "report.json").read_text())
    (row,) = report["results"]
    assert row["kind"] == "canny" and row["passed"] is False and math.isfinite(row["metrics"]["psnr"]), row
    assert Image.open(out / "generated_canny.png").size == (512, 512)


@real_call("compare", "compare")
def _compare(call: Call) -> None:
    first, second = blocks_photo(seed=1), blocks_photo(seed=2)
    save_photo(call.tmp / "a.png", first)
    save_photo(call.tmp / "b.png", second)
    result = call.guides("compare", call.tmp / "a.png", call.tmp / "b.png", "--json", code=0)
    metrics = json.loads(result.stdout)
    mse = np.mean((first.astype(np.float64) / 255 - second.astype(np.float64) / 255) ** 2)
    assert metrics["psnr"] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3), metrics
    assert 0 < metrics["ssim"] < 1, metrics


def test_every_command_and_models_subcommand_has_a_real_call() -> None:
    assert sorted({command for command, _ in REAL_CALLS.values()}) == sorted(EXPECTED_COMMANDS)
    assert sorted(i.removeprefix("models-") for i in REAL_CALLS if i.startswith("models-")) == sorted(MODELS_SUBCOMMANDS)
    assert {"dataset-parquet", "dataset-webdataset"} <= set(REAL_CALLS)


@pytest.mark.parametrize("call_id", list(REAL_CALLS))
def test_real_call(call_id: str, console_script: Path, hub: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """One real call of the command: its exit code and outputs, no bug on stderr, and (but for
    ``models download``) nothing asked of the hub: missing weights never start a download unasked."""
    work = tmp_path / "work dir"  # a space in every path
    work.mkdir()
    _, function = REAL_CALLS[call_id]
    function(Call(work, console_script, hub, request))
    if call_id != "models-download":
        assert model_requests(hub) == [], model_requests(hub)
