"""The dataset card (README.md) of an export, the training commands, model files and library versions.

What the card says about each annotator (its summary, the checkpoint files it loads and their licences,
the ControlNet its guide is meant for) comes from the annotator's declarations (``Annotator.summary``,
``checkpoints``, ``controlnets``; ``guides.annotators.base``). Takes plain facts about the export, so it
imports nothing of ``guides.dataset.export``.
"""

from __future__ import annotations

import datetime
import shlex
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..diffusion.settings import BASE_MODEL
from .entries import AnnotatorEntry
from .photos import Photo
from .shards import COLUMNS_FOLDER, ShardLayout

TRAIN_SCRIPT = "examples/controlnet/train_controlnet.py"
LIBRARIES = (
    "numpy", "opencv-python-headless", "opencv-python", "pillow", "pyarrow", "torch", "torchvision", "timm",
    "segment-anything", "safetensors", "ray",
)


def _annotator_class(name: str) -> type | None:
    """The registered class of annotator ``name``, or None (a stage handed to the export directly)."""
    from ..registry import REGISTRY

    spec = REGISTRY.get(name)
    return None if spec is None else spec.annotator_class()


def declared_checkpoints(cls: type | None, options: object = None) -> list[Any]:
    """The catalog entries of the checkpoints ``cls`` declares: those ``options`` select
    (``Annotator.checkpoint_names``), or every one it may load when the options are not known."""
    if cls is None:
        return []
    from ..weights.catalog import CHECKPOINTS

    names = cls.checkpoint_names(options) if options is not None else [c.name for c in cls.checkpoints]
    catalog = dict(CHECKPOINTS)
    return [catalog[name] for name in dict.fromkeys(names) if name in catalog]


def describe_model_files(name: str, stage: object, options: object = None) -> list[dict[str, Any]]:
    """The checkpoint files a loaded annotator actually used (its ``loaded_files``), with size and sha256.

    ``stage`` None means the annotator was not loaded in this process (the Ray engine loads it in its
    workers): the checkpoints the annotator declares are listed instead (those its ``options`` select, or
    all of them when the options are not given), marked as catalog entries; so are they for a loaded
    annotator that reports no file. An annotator without a model (or not registered): ``[]``.
    """
    from ..weights.digest import file_sha256

    paths = [Path(p) for p in (getattr(stage, "loaded_files", None) or ())] if stage is not None else []
    if paths:
        return [{"file": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)} for path in paths if path.is_file()]
    note = ("catalog entry: the annotator was loaded in the Ray workers, the file they loaded is not recorded"
            if stage is None else "catalog entry: the annotator does not report the file it loaded")
    return [
        {"file": checkpoint.filename, "repo": checkpoint.repo, "revision": checkpoint.revision,
         "sha256": checkpoint.sha256, "used_by": checkpoint.used_by, "note": note}
        for checkpoint in declared_checkpoints(_annotator_class(name), options)
    ]


def annotator_lines(entry: AnnotatorEntry) -> list[str]:
    """What the card says about one annotator, from its declarations: summary, checkpoints (file, hub
    repo, licence) and the ControlNet its guide is meant for (hub repo, licence, conditioning scale)."""
    cls = entry.annotator if entry.annotator is not None else _annotator_class(entry.name)
    if cls is None:
        return [f"- `{entry.name}`: not a registered annotator (no declarations)"]
    lines = [f"- `{entry.name}`: {cls.summary}"]
    checkpoints = declared_checkpoints(cls, entry.options if entry.options is not None else cls.Options())
    if not checkpoints:
        lines.append("  - checkpoints: none")
    for checkpoint in checkpoints:
        lines.append(f"  - checkpoint `{checkpoint.name}`: `{checkpoint.filename}` from {checkpoint.repo} "
                     f"({_revision(checkpoint)}), licence {checkpoint.licence}")
    from ..weights.catalog import guide_controlnet

    controlnet = guide_controlnet(cls, entry.options if entry.options is not None else cls.Options())
    if controlnet is None:
        lines.append("  - ControlNet: none declared")
    else:
        lines.append(f"  - ControlNet: {controlnet.repo} ({_revision(controlnet)}), licence {controlnet.licence}, "
                     f"conditioning scale {controlnet.scale:g}" + ("" if controlnet.base == "sd15" else f", {controlnet.base}"))
    return lines


def _revision(entry: Any) -> str:
    from ..weights.declarations import is_commit

    return f"revision {entry.revision[:12]}" if is_commit(entry.revision) else f"{entry.revision}, not pinned"


def training_commands(out: Path, shape: ShardLayout, resolution: int) -> dict[str, str]:
    """The ``train_controlnet.py`` command for each dataset of the export (one per annotator)."""
    commands = {}
    for name in shape.annotators:
        folder = name if shape.layout == "per-annotator" else COLUMNS_FOLDER
        flags = []
        if shape.format == "webdataset":
            conditioning = "conditioning_image.png" if shape.layout == "per-annotator" else f"{name}.png"
            flags = ["--image_column=image.png", f"--conditioning_image_column={conditioning}", "--caption_column=txt"]
        elif shape.layout == "columns":
            flags = [f"--conditioning_image_column={name}"]
        parts = [
            f"accelerate launch {TRAIN_SCRIPT}",
            f"--pretrained_model_name_or_path={BASE_MODEL}",
            f"--train_data_dir={_quote(str(out / folder))}",
            *flags,
            f"--resolution={resolution or 512}",
            f"--output_dir=controlnet-{name}",
            "--learning_rate=1e-5 --train_batch_size=4",
        ]
        commands[name] = " \\\n  ".join(parts)
    return commands


def _quote(text: str) -> str:
    return shlex.quote(text)


def library_versions(extra: Sequence[str] = ()) -> dict[str, str]:
    """Installed versions of the libraries that shape the guides and the files (missing ones left out)."""
    versions = {"python": sys.version.split()[0], "guides (controlnet-guides)": __version__}
    for name in (*LIBRARIES, *extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def dataset_card(out: Path, shape: ShardLayout, entries: Sequence[AnnotatorEntry], manifest: Mapping[str, Any],
                 photos: Sequence[Photo], *, rows: int, failed: int, uncaptioned: int, commands: Mapping[str, str],
                 resolution: int, shard_size: int, command: str | None) -> str:
    """The README.md of the export: YAML configs for ``datasets``, then what was made and how to train.

    ``photos``: the exported photos; ``rows``, ``failed``, ``uncaptioned``: counts of the export;
    ``commands``: the training command of each dataset (``training_commands``)."""
    extension = "parquet" if shape.format == "parquet" else "tar"
    lines = ["---", "configs:"]
    for index, folder in enumerate(shape.datasets):
        config = folder if shape.layout == "per-annotator" else "default"
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train", f"    path: {folder}/*.{extension}"]
        if index == 0:
            lines.append("  default: true")
    lines += ["tags:", "- controlnet", "- guides", "---", ""]
    names = ", ".join(shape.annotators)
    origins: dict[str, int] = {}
    for photo in photos:
        origins[photo.caption_from or "none"] = origins.get(photo.caption_from or "none", 0) + 1
    lines += [
        f"# ControlNet training set: {names}",
        "",
        f"Made by guides {__version__} on {datetime.date.today().isoformat()}"
        + (f" with `{command}`." if command else "."),
        "",
        f"- photos in the dataset: {rows}; failed (left out): {failed}; without caption (empty `text`): "
        f"{uncaptioned}",
        f"- format: {shape.format}, layout: {shape.layout}, up to {shard_size} photos per shard, "
        f"{len(manifest.get('shards', {}))} shard(s)",
        f"- photos resized with ControlNet's resize_image to {resolution} (short side, sides multiples of 64)"
        if resolution else "- photos kept at their own size",
        "- captions: " + ", ".join(f"{origin} {number}" for origin, number in sorted(origins.items())),
        "",
        "Each `image` is the photo exactly as every annotator saw it (decoded with EXIF orientation applied, "
        "alpha composited on white, resized once), stored as lossless PNG; each guide is that annotator's "
        "output for it, stored as PNG, so image and guides align pixel for pixel.",
        "",
        "## Layout",
        "",
    ]
    for folder in shape.datasets:
        columns = ", ".join(f"`{column}`" for column in shape.columns(folder))
        lines.append(f"- `{folder}/*.{extension}`: columns {columns}")
    if shape.format == "webdataset":
        lines += ["", "WebDataset samples are keyed by the photo's 9-digit index; `json` holds `{\"source\": relative path}`."]
    lines += ["", "## Load it", "", "```python", "from datasets import load_dataset", ""]
    for folder in shape.datasets:
        config = f', "{folder}"' if shape.layout == "per-annotator" else ""
        lines.append(f'ds = load_dataset("{out}"{config}, split="train")  # or load_dataset("{out / folder}")')
    if shape.format == "webdataset":
        lines += ["", "import webdataset as wds", f'wds.WebDataset("{out / shape.datasets[0]}/{{000000..{max(0, len(manifest.get("shards", {})) - 1):06d}}}.tar").decode("pil")']
    lines += ["```", "", f"## Train a ControlNet (diffusers `{TRAIN_SCRIPT}`)", ""]
    for name, text in commands.items():
        lines += [f"{name}:", "", "```bash", text, "```", ""]
    lines += ["## Annotators", ""]
    for entry in entries:
        lines += annotator_lines(entry)
    lines += ["", "Check each licence (and the ControlNet's model card) before redistributing guides or a model trained on them.", ""]
    lines += ["## Annotators and settings", ""]
    for entry in entries:
        settings = ", ".join(f"{key}={value!r}" for key, value in entry.settings.items())
        lines.append(f"- `{entry.name}`: {settings or 'defaults'}")
    lines += ["", "`resolution=0` above: the annotators worked at the size of the stored image (see above).", ""]
    lines += ["## Model files", ""]
    model_files = manifest.get("model_files", {})
    for entry in entries:
        files = model_files.get(entry.name)
        if not files:
            lines.append(f"- `{entry.name}`: none" + (" (no model)" if files == [] else " recorded"))
            continue
        for item in files:
            details = ", ".join(f"{key} {value}" for key, value in item.items() if key != "file" and value is not None)
            lines.append(f"- `{entry.name}`: `{item['file']}` ({details})")
    lines += ["", "## Library versions (installed when the export ran)", ""]
    lines += [f"- {name} {version}" for name, version in library_versions().items()]
    lines += ["", "Random-weight or placeholder checkpoints make wiring-correct but meaningless guides: check the model files above.", ""]
    return "\n".join(lines)
