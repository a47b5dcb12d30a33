"""``guides reproduce`` end to end through the CLI on tiny random models and a synthetic reference folder
(always runs), its dry-run plan checked field by field against CONTEXT.md, and fail-fast checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from guides.diffusion.compare import compare_files
from PIL import Image

CONTEXT_SETTINGS = {
    "prompt": "a cute cat, detailed high-quality professional image",
    "negative_prompt": "lowres, bad anatomy, bad hands, cropped, worst quality",
    "seed": 2,
    "steps": 30,
    "guidance": 7.5,
    "width": 512,
    "height": 512,
    "scheduler": "dpm-multistep",
    "scheduler_class": "DPMSolverMultistepScheduler",
    "precision": "fp32",
}
#: The ControlNets of the reference suite, as CONTEXT.md states them (written out, not imported): the
#: built-in annotators must declare exactly these (``test_declarations_are_the_reference_suites``).
CONTEXT_CONTROLNETS = {
    "canny": "lllyasviel/control_v11p_sd15_canny",
    "depth": "lllyasviel/control_v11f1p_sd15_depth",
    "lineart": "lllyasviel/control_v11p_sd15_lineart",
    "normals": "lllyasviel/control_v11p_sd15_normalbae",
    "sam": "mfidabel/controlnet-segment-anything",
}
CONTEXT_SCALE = 0.5
#: The SD 1.5 kinds of the soft-edge and line annotators (issue 14), in registry order: generated with, not
#: reproduced (the reference folder has no image of them).
LINE_KINDS = ("scribble", "softedge", "mlsd", "lineart-anime", "openpose", "tile", "shuffle")


def declared_controlnets() -> dict[str, str]:
    """Reference kind -> the hub id of the ControlNet its annotator declares first."""
    from guides.diffusion.settings import CONTROLNET_MODELS, reference_kinds

    return {kind: CONTROLNET_MODELS[kind] for kind in reference_kinds()}


def test_declarations_are_the_reference_suites() -> None:
    """The reference kinds (built-in annotators declaring a ControlNet) are CONTEXT.md's, in its order, each
    with CONTEXT's ControlNet at scale 0.5; the stack is depth 0.3 + canny 0.7."""
    from guides.diffusion.settings import REFERENCE_CONTROLS, controlnet_scale, reproduce_kinds

    assert declared_controlnets() == CONTEXT_CONTROLNETS
    assert list(declared_controlnets()) == list(CONTEXT_CONTROLNETS)
    assert reproduce_kinds() == (*CONTEXT_CONTROLNETS, "stack")
    for kind in CONTEXT_CONTROLNETS:
        assert controlnet_scale(kind) == CONTEXT_SCALE and REFERENCE_CONTROLS[kind] == ((kind, CONTEXT_SCALE),)
    assert REFERENCE_CONTROLS["stack"] == (("depth", 0.3), ("canny", 0.7))


def test_every_reference_kind_has_a_reference_guide_and_an_expected_image(refs: Path) -> None:
    """On the real reference folder (GUIDES_REFS): a built-in annotator that declares a ControlNet is reproduced,
    so the folder must hold its stored guide and expected generation (and the stack's)."""
    from guides.diffusion.settings import expected_file, reference_guide_file, reference_kinds, reproduce_kinds

    missing = [name for name in [*map(reference_guide_file, reference_kinds()), *map(expected_file, reproduce_kinds())]
               if not (refs / name).is_file()]
    assert missing == [], missing


def test_guide_checkpoints_are_what_each_annotator_selects_by_default() -> None:
    from guides.diffusion.settings import GUIDE_CHECKPOINTS, control_kinds, kind_annotator
    from guides.registry import get
    from guides.weights.catalog import CHECKPOINTS

    assert list(GUIDE_CHECKPOINTS) == list(control_kinds())
    assert kind_annotator("softedge") == "hed" and kind_annotator("scribble") == "hed"
    for kind, names in GUIDE_CHECKPOINTS.items():
        cls = get(kind_annotator(kind)).annotator_class()
        assert names == cls.checkpoint_names(cls.Options()) and all(name in CHECKPOINTS for name in names), kind


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _check_metrics_equal_compare(report: dict, guides_cli) -> None:
    """Each row's metrics are finite and equal what `guides compare --json` says on the same files."""
    for row in report["results"]:
        metrics = row["metrics"]
        assert np.isfinite(metrics["psnr"]) and np.isfinite(metrics["ssim"]), row
        result = guides_cli("compare", row["generated"], row["expected"], "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == metrics, (row["kind"], metrics, result.stdout)
        # Random models cannot reproduce the expected images: the run must say so, not pass.
        assert row["passed"] is False and metrics["psnr"] < 35, metrics


def test_reference_guides_stack_end_to_end(tiny_models, synthetic_refs: Path, guides_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", out, "--guides", "reference", "--only", "stack",
                        "--device", "cpu", "-q", *tiny_models.args("canny", "depth"))
    assert result.exit_code == 1, result.output  # ran, and (random weights) did not pass
    assert "stack" in result.stdout and "0 of 1 passed" in result.stdout, result.stdout
    report = _report(out)
    assert report["summary"] == {"passed": 0, "total": 1, "all_passed": False, "kinds": ["stack"]}
    assert report["settings"] == CONTEXT_SETTINGS
    assert report["thresholds"] == {"psnr": 35.0, "ssim": 0.98}
    [row] = report["results"]
    assert [(c["kind"], c["scale"]) for c in row["controls"]] == [("depth", 0.3), ("canny", 0.7)]
    assert row["controls"][0]["guide"] == str(synthetic_refs / "cutecat_guide_depth.png")
    _check_metrics_equal_compare(report, guides_cli)
    sidecar = json.loads((out / "generated_stack.json").read_text())
    assert sidecar["settings"] == CONTEXT_SETTINGS
    assert [(c["kind"], c["scale"], c["controlnet"]["path"]) for c in sidecar["controls"]] == [
        ("depth", 0.3, str(tiny_models.controlnets["depth"])), ("canny", 0.7, str(tiny_models.controlnets["canny"]))]
    assert sidecar["reproduce"]["expected"] == str(synthetic_refs / "expected_controlnet_stack.png")
    # The weight files loaded, with sha256, in the report as in each sidecar.
    depth_file = tiny_models.controlnets["depth"] / "diffusion_pytorch_model.safetensors"
    assert report["models"]["controlnets"]["depth"]["loaded_files"] == sidecar["controls"][0]["controlnet"]["loaded_files"] == [
        {"file": str(depth_file), "size": depth_file.stat().st_size, "sha256": hashlib.sha256(depth_file.read_bytes()).hexdigest()}]
    assert report["models"]["base"]["loaded_files"] == sidecar["base_model"]["loaded_files"]
    assert [entry["file"] for entry in report["models"]["base"]["loaded_files"]] == [
        str(tiny_models.base / "vae" / "diffusion_pytorch_model.safetensors"),
        str(tiny_models.base / "unet" / "diffusion_pytorch_model.safetensors"),
        str(tiny_models.base / "text_encoder" / "model.safetensors")]
    # The latents are saved for replay and are the seed-2 draw on this device.
    saved = out / "latents.safetensors"
    from guides.diffusion.generate import load_latents

    expected_noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(load_latents(saved).tensor, expected_noise)
    assert report["latents"]["sha256"] == sidecar["latents"]["sha256"]
    # The difference image is |generated - expected| * 4.
    generated = np.asarray(Image.open(out / "generated_stack.png").convert("RGB")).astype(int)
    expected = np.asarray(Image.open(synthetic_refs / "expected_controlnet_stack.png").convert("RGB")).astype(int)
    difference = np.asarray(Image.open(out / "difference_stack.png").convert("RGB")).astype(int)
    assert np.array_equal(difference, np.clip(np.abs(generated - expected) * 4, 0, 255))
    # Contact sheet: a header and one row, five columns of 192 px after the label column.
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.mode == "RGB" and sheet.height == 28 + 192 and sheet.width > 5 * 192
    markdown = (out / "report.md").read_text()
    assert "| stack | depth 0.3 + canny 0.7 |" in markdown and f"{row['metrics']['psnr']:.2f}" in markdown
    assert "drawn on cpu" in markdown and "cannot match" in markdown  # the CUDA RNG caveat is stated
    assert "lineart" not in report["models"]["controlnets"]  # only the needed ControlNets are loaded


def test_our_canny_guide_end_to_end_and_identical_to_the_reference(
    tiny_models, synthetic_refs: Path, guides_cli, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", out, "--only", "canny", "--device", "cpu",
                        "-q", *tiny_models.args("canny"))
    assert result.exit_code == 1, result.output
    report = _report(out)
    assert report["guides"] == "ours"
    comparison = report["guide_comparison"]["canny"]
    assert comparison["identical"] is True and comparison["metrics"]["differing_pixels"] == 0, comparison
    assert comparison["loaded_files"] == []  # canny loads no checkpoint
    ours = np.asarray(Image.open(out / "guides" / "canny.png"))
    reference = np.asarray(Image.open(synthetic_refs / "cutecat_guide_canny.png"))
    assert ours.shape == (512, 512) and np.array_equal(ours, reference)
    _check_metrics_equal_compare(report, guides_cli)
    # Our guide equals the reference guide, so the generation equals one from the reference guide.
    again = tmp_path / "again"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", again, "--only", "canny", "--guides",
                        "reference", "--device", "cpu", "-q", *tiny_models.args("canny"))
    assert result.exit_code == 1, result.output
    assert compare_files(out / "generated_canny.png", again / "generated_canny.png").differing_pixels == 0


def test_real_refs_our_canny_guide_is_bit_exact(refs: Path, tmp_path: Path) -> None:
    """On the real reference folder (GUIDES_REFS): the plan finds every file and our canny guide is exact."""
    from guides.diffusion.reproduce import Progress, ReproduceOptions, _make_guides, guide_plan

    options = ReproduceOptions(refs=refs, out=tmp_path, kinds=("canny",), device="cpu")
    guides, comparison, photo = _make_guides(options, guide_plan(options), Progress())
    assert comparison["canny"]["metrics"]["differing_pixels"] == 0, comparison
    assert photo is not None and photo.shape == (512, 512, 3)


def test_dry_run_plan_matches_context_field_by_field(synthetic_refs: Path, offline_hub: Path, guides_cli,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "never-created"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", out, "--dry-run", "--guides", "reference")
    # Nothing is on this machine: the whole plan is still printed, then one line, and exit 2.
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == ['error: 9 things a run needs are missing (the plan\'s "blocking" list); '
                                          "a real run would refuse"], result.stderr
    plan = json.loads(result.stdout)
    assert plan["ready"] is False and plan["download"] is False and plan["blocking"] == plan["missing"]
    assert plan["settings"] == CONTEXT_SETTINGS
    assert plan["kinds"] == [*CONTEXT_CONTROLNETS, "stack"]
    assert plan["thresholds"] == {"psnr": 35.0, "ssim": 0.98}
    assert plan["precision"] == "fp32" and plan["device"] == "auto" and plan["guides"] == "reference"
    assert plan["latents"] == {"source": "seed", "seed": 2, "drawn_on": "the generating device"}
    assert plan["models"]["base"]["id"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert {kind: m["id"] for kind, m in plan["models"]["controlnets"].items()} == CONTEXT_CONTROLNETS
    runs = {run["kind"]: run for run in plan["runs"]}
    for kind in CONTEXT_CONTROLNETS:
        assert runs[kind]["controls"] == [{"kind": kind, "scale": CONTEXT_SCALE, "controlnet": CONTEXT_CONTROLNETS[kind]}]
        assert runs[kind]["expected"] == str(synthetic_refs / f"expected_controlnet_{kind}.png")
        assert plan["guide_sources"][kind] == {"source": "file", "path": str(synthetic_refs / f"cutecat_guide_{kind}.png")}
    assert runs["stack"]["controls"] == [
        {"kind": "depth", "scale": 0.3, "controlnet": CONTEXT_CONTROLNETS["depth"]},
        {"kind": "canny", "scale": 0.7, "controlnet": CONTEXT_CONTROLNETS["canny"]},
    ]
    assert plan["outputs"]["report_json"] == str(out / "report.json")
    assert plan["outputs"]["runs"]["stack"]["image"] == str(out / "generated_stack.png")
    # Nothing is on this machine: every model is reported missing, and the lineart/normals/sam guides too.
    assert not plan["models"]["base"]["found"] and len(plan["missing"]) == 6 + 3, plan["missing"]
    assert not out.exists()


def test_dry_run_resolves_hub_cache_and_local_folders_without_loading(tiny_models, synthetic_refs: Path,
                                                                        offline_hub: Path, tmp_path: Path) -> None:
    """A ControlNet in the hub cache layout is found by its hub id, with its revision; nothing imports torch."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = offline_hub / "models--lllyasviel--control_v11p_sd15_canny"
    shutil.copytree(tiny_models.controlnets["canny"], repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    code = (
        "import json, sys\n"
        "from guides.cli.main import main\n"
        f"try:\n    main(['reproduce', '--refs', {str(synthetic_refs)!r}, '--out', {str(tmp_path / 'o')!r}, "
        f"'--dry-run', '--only', 'canny', '--guides', 'reference', '--base-model', {str(tiny_models.base)!r}])\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert run.returncode == 0, run.stderr
    text, _, marker = run.stdout.rpartition("}")
    plan = json.loads(text + "}")
    canny = plan["models"]["controlnets"]["canny"]
    assert canny["source"] == "hub-cache" and canny["revision"] == commit and canny["found"], canny
    assert plan["models"]["base"]["source"] == "local-folder" and plan["missing"] == [] and plan["ready"] is True
    assert marker.strip() == "NO-TORCH", run.stdout[-200:]


def test_dry_run_exits_2_for_missing_reference_files_and_0_when_everything_is_there(
    tiny_models, synthetic_refs: Path, offline_hub: Path, guides_cli, tmp_path: Path
) -> None:
    """Every model present (the tiny ones), one reference file missing: exit 2 naming it, the plan printed;
    the same with the file back: exit 0."""
    refs = tmp_path / "refs"
    shutil.copytree(synthetic_refs, refs)
    (refs / "expected_controlnet_canny.png").unlink()
    args = ("reproduce", "--refs", refs, "--out", tmp_path / "o", "--dry-run", "--only", "canny", "--guides",
            "reference", *tiny_models.args("canny"))
    missing = guides_cli(*args)
    assert missing.exit_code == 2, missing.output
    plan = json.loads(missing.stdout)
    assert plan["missing"] == [f"{refs / 'expected_controlnet_canny.png'}: reference file not found"], plan["missing"]
    assert plan["ready"] is False and plan["models"]["base"]["found"] and plan["models"]["controlnets"]["canny"]["found"]
    assert len(missing.stderr.splitlines()) == 1 and "1 thing a run needs is missing" in missing.stderr, missing.stderr
    shutil.copy(synthetic_refs / "expected_controlnet_canny.png", refs)
    present = guides_cli(*args)
    assert present.exit_code == 0 and present.stderr == "", present.output
    assert json.loads(present.stdout)["missing"] == [] and json.loads(present.stdout)["ready"] is True
    assert not (tmp_path / "o").exists()


def test_dry_run_with_download_counts_only_what_a_download_cannot_fetch(
    synthetic_refs: Path, offline_hub: Path, guides_cli, tmp_path: Path
) -> None:
    """With --download the missing models are what the real run would fetch: the plan lists them, exit 0;
    a missing reference file still exits 2. Nothing is downloaded by a dry run."""
    args = ("reproduce", "--out", tmp_path / "o", "--dry-run", "--only", "canny", "--guides", "reference", "--download")
    result = guides_cli(*args, "--refs", synthetic_refs)
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["download"] is True and plan["ready"] is True and plan["blocking"] == [], plan
    assert len(plan["missing"]) == 2 and "lllyasviel/control_v11p_sd15_canny" in plan["missing"][1], plan["missing"]
    assert list(offline_hub.iterdir()) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = guides_cli(*args, "--refs", empty)
    assert refused.exit_code == 2, refused.output
    refused_plan = json.loads(refused.stdout)
    assert refused_plan["blocking"] == [f"{empty / name}: reference file not found" for name in
                                        ("cutecat_guide_canny.png", "expected_controlnet_canny.png")], refused_plan
    assert "2 things a run needs are missing" in refused.stderr


def test_missing_models_fail_before_any_work(synthetic_refs: Path, offline_hub: Path, guides_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", out, "--guides", "reference", "--only",
                        "canny,stack", "--device", "cpu", "--controlnet", "depth=nobody/no-such-controlnet")
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert "3 models are missing, nothing was run" in message, message
    for repo in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11p_sd15_canny",
                 "nobody/no-such-controlnet"):
        assert repo in message, (repo, message)
    assert "Traceback" not in result.output and not out.exists()


def test_missing_reference_files_and_bad_kinds(tmp_path: Path, synthetic_refs: Path, guides_cli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = guides_cli("reproduce", "--refs", empty, "--out", tmp_path / "o", "--only", "canny")
    assert result.exit_code == 2, result.output
    assert "cutecat_init.png" in result.stderr and "expected_controlnet_canny.png" in result.stderr
    bad = guides_cli("reproduce", "--refs", synthetic_refs, "--out", tmp_path / "o", "--only", "pose")
    assert bad.exit_code == 2 and "unknown kind(s) pose" in bad.stderr, bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): CUDA latents draw")
def test_cuda_reproduction_draws_on_cuda(tiny_models, synthetic_refs: Path, guides_cli, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = guides_cli("reproduce", "--refs", synthetic_refs, "--out", out, "--guides", "reference", "--only",
                        "canny", "--device", "cuda", "-q", *tiny_models.args("canny"))
    assert result.exit_code == 1, result.output
    report = _report(out)
    assert report["latents"]["drawn_on"].startswith("cuda") and report["device"]["type"] == "cuda"
    assert not any("cannot match" in note for note in report["notes"])


# --------------------------------------------------------------------------- a plugin with a ControlNet

from guides.annotators.base import Annotator, AnnotatorOptions  # noqa: E402
from guides.weights.declarations import MB, ControlNet  # noqa: E402


class PluginEdges(Annotator):
    """A third-party annotator whose guide is meant for a ControlNet (as a plugin package would declare it)."""

    name = "plugin-edges"
    summary = "Edges from a plugin."
    Options = AnnotatorOptions
    controlnets = (ControlNet(repo="someone/controlnet-edges", licence="MIT", approx_size=1_450 * MB, scale=0.8),)

    def annotate(self, image):  # type: ignore[no-untyped-def]
        return image[:, :, 0]


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from guides import registry

    spec = registry.AnnotatorSpec("plugin-edges", f"{__name__}:PluginEdges", package="edges-plugin")
    monkeypatch.setattr(registry, "_plugin_entries", lambda: iter([spec]))
    registry.load_registry.cache_clear()
    yield
    registry.load_registry.cache_clear()


def test_a_plugins_controlnet_is_a_guide_kind_for_generate_but_not_reproduced(
        plugin, synthetic_refs: Path, offline_hub: Path, guides_cli, tmp_path: Path) -> None:
    from guides.diffusion.settings import CONTROLNET_MODELS, control_kinds, controlnet_scale, reproduce_kinds

    assert control_kinds() == (*CONTEXT_CONTROLNETS, *LINE_KINDS, "plugin-edges")
    assert CONTROLNET_MODELS["plugin-edges"] == "someone/controlnet-edges" and controlnet_scale("plugin-edges") == 0.8
    assert reproduce_kinds() == (*CONTEXT_CONTROLNETS, "stack")
    # generate accepts the plugin's kind (and fails later, on the missing models, exit 2 naming its ControlNet)
    guide = tmp_path / "edges.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(guide)
    result = guides_cli("generate", guide, "--control", "plugin-edges", "-o", tmp_path / "x.png", "--device", "cpu", "-q")
    assert result.exit_code == 2 and "someone/controlnet-edges" in result.stderr, result.output
    assert "Invalid value for '--control'" not in result.output
    refused = guides_cli("reproduce", "--refs", synthetic_refs, "--out", tmp_path / "o", "--only", "plugin-edges")
    assert refused.exit_code == 2 and "unknown kind(s) plugin-edges" in refused.stderr, refused.output
