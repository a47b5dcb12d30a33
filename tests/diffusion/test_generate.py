"""``guides generate`` end to end through the CLI on tiny random models (CPU), plus its pieces.

Random weights prove the wiring (settings reach the pipeline, the ControlNets and their scales act,
seeds and latents are reproducible), not image quality.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from guides.diffusion.generate import Latents, load_latents, save_latents
from guides.errors import UsageError
from PIL import Image

#: The settings of the expected images, as CONTEXT.md states them (written out, not imported).
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

SMALL = ("--width", "64", "--height", "64", "--steps", "3", "--device", "cpu", "-q")


@pytest.fixture(scope="module")
def guide_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A canny-like L guide and a depth-like RGBA guide (512x512)."""
    folder = tmp_path_factory.mktemp("guides")
    rng = np.random.default_rng(5)
    edges = (rng.random((512, 512)) > 0.9).astype(np.uint8) * 255
    Image.fromarray(edges, "L").save(folder / "edges.png")
    ramp = np.tile(np.linspace(0, 255, 512).astype(np.uint8)[None, :], (512, 1))
    Image.fromarray(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 255)]), "RGBA").save(folder / "depth.png")
    return {"canny": folder / "edges.png", "depth": folder / "depth.png"}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_defaults_are_the_reference_settings_and_the_sidecar_records_everything(
    tiny_models, guide_files, guides_cli, tmp_path: Path
) -> None:
    out = tmp_path / "cat.png"
    result = guides_cli("generate", guide_files["canny"], "--control", "canny", "-o", out, "--device", "cpu", "-q",
                        *tiny_models.args("canny"))
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    assert image.size == (512, 512) and image.mode == "RGB"
    assert np.asarray(image).std() > 1.0  # not a blank image
    record = json.loads((tmp_path / "cat.json").read_text())
    assert record["settings"] == CONTEXT_SETTINGS
    assert record["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert record["scheduler"]["built_from"] == "PNDMScheduler"
    # from_config(pipe.scheduler.config) of SD 1.5's PNDM config: the published betas carry over.
    config = record["scheduler"]["config"]
    assert (config["beta_start"], config["beta_end"], config["beta_schedule"], config["steps_offset"]) == (
        0.00085, 0.012, "scaled_linear", 1)
    [control] = record["controls"]
    assert control["kind"] == "canny" and control["scale"] == 0.5
    assert control["controlnet"]["path"] == str(tiny_models.controlnets["canny"])
    assert control["guide"]["source"] == str(guide_files["canny"].resolve()) and control["guide"]["resized_to"] is None
    assert record["base_model"]["path"] == str(tiny_models.base) and record["base_model"]["source"] == "local-folder"
    assert record["latents"] == {**record["latents"], "source": "seed", "seed": 2, "drawn_on": "cpu", "shape": [1, 4, 64, 64]}
    assert record["dtype"] == "float32" and record["device"]["type"] == "cpu"
    for library in ("torch", "diffusers", "transformers", "piq", "python"):
        assert record["libraries"][library], library
    assert record["output"]["width"] == 512 and len(record["output"]["sha256"]) == 64
    # The weight files actually loaded, with their sha256 (of the bytes on disk).
    expected_files = [tiny_models.base / "vae" / "diffusion_pytorch_model.safetensors",
                      tiny_models.base / "unet" / "diffusion_pytorch_model.safetensors",
                      tiny_models.base / "text_encoder" / "model.safetensors"]
    assert record["base_model"]["loaded_files"] == [_described(path) for path in expected_files]
    assert control["controlnet"]["loaded_files"] == [
        _described(tiny_models.controlnets["canny"] / "diffusion_pytorch_model.safetensors")]


def _described(path: Path) -> dict:
    data = path.read_bytes()
    return {"file": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_the_recorded_weight_file_is_the_one_loaded(tiny_models, tmp_path: Path) -> None:
    """A ControlNet folder holding both forms: safetensors is loaded and recorded; without it the .bin
    (other weights) is loaded and recorded. The record is checked against the loaded parameters."""
    from diffusers import ControlNetModel
    from guides.diffusion.generate import ControlNetGenerator
    from guides.diffusion.models import locate_model
    from safetensors.torch import load_file

    folder = tmp_path / "both-forms"
    shutil.copytree(tiny_models.controlnets["canny"], folder)
    other = ControlNetModel.from_pretrained(tiny_models.controlnets["depth"], low_cpu_mem_usage=False).state_dict()
    torch.save(other, folder / "diffusion_pytorch_model.bin")
    base = locate_model("base", str(tiny_models.base))
    safetensors_file = folder / "diffusion_pytorch_model.safetensors"
    stored = load_file(str(safetensors_file))
    for expected_file, weights in ((safetensors_file, stored), (folder / "diffusion_pytorch_model.bin", other)):
        generator = ControlNetGenerator(base, {"canny": locate_model("controlnet", str(folder), "canny")}, "cpu")
        assert generator.loaded_files("canny") == [_described(expected_file)]
        loaded = generator.controlnet("canny").state_dict()
        assert all(torch.equal(loaded[name], weights[name]) for name in weights), expected_file
        safetensors_file.unlink(missing_ok=True)
    assert not torch.equal(stored["controlnet_mid_block.weight"], other["controlnet_mid_block.weight"])


def test_weight_files_follow_the_libraries_preference(tmp_path: Path) -> None:
    from guides.diffusion.models import weight_files

    assert weight_files(tmp_path) == ((), None)
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"x")
    assert weight_files(tmp_path) == ((tmp_path / "diffusion_pytorch_model.bin",), False)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "part-2.safetensors", "b": "part-1.safetensors",
                                                "c": "part-2.safetensors"}}))
    assert weight_files(tmp_path) == ((index, tmp_path / "part-1.safetensors", tmp_path / "part-2.safetensors"), True)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert weight_files(tmp_path, "transformers") == ((tmp_path / "model.safetensors",), True)


def test_loading_the_base_model_prints_nothing(tiny_models, capfd: pytest.CaptureFixture[str]) -> None:
    """The published SD 1.5 tokenizer files (AddedToken objects with "__type") load without the tokenizers
    library's "Ignored unknown kwarg option __type" lines on stdout, and tokenize as transformers does."""
    from guides.diffusion.models import load_base
    from transformers import CLIPTokenizer

    base = load_base(tiny_models.base, torch.device("cpu"), torch.float32)
    captured = capfd.readouterr()
    assert captured.out == "" and "Ignored" not in captured.err, captured
    plain = CLIPTokenizer.from_pretrained(tiny_models.base / "tokenizer")
    prompt = "a cute cat, detailed high-quality professional image"
    assert base.tokenizer(prompt).input_ids == plain(prompt).input_ids
    assert base.tokenizer.special_tokens_map == plain.special_tokens_map
    assert base.tokenizer.added_tokens_decoder == plain.added_tokens_decoder


def _reference_recipe(tiny_models, kinds: list[str], guides: list[Image.Image], scales: list[float]) -> np.ndarray:
    """How the expected images were made (REFERENCE_NOTES.md + CONTEXT.md), written out with plain
    diffusers: from_pretrained, DPM-Solver from the pipeline's scheduler config, global seed 2, no
    generator, the guide size deciding the output size."""
    from diffusers import ControlNetModel, DPMSolverMultistepScheduler, StableDiffusionControlNetPipeline

    nets = [ControlNetModel.from_pretrained(tiny_models.controlnets[kind], low_cpu_mem_usage=False) for kind in kinds]
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_models.base, controlnet=nets[0] if len(nets) == 1 else nets, dtype=torch.float32,  # torch_dtype then
        safety_checker=None, requires_safety_checker=False, low_cpu_mem_usage=False,
    )
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(2)
    output = pipe(
        prompt="a cute cat, detailed high-quality professional image",
        negative_prompt="lowres, bad anatomy, bad hands, cropped, worst quality",
        image=guides[0] if len(guides) == 1 else guides,
        num_inference_steps=30,
        guidance_scale=7.5,
        controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
    )
    return np.asarray(output.images[0])


def test_generate_equals_the_reference_recipe_in_plain_diffusers(tiny_models, guides_cli, tmp_path: Path) -> None:
    """Bit for bit on the CPU (where the global seed and our seeded generator draw the same noise), for
    one ControlNet and for the stack: our settings, scheduler, latents and guide handling are theirs."""
    rng = np.random.default_rng(9)
    edges = Image.fromarray((rng.random((64, 64)) > 0.85).astype(np.uint8) * 255, "L")
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[:, None], (1, 64))
    depth = Image.fromarray(np.dstack([ramp, ramp, ramp, np.full_like(ramp, 255)]), "RGBA")
    edges.save(tmp_path / "edges.png")
    depth.save(tmp_path / "depth.png")
    small = ("--width", "64", "--height", "64", "--device", "cpu", "-q")
    single = guides_cli("generate", tmp_path / "edges.png", "--control", "canny", *small, "-o", tmp_path / "one.png",
                        *tiny_models.args("canny"))
    assert single.exit_code == 0, single.output
    stack = guides_cli("generate", tmp_path / "depth.png", tmp_path / "edges.png", "--control", "depth", "--control",
                       "canny", "--scale", "0.3", "--scale", "0.7", *small, "-o", tmp_path / "stack.png",
                       *tiny_models.args("canny", "depth"))
    assert stack.exit_code == 0, stack.output
    expected_single = _reference_recipe(tiny_models, ["canny"], [edges], [0.5])
    expected_stack = _reference_recipe(tiny_models, ["depth", "canny"], [depth, edges], [0.3, 0.7])
    for name, expected in (("one", expected_single), ("stack", expected_stack)):
        ours = _pixels(tmp_path / f"{name}.png")
        difference = np.abs(ours.astype(int) - expected.astype(int))
        assert difference.max() == 0, (name, int(difference.max()), int((difference > 0).sum()))
    assert not np.array_equal(expected_single, expected_stack)


@pytest.mark.parametrize("kind, repo", [
    ("softedge", "lllyasviel/control_v11p_sd15_softedge"),
    ("scribble", "lllyasviel/control_v11p_sd15_scribble"),
    ("mlsd", "lllyasviel/control_v11p_sd15_mlsd"),
    ("lineart-anime", "lllyasviel/control_v11p_sd15s2_lineart_anime"),
])
def test_the_line_kinds_generate_with_their_controlnet(tiny_models, guide_files, guides_cli, tmp_path: Path,
                                                       kind: str, repo: str) -> None:
    """Each ControlNet the soft-edge and line annotators declare is a kind of ``generate``: its declared
    hub id is the default, and the tiny one given with ``--controlnet`` changes the image (the ControlNet
    is used, not ignored: scale 0 gives another image)."""
    from guides.diffusion.settings import CONTROLNET_MODELS

    assert CONTROLNET_MODELS[kind] == repo
    args = (guide_files["canny"], "--control", kind, *SMALL, *tiny_models.args(kind))
    used = guides_cli("generate", *args, "-o", tmp_path / "used.png")
    assert used.exit_code == 0, used.output
    off = guides_cli("generate", *args, "--scale", "0", "-o", tmp_path / "off.png")
    assert off.exit_code == 0, off.output
    assert np.abs(_pixels(tmp_path / "used.png").astype(int) - _pixels(tmp_path / "off.png")).mean() > 0.5
    record = json.loads((tmp_path / "used.json").read_text())
    assert [(c["kind"], c["controlnet"]["path"]) for c in record["controls"]] == [(kind, str(tiny_models.controlnets[kind]))]


def test_same_seed_same_image_other_seed_other_image(tiny_models, guide_files, guides_cli, tmp_path: Path) -> None:
    args = (guide_files["canny"], "--control", "canny", *SMALL, *tiny_models.args("canny"))
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        result = guides_cli("generate", *args, "--seed", seed, "-o", tmp_path / f"{name}.png")
        assert result.exit_code == 0, result.output
    a, b, c = (_pixels(tmp_path / f"{name}.png") for name in "abc")
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 1.0, "another seed must give another image"


def test_a_stack_uses_both_controlnets_with_their_scales(tiny_models, guide_files, guides_cli, tmp_path: Path) -> None:
    common = (*SMALL, *tiny_models.args("canny", "depth"))
    stack = ("generate", guide_files["depth"], guide_files["canny"], "--control", "depth", "--control", "canny")
    runs = {
        "stack": (*stack, "--scale", "0.3", "--scale", "0.7"),
        "depth-off": (*stack, "--scale", "0", "--scale", "0.7"),
        "canny-only": ("generate", guide_files["canny"], "--control", "canny", "--scale", "0.7"),
        "stack-swapped-scales": (*stack, "--scale", "0.7", "--scale", "0.3"),
    }
    for name, args in runs.items():
        result = guides_cli(*args, *common, "-o", tmp_path / f"{name}.png")
        assert result.exit_code == 0, result.output
    images = {name: _pixels(tmp_path / f"{name}.png").astype(int) for name in runs}
    # MultiControlNet sums scaled residuals: depth at scale 0 adds exactly nothing...
    assert np.array_equal(images["depth-off"], images["canny-only"])
    # ...and at 0.3 it changes the image; the scales go to their own ControlNet, in order.
    assert np.abs(images["stack"] - images["canny-only"]).mean() > 0.5
    assert np.abs(images["stack"] - images["stack-swapped-scales"]).mean() > 0.5
    record = json.loads((tmp_path / "stack.json").read_text())
    assert [(c["kind"], c["scale"], c["controlnet"]["path"]) for c in record["controls"]] == [
        ("depth", 0.3, str(tiny_models.controlnets["depth"])),
        ("canny", 0.7, str(tiny_models.controlnets["canny"])),
    ]


def test_saved_latents_replay_the_image_whatever_the_seed(tiny_models, guide_files, guides_cli, tmp_path: Path) -> None:
    args = (guide_files["canny"], "--control", "canny", *SMALL, *tiny_models.args("canny"))
    first = guides_cli("generate", *args, "-o", tmp_path / "first.png", "--save-latents", tmp_path / "noise.safetensors")
    assert first.exit_code == 0, first.output
    replay = guides_cli("generate", *args, "--seed", "999", "--latents", tmp_path / "noise.safetensors",
                        "-o", tmp_path / "replay.png")
    assert replay.exit_code == 0, replay.output
    assert np.array_equal(_pixels(tmp_path / "first.png"), _pixels(tmp_path / "replay.png"))
    first_record = json.loads((tmp_path / "first.json").read_text())["latents"]
    replay_record = json.loads((tmp_path / "replay.json").read_text())["latents"]
    assert replay_record["source"] == "file" and replay_record["sha256"] == first_record["sha256"]
    # Wrong shape: refused before generating, naming both shapes.
    wrong = guides_cli("generate", *args, "--width", "128", "--latents", tmp_path / "noise.safetensors",
                       "-o", tmp_path / "wrong.png")
    assert wrong.exit_code == 2 and "(1, 4, 8, 8)" in wrong.stderr and "(1, 4, 8, 16)" in wrong.stderr, wrong.output
    assert not (tmp_path / "wrong.png").exists()


def test_latent_file_formats_round_trip_and_pickles_are_refused(tmp_path: Path) -> None:
    tensor = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    latents = Latents(tensor, "seed", seed=0, drawn_on="cpu")
    for suffix in (".safetensors", ".pt", ".npy"):
        path = save_latents(latents, tmp_path / f"noise{suffix}")
        loaded = load_latents(path)
        assert torch.equal(loaded.tensor, tensor) and loaded.sha256 == latents.sha256, suffix
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"latents": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(UsageError, match="cannot read latents"):
        load_latents(tmp_path / "evil.pt")
    assert not marker.exists()
    np.save(tmp_path / "ints.npy", np.zeros((1, 4, 8, 8), np.int64))
    with pytest.raises(UsageError, match="floating point"):
        load_latents(tmp_path / "ints.npy")
    with pytest.raises(UsageError, match="must be a"):
        load_latents(tmp_path / "noise.txt")


def test_bf16_and_fp16_run_on_the_cpu(tiny_models, guide_files, guides_cli, tmp_path: Path) -> None:
    for precision, dtype in (("bf16", "bfloat16"), ("fp16", "float16")):
        out = tmp_path / f"{precision}.png"
        result = guides_cli("generate", guide_files["canny"], "--control", "canny", *SMALL, "--steps", "2",
                            "--precision", precision, "-o", out, *tiny_models.args("canny"))
        assert result.exit_code == 0, result.output
        record = json.loads(out.with_suffix(".json").read_text())
        assert record["dtype"] == dtype and record["settings"]["precision"] == precision
        # The latents are drawn in float32 whatever the precision: the same noise as fp32.
        fp32_noise = Latents(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)), "seed")
        assert record["latents"]["shape"] == [1, 4, 8, 8] and record["latents"]["sha256"] == fp32_noise.sha256


def test_usage_errors_are_one_line_and_exit_2(tiny_models, guide_files, guides_cli, tmp_path: Path) -> None:
    guide = guide_files["canny"]
    cases = [
        ((guide, guide, "--control", "canny"), "2 guide(s) but 1 --control"),
        ((guide, "--control", "canny", "--scale", "0.5", "--scale", "0.5"), "1 guide(s) but 2 --scale"),
        ((guide, "--control", "canny", "--width", "100"), "width must be a positive multiple of 8"),
        ((guide, "--control", "canny", "--controlnet", "canny"), "expected KIND=ID_OR_PATH"),
        ((guide, "--control", "canny", "--controlnet", "pose=x/y"), "unknown kind 'pose'"),
        ((guide, "--control", "canny", "--device", "cuda:7"), "cuda"),
    ]
    for args, message in cases:
        device = () if "--device" in args else ("--device", "cpu")
        result = guides_cli("generate", *args, "-o", tmp_path / "x.png", "-q", *device, *tiny_models.args("canny"))
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr and "Traceback" not in result.output, (message, result.stderr)
    assert not (tmp_path / "x.png").exists()


def test_missing_models_fail_fast_listing_every_one(guide_files, guides_cli, offline_hub: Path, tmp_path: Path) -> None:
    result = guides_cli("generate", guide_files["depth"], guide_files["canny"], "--control", "depth", "--control",
                        "canny", "-o", tmp_path / "x.png", "-q", "--device", "cpu")
    assert result.exit_code == 2, result.output
    message = result.stderr
    assert "3 models are missing, nothing was run" in message, message
    for repo in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11f1p_sd15_depth",
                 "lllyasviel/control_v11p_sd15_canny"):
        assert repo in message, (repo, message)
    assert "guides models download" in message and "HF_HUB_OFFLINE" in message
    assert not (tmp_path / "x.png").exists()


def test_missing_weights_never_download_unasked_and_fail_fast_offline(
    tiny_models, guide_files, guides_cli, offline_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --download no download is tried even online: one line naming the model, exit 2. With
    --download under HF_HUB_OFFLINE=1: one line at once, no hub call either."""
    import huggingface_hub

    calls: list[str] = []

    def no_network(*args: object, **kwargs: object) -> None:
        calls.append(f"{args} {kwargs}")
        raise AssertionError("the hub was called")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, no_network)
    args = ("generate", guide_files["canny"], "--control", "canny", "-o", tmp_path / "x.png", "-q", "--device", "cpu",
            "--base-model", tiny_models.base)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online as far as we can tell (the hub calls fail if made)
    unasked = guides_cli(*args)
    assert unasked.exit_code == 2, unasked.output
    [line] = unasked.stderr.splitlines()
    assert line.startswith("error: nothing was run: diffusers model lllyasviel/control_v11p_sd15_canny is not "
                           "available") and "guides models download controlnet-canny" in line, line
    assert line.endswith("(or pass --download)") and "HF_HUB_OFFLINE" not in line, line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    offline = guides_cli(*args, "--download")
    seconds = time.perf_counter() - started
    assert offline.exit_code == 2, offline.output
    [line] = offline.stderr.splitlines()
    assert "lllyasviel/control_v11p_sd15_canny" in line and "HF_HUB_OFFLINE is set" in line, line
    assert seconds < 2.0, seconds
    assert calls == [] and not (tmp_path / "x.png").exists()


def test_help_and_import_do_not_load_torch() -> None:
    code = (
        "import sys\n"
        "from guides.cli.main import cli\n"
        "for name in ('generate', 'reproduce', 'compare'):\n"
        "    try:\n"
        "        cli.main([name, '--help'], prog_name='guides', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "import guides.diffusion.settings, guides.diffusion.compare, guides.diffusion.reproduce, guides.diffusion.report\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'DIFFUSERS' if 'diffusers' in sys.modules else 'NO-DIFFUSERS')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--control [canny|depth|lineart|normals|sam|scribble|softedge|mlsd|lineart-anime|openpose|tile|shuffle]" in run.stdout
    words = " ".join(run.stdout.split())
    assert "[default: a cute cat, detailed high-quality professional image]" in words  # defaults shown
    assert "[default: 2;" in words and "[default: 30;" in words and "[default: 7.5;" in words
    assert run.stdout.strip().endswith("NO-TORCH NO-DIFFUSERS"), run.stdout[-300:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here): fp32/fp16 placement on CUDA")
@pytest.mark.parametrize("precision,dtype", [("fp32", "float32"), ("fp16", "float16")])
def test_cuda_generation(tiny_models, guide_files, guides_cli, tmp_path: Path, precision: str, dtype: str) -> None:
    out = tmp_path / "cuda.png"
    result = guides_cli("generate", guide_files["canny"], "--control", "canny", "--device", "cuda", "--precision",
                        precision, "--width", "64", "--height", "64", "--steps", "3", "-q", "-o", out,
                        "--save-latents", tmp_path / "cuda.safetensors", *tiny_models.args("canny"))
    assert result.exit_code == 0, result.output
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["device"]["type"] == "cuda" and record["dtype"] == dtype
    assert record["latents"]["drawn_on"].startswith("cuda")
    # CUDA draws differ from CPU draws: that is why --latents exists.
    cpu = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(load_latents(tmp_path / "cuda.safetensors").tensor, cpu)
    # The global-seed draw (what the reference did) equals our explicit generator draw on CUDA.
    torch.manual_seed(2)
    assert torch.equal(torch.randn(1, 4, 8, 8, device="cuda").cpu(), load_latents(tmp_path / "cuda.safetensors").tensor)
