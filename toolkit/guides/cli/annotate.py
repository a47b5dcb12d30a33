"""Annotator commands (built from the registry), ``guides run`` and ``guides composite``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ..annotators.base import Annotator
from ..engines import Job, Summary, output_path, plan_jobs, run_jobs, stages_to_run
from ..engines.sidecars import with_sidecar
from ..errors import UsageError
from ..imaging import DEFAULT_MAX_PIXELS, load_image, load_mask, write_png_atomic
from ..registry import REGISTRY, AnnotatorSpec, get
from .options import apply, click_options


def naming_help(name: str) -> str:
    """The output-naming paragraph of annotator ``name``'s help, with its own file names."""
    return (
        f"Without -o, each guide is written beside its input as <stem>.{name}.png (photo.jpg -> "
        f"photo.{name}.png). Folders are walked for photos: guides (files named <stem>.<annotator>.png for "
        "any annotator) and anything under -o are never taken as inputs. With -o: a .png file for a single "
        "input, otherwise a folder that mirrors the input tree. Complete guides are skipped unless "
        "--overwrite, so a rerun resumes."
    )


#: Help of ``--download`` (learned annotators, ``run``, ``inpaint-target``).
DOWNLOAD_HELP = "Download missing checkpoints from the Hugging Face hub (otherwise a missing checkpoint is an error)."


def batch_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Inputs and the options every batch command shares."""
    decorators = [
        # readable=False: an unreadable file is one "failed:" line of the batch, not click's usage error.
        click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False, path_type=str)),
        click.option("-o", "--output", type=click.Path(readable=False, path_type=str), help="Output .png file (single input) or folder."),
        click.option("--overwrite", is_flag=True, help="Rewrite guides that already exist."),
        click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None, help="Threads for decoding and writing [default: CPU cores]."),
        click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True, help="Refuse larger images (decompression bombs)."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def annotator_command(spec: AnnotatorSpec) -> click.Command:
    """Build ``guides <name> INPUT...``: the batch options, then one option per field of the annotator's
    ``Options`` (``guides.cli.options``)."""
    cls = spec.annotator_class()
    sidecar = cls.sidecar
    sidecar_parameter = None if sidecar is None else f"{sidecar.name}_out"

    def callback(inputs: tuple[str, ...], output: str | None, overwrite: bool, jobs: int | None,
                 max_pixels: int, quiet: bool, as_json: bool, **values: Any) -> None:
        folder = values.pop(sidecar_parameter) if sidecar_parameter is not None else None
        options = spec.options(**values)
        sidecars = {} if folder is None else {spec.name: Path(folder)}
        planned, failures = plan_jobs(inputs, [spec.name], output, own_outputs=REGISTRY, sidecars=sidecars)
        loader = (lambda: with_sidecar(cls(options))) if sidecars else (lambda: cls(options))
        summary = _run(planned, failures, {spec.name: loader}, jobs, overwrite, max_pixels, quiet)
        _report(summary, as_json)

    command = batch_options(apply(callback, click_options(cls.Options)))
    text = f"{spec.summary}\n\n{naming_help(spec.name)}"
    if sidecar is not None:
        command = click.option(
            sidecar.option, f"{sidecar.name}_out", type=click.Path(file_okay=False, path_type=str), default=None,
            metavar="DIR", help=f"Also write {sidecar.help} to DIR/<relative path>.json (mirrors the inputs as -o does).",
        )(command)
        text += (f"\n\nWith {sidecar.option} DIR, each guide's {sidecar.name} go to DIR/<relative path>.json as well; "
                 "a rerun redoes a photo whose guide or JSON is missing.")
    return click.command(spec.name, help=text, short_help=spec.summary)(command)


@click.command("run")
@click.argument("annotators")
@batch_options
@click.option("--resolution", type=click.IntRange(0), default=None, help="Working size for every annotator [default: each annotator's own].")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (learned annotators).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=str), envvar="GUIDES_MODELS_DIR", default=None)
@click.option("--download", is_flag=True, default=False, help=DOWNLOAD_HELP)
@click.option("--max-working-pixels", type=click.IntRange(1), default=None, help="Refuse images whose working size has more pixels [default: each annotator's limit].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="ray: Ray Data (pip install \"controlnet-guides[ray]\"); same outputs and rules.")
@click.option("--ray-address", default=None, help="Ray cluster to use (e.g. ray://head:10001) [default: start a local Ray runtime].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(0, 64), default=0.0, help="GPU fraction per annotator actor on Ray (learned annotators), e.g. 0.25.")
def run(annotators: str, inputs: tuple[str, ...], output: str | None, overwrite: bool, jobs: int | None,
        max_pixels: int, quiet: bool, as_json: bool, engine: str, ray_address: str | None,
        num_gpus_per_worker: float, **shared: Any) -> None:
    """Run several annotators (comma-separated, e.g. canny,depth) decoding each image once.

    With -o OUT, guides go to OUT/<annotator>/<relative path>.png; without -o, beside each input as
    <stem>.<annotator>.png. Annotators that make a JSON document with their guide (openpose: keypoints)
    write it beside the guide (<guide stem>.json). Walked folders never yield guides (<stem>.<annotator>.png files, anything
    under OUT/<annotator>), so -o may be the input folder itself. Each annotator uses its defaults; the
    options here apply to every annotator that has them. Complete guides are skipped unless --overwrite.
    """
    names = [name.strip() for name in annotators.split(",") if name.strip()]
    if not names:
        raise UsageError("name at least one annotator, e.g. canny,depth")
    if engine == "local" and (ray_address or num_gpus_per_worker):
        raise UsageError("--ray-address and --num-gpus-per-worker need --engine ray")
    specs = [get(name) for name in dict.fromkeys(names)]
    loaders: dict[str, Callable[[], Annotator]] = {}
    for spec in specs:
        fields = {field.name for field in dataclasses.fields(spec.annotator_class().Options)}
        options = spec.options(**{k: v for k, v in shared.items() if v is not None and k in fields})
        loaders[spec.name] = (lambda spec=spec, options=options: spec.annotator_class()(options))
        if spec.annotator_class().sidecar is not None:
            loaders[spec.name] = (lambda load=loaders[spec.name]: with_sidecar(load()))
    sidecars = {spec.name: None for spec in specs if spec.annotator_class().sidecar is not None}
    planned, failures = plan_jobs(inputs, [s.name for s in specs], output, per_stage_folders=True, own_outputs=REGISTRY,
                                  sidecars=sidecars)
    if engine == "ray":
        from ..engines.ray import run_specs_on_ray

        summary = run_specs_on_ray(specs, loaders, planned, failures, batch_size=shared.get("batch_size"), workers=jobs,
                                   overwrite=overwrite, max_pixels=max_pixels, quiet=quiet, address=ray_address,
                                   num_gpus_per_worker=num_gpus_per_worker)
    else:
        summary = _run(planned, failures, loaders, jobs, overwrite, max_pixels, quiet)
    _report(summary, as_json)


@click.command("composite")
@click.argument("image", type=click.Path(path_type=str))
@click.argument("mask", type=click.Path(path_type=str))
@click.option("-o", "--output", type=click.Path(path_type=str), default=None, help="Output .png [default: <image stem>.composite.png beside it].")
@click.option("--background", default="white", show_default=True, help="Colour painted where the mask is white (name or #rrggbb).")
@click.option("--invert-mask", is_flag=True, help="Repaint where the mask is black instead.")
@click.option("--resize-mask", is_flag=True, help="Resize a mask of another size (nearest neighbour) instead of failing.")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True)
def composite(image: str, mask: str, output: str | None, background: str, invert_mask: bool, resize_mask: bool, max_pixels: int) -> None:
    """Keep IMAGE where MASK is black and paint BACKGROUND where it is white.

    Masks are read as grayscale and thresholded at 128 (>= 128 is white, i.e. repaint), so
    anti-aliased or JPEG masks work too. A mask of one colour with transparency (strokes on a
    transparent layer) uses its alpha: opaque repaints, transparent keeps. A mask that repaints
    everything or nothing gets a warning.
    """
    from ..annotators.composite import composite as make_composite
    from ..annotators.composite import parse_color

    color = parse_color(background)
    target = Path(output) if output else output_path(Path(image), "composite")
    for source in (image, mask):
        if Path(source).exists() and os.path.abspath(source) == os.path.abspath(target):
            raise UsageError(f"{target}: output would overwrite an input; choose another -o")
    result = make_composite(load_image(image, max_pixels), load_mask(mask, max_pixels), color, invert_mask, resize_mask, mask_name=mask)
    write_png_atomic(target, result)
    click.echo(str(target), err=True)


def _run(jobs: Sequence[Job], failures: Sequence, loaders: Mapping[str, Callable[[], Annotator]],
         workers: int | None, overwrite: bool, max_pixels: int, quiet: bool) -> Summary:
    """Load only the annotators some job still needs (a finished rerun loads no model), then run."""
    needed = [stages_to_run(job, overwrite) for job in jobs]
    wanted = {name for names in needed for name in names}
    stages = {name: loader() for name, loader in loaders.items() if name in wanted}
    try:
        return run_jobs(jobs, stages, workers=workers, overwrite=overwrite, max_pixels=max_pixels,
                        progress=False if quiet else None, failures=failures, needed=needed)
    finally:
        for stage in stages.values():
            stage.close()


def _report(summary: Summary, as_json: bool) -> None:
    for failure in summary.failed:
        click.echo(f"failed: {failure.line()}", err=True)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(summary.text(), err=True)
    click.get_current_context().exit(summary.exit_code)
