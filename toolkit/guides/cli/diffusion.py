"""``guides generate``, ``guides reproduce`` and ``guides compare`` (the ControlNet stage).

Thin click layer over ``guides.diffusion``; torch, diffusers and piq are imported only when a command
runs, never for ``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from ..diffusion.settings import (
    BASE_MODEL,
    REFERENCE_SCALE,
    REFERENCE_SETTINGS,
    SCHEDULERS,
    GenerationSettings,
)
from ..errors import InputError, UsageError

REF = REFERENCE_SETTINGS


class _DerivedChoice(click.Choice):  # type: ignore[type-arg]
    """A ``click.Choice`` whose choices are computed when first needed (parsing, help), not at import:
    the guide kinds come from the registered annotators' declarations (``settings.control_kinds``)."""

    def __init__(self, choices: Any) -> None:
        self._compute = choices
        self.case_sensitive = True

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        """Computed on each use (the registry is read once per process; nothing is kept here)."""
        return tuple(self._compute())


def _control_kinds() -> tuple[str, ...]:
    from ..diffusion.settings import control_kinds

    return control_kinds()


class _DerivedHelpOption(click.Option):
    """A ``click.Option`` whose help text is computed when help is shown (``help_text()``), not at import."""

    def __init__(self, *args: Any, help_text: Any = None, **kwargs: Any) -> None:
        self._help_text = help_text
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def help(self) -> str | None:
        compute = getattr(self, "_help_text", None)
        return compute() if compute is not None else getattr(self, "_help", None)

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value


def _only_help() -> str:
    from ..diffusion.settings import reproduce_kinds

    return f"Only these kinds ({', '.join(reproduce_kinds())}); repeatable or comma-separated."


def _read_image(path: str) -> Any:
    """A file named on the command line of a single-output command: missing or unreadable is a usage
    error (exit 2, one line naming the file), as the exit codes in ``guides --help`` say."""
    from ..imaging import load_image

    try:
        return load_image(path)
    except InputError as error:
        raise UsageError(str(error)) from None


class _Bar:
    """A tqdm progress bar over denoising steps (on stderr), or nothing with --quiet."""

    def __init__(self, total: int, quiet: bool, description: str = "") -> None:
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr, dynamic_ncols=True)
        self._last: dict[str, int] = {}

    def phase(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description(text)

    def step(self, kind: str, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self._last.get(kind, 0))
        self._last[kind] = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _model_options(function: Any) -> Any:
    """Options shared by generate and reproduce: models, device, precision, latents."""
    decorators = [
        click.option("--base-model", default=BASE_MODEL, show_default=True,
                     help="Stable Diffusion 1.5: a hub id or a local diffusers folder."),
        click.option("--controlnet", "controlnet_overrides", multiple=True, metavar="KIND=ID_OR_PATH",
                     help="Use this ControlNet (hub id or local diffusers folder) for KIND; repeatable. "
                     "Defaults: the ControlNet each KIND's annotator declares (`guides models list` lists "
                     "them; `guides reproduce --dry-run` shows those a run uses)."),
        click.option("--models-dir", type=click.Path(file_okay=False, path_type=str), envvar="GUIDES_MODELS_DIR",
                     default=None, help="Folder holding model folders under their repo names [env: GUIDES_MODELS_DIR]."),
        click.option("--download", is_flag=True,
                     help="Download missing models from the hub first (default: fail listing them)."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=REF.precision,
                     show_default=True, help="The reference ran in fp32."),
        click.option("--latents", "latents_file", type=click.Path(dir_okay=False, path_type=str), default=None,
                     help="Initial latents (.safetensors/.pt/.npy) instead of drawing them from the seed: "
                     "reproduces a CUDA run on any device."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def _controlnet_ids(overrides: tuple[str, ...]) -> dict[str, str]:
    from ..diffusion.models import parse_controlnet_overrides
    from ..diffusion.settings import CONTROLNET_MODELS

    defaults = dict(CONTROLNET_MODELS)
    return {**defaults, **parse_controlnet_overrides(overrides, defaults)}


@click.command("generate", context_settings={"max_content_width": 100})
@click.argument("guides", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str))
@click.option("--control", "controls", multiple=True, required=True, type=_DerivedChoice(_control_kinds),
              help="The kind of each GUIDE, in order (one --control per GUIDE).")
@click.option("--scale", "scales", multiple=True, type=click.FloatRange(0.0, 10.0),
              help="Conditioning scale of each GUIDE, in order [default: its kind's reference scale, "
              f"{REFERENCE_SCALE} for the built-in kinds].")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output .png; the settings go to the .json beside it.")
@click.option("--prompt", default=REF.prompt, show_default=True)
@click.option("--negative-prompt", default=REF.negative_prompt, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=REF.seed, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), default=REF.steps, show_default=True)
@click.option("--guidance", type=click.FloatRange(0.0, 100.0), default=REF.guidance, show_default=True)
@click.option("--width", type=click.IntRange(8, 8192), default=REF.width, show_default=True)
@click.option("--height", type=click.IntRange(8, 8192), default=REF.height, show_default=True)
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default=REF.scheduler, show_default=True,
              help="Built from the base model's scheduler config; 'base' keeps the base model's own.")
@click.option("--save-latents", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the initial latents used (.safetensors/.pt/.npy) for replay with --latents.")
@_model_options
def generate(guides: tuple[str, ...], controls: tuple[str, ...], scales: tuple[float, ...], out: str, prompt: str,
             negative_prompt: str, seed: int, steps: int, guidance: float, width: int, height: int, scheduler: str,
             save_latents: str | None, base_model: str, controlnet_overrides: tuple[str, ...], models_dir: str | None,
             download: bool, device: str, precision: str, latents_file: str | None, quiet: bool) -> None:
    """Generate an image from GUIDE... with Stable Diffusion 1.5 and ControlNet.

    Each GUIDE goes with one --control KIND (and optionally one --scale); several GUIDEs stack their
    ControlNets. Defaults are the settings of the reference images. Missing models are not downloaded
    unless --download is given (exit 2 naming them); a missing or unreadable GUIDE exits 2.

    \b
    Examples:
      guides generate edges.png --control canny -o cat.png
      guides generate depth.png edges.png --control depth --control canny \\
          --scale 0.3 --scale 0.7 -o stack.png
    """
    from ..diffusion.generate import Control, ControlNetGenerator, check_size, load_latents, write_generation
    from ..diffusion.generate import save_latents as write_latents
    from ..diffusion.models import locate_models, missing_problems, raise_if_missing

    if len(controls) != len(guides):
        raise UsageError(f"{len(guides)} guide(s) but {len(controls)} --control: give one --control KIND per GUIDE")
    if scales and len(scales) != len(guides):
        from ..diffusion.settings import controlnet_scale

        defaults = ", ".join(dict.fromkeys(f"{controlnet_scale(kind):g}" for kind in controls))
        raise UsageError(f"{len(guides)} guide(s) but {len(scales)} --scale: give one per GUIDE, or none for {defaults}")
    if not out.lower().endswith(".png"):
        raise UsageError(f"--out {out}: generated images are written as .png")
    settings = GenerationSettings(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                  guidance=guidance, width=width, height=height, scheduler=scheduler,
                                  precision=precision)
    check_size(settings)
    from ..diffusion.settings import controlnet_scale

    ids = _controlnet_ids(controlnet_overrides)
    images = [_read_image(path) for path in guides]
    base, nets, _ = locate_models(base_model, {kind: ids[kind] for kind in dict.fromkeys(controls)}, models_dir,
                                  download=download)
    raise_if_missing(missing_problems(base, nets))
    generator = ControlNetGenerator(base, nets, device, precision)
    latents = load_latents(latents_file) if latents_file else None
    control_list = [
        Control(kind, image, scales[index] if scales else controlnet_scale(kind), source=str(Path(path).resolve()))
        for index, (kind, image, path) in enumerate(zip(controls, images, guides, strict=True))
    ]
    if latents is not None:
        generator.check_latents(latents, settings)  # before loading anything
    bar = _Bar(steps, quiet, "loading models")
    try:
        generator.load(list(dict.fromkeys(controls)))
        if latents is None:
            latents = generator.draw_latents(settings)
        bar.phase("generating")
        generation = generator.generate(control_list, settings, latents,
                                        on_step=lambda done, total: bar.step("image", done, total))
    finally:
        bar.close()
    sidecar = write_generation(out, generation)
    if save_latents:
        write_latents(latents, save_latents)
    click.echo(f"{out} ({generation.record['seconds']:.1f} s on {generation.record['device']['device']}); settings: {sidecar}")


@click.command("reproduce", context_settings={"max_content_width": 100})
@click.option("--refs", type=click.Path(file_okay=False, path_type=Path), envvar="GUIDES_REFS", required=True,
              help="Folder of the reference images (cutecat_init.png, guides, expected_controlnet_*.png) "
              "[env: GUIDES_REFS].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the generated images, report.md, report.json and contact_sheet.png.")
@click.option("--guides", "guide_source", type=click.Choice(["ours", "reference"]), default="ours", show_default=True,
              help="Make the guides from cutecat_init.png with our annotators, or use the stored reference guides.")
@click.option("--only", multiple=True, metavar="KIND", cls=_DerivedHelpOption, help_text=_only_help)
@click.option("--dry-run", is_flag=True, help="Print the full plan as JSON and stop (nothing is loaded); exit 2 "
              "when anything it needs is missing (models only count when --download is not given).")
@_model_options
def reproduce(refs: Path, out: Path, guide_source: str, only: tuple[str, ...], dry_run: bool, base_model: str,
              controlnet_overrides: tuple[str, ...], models_dir: str | None, download: bool, device: str,
              precision: str, latents_file: str | None, quiet: bool) -> None:
    """Reproduce the reference ControlNet images and report PSNR/SSIM against the expected ones.

    For canny, depth, lineart, normals, sam and the depth + canny stack: make each guide, generate with
    the reference settings, compare with expected_controlnet_<kind>.png (pass: PSNR >= 35 dB and
    SSIM >= 0.98). Exit code 0 when every kind passes, 1 when any does not.
    """
    from ..diffusion.reproduce import ReproduceOptions, ordered_kinds, plan
    from ..diffusion.reproduce import reproduce as run_reproduction

    options = ReproduceOptions(
        refs=refs, out=out, guides=guide_source, kinds=ordered_kinds(only),  # type: ignore[arg-type]
        device=device, precision=precision, base_model=base_model, controlnets=_controlnet_ids(controlnet_overrides),
        models_dir=models_dir, latents=Path(latents_file) if latents_file else None, download=download,
    )
    if dry_run:
        from ..diffusion.generate import dumps

        planned = plan(options)
        click.echo(dumps(planned), nl=False)
        if not planned["ready"]:
            count = len(planned["blocking"])
            raise UsageError(f"{count} thing{'s' if count > 1 else ''} a run needs {'are' if count > 1 else 'is'} "
                             "missing (the plan's \"blocking\" list); a real run would refuse")
        return
    bar = _Bar(len(options.kinds) * options.settings.steps, quiet, "checking")
    try:
        result = run_reproduction(options, bar)
    finally:
        bar.close()
    for row in result.report["results"]:
        metrics = row.get("metrics")
        figures = f"PSNR {metrics['psnr']:6.2f} dB  SSIM {metrics['ssim']:.4f}" if metrics else row.get("problem", "")
        click.echo(f"{row['kind']:8} {figures}  {'pass' if row['passed'] else 'FAIL'}")
    summary = result.report["summary"]
    click.echo(f"{summary['passed']} of {summary['total']} passed; report: {result.paths['markdown']}")
    if not result.all_passed:
        raise click.exceptions.Exit(1)


@click.command("compare", context_settings={"max_content_width": 100})
@click.argument("first", type=click.Path(dir_okay=False, path_type=str))
@click.argument("second", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help='Print {"psnr": ..., "ssim": ...} (and pixel counts).')
@click.option("--min-psnr", type=float, default=None, help="Exit 1 when PSNR is below this (dB).")
@click.option("--min-ssim", type=float, default=None, help="Exit 1 when SSIM is below this.")
def compare(first: str, second: str, as_json: bool, min_psnr: float | None, min_ssim: float | None) -> None:
    """PSNR and SSIM of two images (piq on [0, 1] RGB, as the reference suite computes them).

    The images must have the same size: they are never resized (resampling would change the numbers
    being measured).

    \b
    Exit codes: 0 compared (and at or above --min-psnr / --min-ssim when given),
    1 below a threshold, 2 a missing or unreadable file or images of different sizes.
    """
    from ..diffusion.compare import compare_files

    try:
        metrics = compare_files(first, second)  # different sizes: a UsageError naming both
    except InputError as error:
        raise UsageError(str(error)) from None
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(metrics)))
    else:
        click.echo(f"PSNR {metrics.psnr:.4f} dB  SSIM {metrics.ssim:.6f}  "
                   f"({metrics.differing_pixels} pixels differ, max difference {metrics.max_abs_difference})")
    below = (min_psnr is not None and metrics.psnr < min_psnr) or (min_ssim is not None and metrics.ssim < min_ssim)
    if below:
        raise click.exceptions.Exit(1)
