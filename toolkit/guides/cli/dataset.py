"""``guides dataset``: photos + guides + captions as a ControlNet training set (see guides.dataset.export)."""

from __future__ import annotations

import json
import shlex
from typing import Any

import click

from ..dataset.entries import registry_entries
from ..dataset.export import DEFAULT_RESOLUTION, DEFAULT_SHARD_SIZE, FORMATS, LAYOUTS, export_dataset
from ..errors import UsageError
from ..imaging import DEFAULT_MAX_PIXELS
from ..weights.union_models import UNION_MODELS

#: Uncaptioned photos listed one per line on stderr; beyond this, a count.
LISTED_UNCAPTIONED = 20


@click.command("dataset")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(readable=False, path_type=str))
@click.option("-a", "--annotators", required=True, help="Comma-separated annotators, e.g. canny,depth.")
@click.option("-o", "--out", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=str), help="Export folder.")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="parquet", show_default=True,
              help="Parquet shards (datasets) or WebDataset tar shards NNNNNN.tar (very large sets).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="per-annotator", show_default=True,
              help="One dataset per annotator (image, conditioning_image, text) or one dataset with a column per annotator.")
@click.option("--shard-size", type=click.IntRange(1), default=DEFAULT_SHARD_SIZE, show_default=True, help="Photos per shard.")
@click.option("--resolution", type=click.IntRange(0), default=DEFAULT_RESOLUTION, show_default=True,
              help="Resize each photo once (ControlNet's resize_image: short side to N, sides multiples of 64); "
                   "the stored image is what every annotator sees. 0 keeps the photo's size.")
@click.option("--captions", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="JSONL or CSV of captions keyed by the photo's path relative to its input folder "
                   "(file_name/path + text/caption), e.g. a metadata.jsonl.")
@click.option("--prompt", default=None, help="Caption for photos without one from --captions or a sidecar .txt.")
@click.option("--require-captions", is_flag=True, help="Leave out (and report as failed) photos without a caption.")
@click.option("--union-model", type=click.Choice(list(UNION_MODELS)), default=None,
              help="Add the control_type and control_mode columns of that union ControlNet to each annotator's dataset "
                   "(the README's union table; per-annotator layout).")
@click.option("--set", "overrides", multiple=True, metavar="ANNOTATOR.OPTION=VALUE",
              help="An annotator's own option, e.g. canny.low=50 (repeatable): read as the option's type and checked "
                   "by its declaration (`guides ANNOTATOR --help` lists them).")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (learned annotators).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None)
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None)
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=str), envvar="GUIDES_MODELS_DIR", default=None)
@click.option("--download", is_flag=True, help="Download missing checkpoints from the Hugging Face hub (otherwise a missing checkpoint is an error).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True, help="ray: annotate on Ray Data (pip install \"controlnet-guides[ray]\").")
@click.option("--ray-address", default=None, help="Ray cluster to use [default: start a local Ray runtime].")
@click.option("--num-gpus-per-worker", type=click.FloatRange(0, 64), default=0.0, help="GPU fraction per annotator actor on Ray (learned annotators).")
@click.option("--overwrite", is_flag=True, help="Rewrite every shard (also needed to change the settings of an export).")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None, help="Threads for decoding and encoding [default: CPU cores].")
@click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True, help="Refuse larger images (decompression bombs).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no training commands.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def dataset(inputs: tuple[str, ...], annotators: str, out: str, format_: str, layout: str, shard_size: int,
            resolution: int, captions: str | None, prompt: str | None, require_captions: bool, union_model: str | None,
            overrides: tuple[str, ...], engine: str, ray_address: str | None, num_gpus_per_worker: float,
            overwrite: bool, jobs: int | None, max_pixels: int, quiet: bool, as_json: bool, **shared: Any) -> None:
    """Export photos, one guide per annotator and captions as a ControlNet training set.

    \b
    Loads directly with Hugging Face datasets, and diffusers' train_controlnet.py reads it with its
    default columns image, conditioning_image, text (the command for each annotator is printed and
    written to OUT/README.md, the dataset card). Captions: --captions FILE, else PHOTO.txt beside the
    photo, else --prompt; photos without one are listed. An interrupted export resumes where it
    stopped; shards are written atomically.

    \b
    Examples:
      guides dataset photos/ -a canny --prompt "a photo" -o train/
      guides dataset photos/ -a canny,depth --captions photos/metadata.jsonl -o train/ --format webdataset
    """
    names = [name.strip() for name in annotators.split(",") if name.strip()]
    if not names:
        raise UsageError("name at least one annotator, e.g. --annotators canny")
    if engine == "local" and (ray_address or num_gpus_per_worker):
        raise UsageError("--ray-address and --num-gpus-per-worker need --engine ray")
    entries = registry_entries(names, shared, overrides)
    runner = None
    if engine == "ray":
        from ..annotators.base import ModelOptions
        from ..engines.ray import RayExportEngine

        learned = [entry.name for entry in entries if isinstance(entry.options, ModelOptions)]
        sizes = {entry.name: entry.options.batch_size for entry in entries if entry.name in learned}
        runner = RayExportEngine(entries, learned=learned, batch_sizes=sizes, workers=jobs, max_pixels=max_pixels,
                                 progress=False if quiet else None, address=ray_address, num_gpus_per_worker=num_gpus_per_worker)
    words = ["guides", "dataset", *inputs, "-a", ",".join(names), "-o", out, "--format", format_, "--layout", layout,
             "--shard-size", str(shard_size), "--resolution", str(resolution)]
    words += ["--captions", captions] if captions else []
    words += ["--prompt", prompt] if prompt is not None else []
    words += ["--require-captions"] if require_captions else []
    words += ["--union-model", union_model] if union_model else []
    words += [word for text in overrides for word in ("--set", text)]
    try:
        report = export_dataset(
            inputs, out, entries, format=format_, layout=layout, shard_size=shard_size, resolution=resolution,
            captions=captions, prompt=prompt, require_captions=require_captions, overwrite=overwrite, workers=jobs,
            max_pixels=max_pixels, progress=False if quiet else None, command=shlex.join(words), engine=runner,
            union_model=union_model,
        )
    finally:
        if runner is not None:
            runner.close()
    for failure in report.summary.failed:
        click.echo(f"failed: {failure.line()}", err=True)
    for relative in report.uncaptioned[:LISTED_UNCAPTIONED]:
        click.echo(f"no caption: {relative}", err=True)
    if len(report.uncaptioned) > LISTED_UNCAPTIONED:
        click.echo(f"no caption: ... and {len(report.uncaptioned) - LISTED_UNCAPTIONED} more (see --json)", err=True)
    if report.unmatched_captions:
        click.echo(f"warning: {len(report.unmatched_captions)} caption(s) name no exported photo, e.g. {report.unmatched_captions[0]!r}", err=True)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
    else:
        summary = report.summary
        click.echo(
            f"{report.rows} photos in {report.out} ({report.shards_written} shard(s) written, {report.shards_skipped} "
            f"already complete); written {summary.written}, skipped {summary.skipped}, failed {len(summary.failed)}, "
            f"without caption {len(report.uncaptioned)} ({summary.seconds:.1f} s)",
            err=True,
        )
        if not quiet:
            for name, command in report.commands.items():
                click.echo(f"\ntrain a {name} ControlNet:\n  {command}", err=True)
    click.get_current_context().exit(report.exit_code)
