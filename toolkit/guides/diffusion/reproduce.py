"""``guides reproduce``: make the guides, generate with the reference settings, compare, report.

For each reference kind (``settings.reference_kinds()``: the built-in annotators that declare a ControlNet,
canny, depth, lineart, normals and sam; then the depth + canny stack): take the guide made by
our annotator from ``cutecat_init.png`` (``guides="ours"``, through the registry) or the stored reference
guide (``guides="reference"``), generate with ``settings.REFERENCE_SETTINGS`` and the kind's ControlNet(s)
and scale(s), and compare with ``expected_controlnet_<kind>.png`` (PSNR/SSIM as the reference suite
computes them). Our guides are also compared with the reference guides.

Order of work, so that a run fails before doing anything expensive: reference files, annotators, every
model and checkpoint (one message for all that are missing), the device; then guides, then models
(loaded once, shared by all kinds), then generation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import GuidesError, UsageError
from ..imaging import array_to_rgb, load_image, write_png_atomic
from .compare import Metrics, compare_arrays, difference_image
from .models import (
    CheckpointLocation,
    ModelLocation,
    describe_files,
    locate_models,
    missing_problems,
    raise_if_missing,
)
from .settings import (
    BASE_MODEL,
    CONTROLNET_MODELS,
    GUIDE_CHECKPOINTS,
    INPUT_FILE,
    PASS_PSNR,
    PASS_SSIM,
    REFERENCE_CONTROLS,
    REFERENCE_SETTINGS,
    GenerationSettings,
    expected_file,
    kind_annotator,
    reference_guide_file,
    reproduce_kinds,
)

logger = logging.getLogger(__name__)

GuideSource = Literal["ours", "reference"]


class Progress:
    """What a run reports as it goes; the CLI draws a progress bar from it. Does nothing by default."""

    def phase(self, text: str) -> None:
        """A new phase began (making guides, loading models, ...)."""

    def step(self, kind: str, done: int, total: int) -> None:
        """Denoising step ``done`` of ``total`` for ``kind`` finished."""


@dataclasses.dataclass(frozen=True)
class ReproduceOptions:
    """What ``guides reproduce`` was asked to do."""

    refs: Path
    out: Path
    guides: GuideSource = "ours"
    kinds: tuple[str, ...] = dataclasses.field(default_factory=reproduce_kinds)
    device: str = "auto"
    precision: str = "fp32"
    base_model: str = BASE_MODEL
    controlnets: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(CONTROLNET_MODELS))
    models_dir: str | None = None
    latents: Path | None = None
    download: bool = False

    def __post_init__(self) -> None:
        if self.guides not in ("ours", "reference"):
            raise UsageError(f"--guides must be ours or reference, got {self.guides!r}")
        known = reproduce_kinds()
        unknown = [kind for kind in self.kinds if kind not in known]
        if unknown:
            raise UsageError(f"unknown kind(s) {', '.join(unknown)}; use {', '.join(known)}")
        if not self.kinds:
            raise UsageError("nothing to reproduce: no kinds selected")

    @property
    def settings(self) -> GenerationSettings:
        """The reference settings, at the requested precision."""
        return dataclasses.replace(REFERENCE_SETTINGS, precision=self.precision)

    @property
    def controls(self) -> dict[str, tuple[tuple[str, float], ...]]:
        """Each selected kind's (guide kind, conditioning scale) pairs (``settings.REFERENCE_CONTROLS``)."""
        controls = dict(REFERENCE_CONTROLS)
        return {kind: controls[kind] for kind in self.kinds}

    @property
    def guide_kinds(self) -> list[str]:
        """Every guide (= ControlNet) kind the selected runs need, in first-use order."""
        kinds: dict[str, None] = {}
        for pairs in self.controls.values():
            for guide_kind, _ in pairs:
                kinds.setdefault(guide_kind)
        return list(kinds)

    @property
    def needed_checkpoints(self) -> list[str]:
        if self.guides != "ours":
            return []
        checkpoints = dict(GUIDE_CHECKPOINTS)
        return list(dict.fromkeys(name for kind in self.guide_kinds for name in checkpoints[kind]))

    def controlnet_ids(self) -> dict[str, str]:
        return {kind: self.controlnets[kind] for kind in self.guide_kinds}


def ordered_kinds(selected: Sequence[str]) -> tuple[str, ...]:
    """The selected kinds (``canny``, ``stack``, comma lists allowed) in report order, without repeats."""
    names: list[str] = []
    for value in selected:
        names += [part.strip() for part in value.split(",") if part.strip()]
    known = reproduce_kinds()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UsageError(f"--only: unknown kind(s) {', '.join(unknown)}; use {', '.join(known)}")
    if not names:
        return known
    return tuple(kind for kind in known if kind in names)


# --------------------------------------------------------------------------------------------- checks


def _annotator_options(kind: str, options: ReproduceOptions, fields: set[str]) -> dict[str, Any]:
    """The registry defaults make each guide in the stored reference's format; only the run's model
    options (those the annotator has) are given."""
    values: dict[str, Any] = {}
    # The checkpoints were found (or downloaded when asked) before: an annotator never downloads on its own.
    for name, value in (("device", options.device), ("models_dir", options.models_dir), ("download", options.download)):
        if name in fields and value is not None:
            values[name] = value
    return values


def guide_plan(options: ReproduceOptions) -> dict[str, dict[str, Any]]:
    """Per guide kind: where its guide comes from and where it goes (no annotator is built)."""
    plan: dict[str, dict[str, Any]] = {}
    for kind in options.guide_kinds:
        reference = options.refs / reference_guide_file(kind)
        if options.guides == "reference":
            plan[kind] = {"source": "file", "path": str(reference)}
            continue
        from .. import registry

        spec = registry.get(kind_annotator(kind))
        entry: dict[str, Any] = {
            "source": "annotator",
            "annotator": spec.target,
            "input": str(options.refs / INPUT_FILE),
            "checkpoints": list(GUIDE_CHECKPOINTS[kind]),
            "output": str(options.out / "guides" / f"{kind}.png"),
            "reference": str(reference) if reference.is_file() else None,
        }
        try:
            cls = spec.annotator_class()
            fields = {field.name for field in dataclasses.fields(cls.Options)}
            entry["options"] = dataclasses.asdict(spec.options(**_annotator_options(kind, options, fields)))
        except GuidesError:
            raise
        except Exception as error:  # noqa: BLE001 - an annotator that cannot even be imported
            entry["options"] = None
            entry["problem"] = f"annotator {kind!r} ({spec.target}) is not available: {type(error).__name__}: {error}"
        plan[kind] = entry
    return plan


def missing_reference_files(options: ReproduceOptions) -> list[str]:
    """Reference files the run needs but ``refs`` lacks."""
    needed: list[Path] = []
    if options.guides == "ours":
        needed.append(options.refs / INPUT_FILE)
    else:
        needed += [options.refs / reference_guide_file(kind) for kind in options.guide_kinds]
    needed += [options.refs / expected_file(kind) for kind in options.kinds]
    return [str(path) for path in needed if not path.is_file()]


def output_paths(options: ReproduceOptions) -> dict[str, Any]:
    out = options.out
    return {
        "report_json": str(out / "report.json"),
        "report_markdown": str(out / "report.md"),
        "contact_sheet": str(out / "contact_sheet.png"),
        "latents": str(out / "latents.safetensors"),
        "runs": {
            kind: {
                "image": str(out / f"generated_{kind}.png"),
                "sidecar": str(out / f"generated_{kind}.json"),
                "difference": str(out / f"difference_{kind}.png"),
            }
            for kind in options.kinds
        },
    }


def plan(options: ReproduceOptions) -> dict[str, Any]:
    """The full plan as JSON-ready data: settings, model ids and where they are, files in and out.

    Looks models up (no download, nothing loaded); ``missing`` lists everything absent now, ``blocking``
    what of it a real run would refuse on (all of it, less the models and checkpoints that ``download``
    would fetch) and ``ready`` whether ``blocking`` is empty (``guides reproduce --dry-run`` exits 2 if not).
    """
    base, nets, checkpoints = locate_models(
        options.base_model, options.controlnet_ids(), options.models_dir, checkpoints=options.needed_checkpoints
    )
    guides = guide_plan(options)
    controls = options.controls
    model_problems = missing_problems(base, nets, checkpoints)
    other_problems = [entry["problem"] for entry in guides.values() if entry.get("problem")]
    other_problems += [f"{path}: reference file not found" for path in missing_reference_files(options)]
    problems = model_problems + other_problems
    blocking = other_problems if options.download else problems
    return {
        "command": "reproduce",
        "refs": str(options.refs),
        "out": str(options.out),
        "guides": options.guides,
        "kinds": list(options.kinds),
        "settings": options.settings.as_dict(),
        "thresholds": {"psnr": PASS_PSNR, "ssim": PASS_SSIM},
        "device": options.device,
        "precision": options.precision,
        "latents": (
            {"source": "file", "path": str(options.latents)}
            if options.latents is not None
            else {"source": "seed", "seed": options.settings.seed, "drawn_on": "the generating device"}
        ),
        "models": {
            "base": _location_dict(base),
            "controlnets": {kind: _location_dict(net) for kind, net in nets.items()},
            "checkpoints": {name: _checkpoint_dict(c) for name, c in checkpoints.items()},
        },
        "guide_sources": guides,
        "runs": [
            {
                "kind": kind,
                "controls": [
                    {"kind": guide_kind, "scale": scale, "controlnet": options.controlnets[guide_kind]}
                    for guide_kind, scale in controls[kind]
                ],
                "expected": str(options.refs / expected_file(kind)),
            }
            for kind in options.kinds
        ],
        "outputs": output_paths(options),
        "missing": problems,
        "download": options.download,
        "blocking": blocking,
        "ready": not blocking,
    }


def _location_dict(location: ModelLocation) -> dict[str, Any]:
    return {**location.as_dict(), "found": location.path is not None, "problem": location.problem}


def _checkpoint_dict(location: CheckpointLocation) -> dict[str, Any]:
    return {**location.as_dict(), "found": location.path is not None, "problem": location.problem}


# ---------------------------------------------------------------------------------------------- run


@dataclasses.dataclass
class ReproduceResult:
    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def all_passed(self) -> bool:
        return bool(self.report["summary"]["all_passed"])


def _make_guides(options: ReproduceOptions, guides_plan: Mapping[str, Mapping[str, Any]], progress: Progress,
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]], np.ndarray | None]:
    """The guide of every needed kind (RGB, as fed to the pipeline), their comparison with the
    reference guides, and the input photo (None when absent)."""
    from .. import registry

    guides: dict[str, np.ndarray] = {}
    comparison: dict[str, dict[str, Any]] = {}
    if options.guides == "reference":
        for kind in options.guide_kinds:
            guides[kind] = load_image(options.refs / reference_guide_file(kind))
        photo_path = options.refs / INPUT_FILE  # only shown on the contact sheet
        return guides, comparison, load_image(photo_path) if photo_path.is_file() else None
    photo = load_image(options.refs / INPUT_FILE)
    for kind in options.guide_kinds:
        progress.phase(f"making the {kind} guide")
        entry = guides_plan[kind]
        started = time.perf_counter()
        annotator = registry.get(kind_annotator(kind)).load(**_annotator_options(kind, options, set(entry["options"] or {})))
        try:
            raw = annotator.annotate(photo)
            loaded = tuple(Path(path) for path in getattr(annotator, "loaded_files", ()))
        finally:
            annotator.close()
        seconds = time.perf_counter() - started
        write_png_atomic(entry["output"], raw)
        guides[kind] = array_to_rgb(raw)
        reference = options.refs / reference_guide_file(kind)
        result: dict[str, Any] = {"ours": entry["output"], "reference": str(reference), "seconds": round(seconds, 3),
                                  "loaded_files": describe_files(loaded)}
        if not reference.is_file():
            result.update(metrics=None, problem="no reference guide")
        else:
            expected = load_image(reference)
            if expected.shape != guides[kind].shape:
                result.update(metrics=None, problem=f"size {guides[kind].shape[1]}x{guides[kind].shape[0]}, "
                              f"reference {expected.shape[1]}x{expected.shape[0]}")
            else:
                metrics = compare_arrays(guides[kind], expected)
                result.update(metrics=metrics.as_dict(), identical=metrics.differing_pixels == 0)
        comparison[kind] = result
    return guides, comparison, photo


def _notes(options: ReproduceOptions, device_type: str, latents_source: str) -> list[str]:
    notes = []
    if latents_source == "seed" and device_type != "cuda":
        notes.append(
            f"The initial latents were drawn on {device_type}; the expected images were drawn with CUDA's "
            "generator after torch.manual_seed(2), and other devices draw different numbers, so these images "
            "cannot match. Run on CUDA, or pass --latents with latents saved by a CUDA run (latents.safetensors)."
        )
    if options.precision != "fp32":
        notes.append(f"Precision {options.precision}: the expected images were made in float32.")
    if options.guides == "ours" and "sam" in options.guide_kinds:
        notes.append(
            "The reference SAM guide was painted with random colours (mfidabel's space), so no SAM guide "
            "can match it colour for colour; the sam row measures the ControlNet, not colour parity."
        )
    notes.append(
        "The reference suite also checks a DINOv2 cosine similarity >= 0.99; it is not computed here."
    )
    return notes


def reproduce(options: ReproduceOptions, progress: Progress | None = None) -> ReproduceResult:
    """Run the whole reproduction and write the report; see the module docstring for the order."""
    from ..devices import resolve_device

    progress = progress or Progress()
    missing_files = missing_reference_files(options)
    if missing_files:
        raise UsageError(f"{len(missing_files)} reference file(s) missing from {options.refs}: {', '.join(missing_files)}")
    guides_plan = guide_plan(options)
    unavailable = [entry["problem"] for entry in guides_plan.values() if entry.get("problem")]
    if unavailable:
        raise GuidesError("; ".join(unavailable))
    base, nets, checkpoints = locate_models(
        options.base_model, options.controlnet_ids(), options.models_dir,
        checkpoints=options.needed_checkpoints, download=options.download,
    )
    raise_if_missing(missing_problems(base, nets, checkpoints))
    resolve_device(options.device)  # a bad device fails here, before any work
    from .generate import Control, ControlNetGenerator, load_latents, save_latents, write_generation

    generator = ControlNetGenerator(base, nets, options.device, options.precision)
    settings = options.settings
    file_latents = load_latents(options.latents) if options.latents is not None else None
    if file_latents is not None:
        generator.check_latents(file_latents, settings)  # before any work
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        from ..errors import OutputError

        raise OutputError(options.out, f"cannot create the output folder: {error.strerror or error}") from None

    guides, guide_comparison, photo = _make_guides(options, guides_plan, progress)

    progress.phase("loading models")
    generator.load(options.guide_kinds)
    latents = file_latents or generator.draw_latents(settings)
    paths = output_paths(options)
    save_latents(latents, paths["latents"])

    controls_of = options.controls
    results: list[dict[str, Any]] = []
    sheet_rows: list[dict[str, Any]] = []
    for kind in options.kinds:
        progress.phase(f"generating {kind}")
        controls = [
            Control(guide_kind, guides[guide_kind], scale,
                    source=str(guides_plan[guide_kind].get("output") or guides_plan[guide_kind].get("path")))
            for guide_kind, scale in controls_of[kind]
        ]
        generation = generator.generate(
            controls, settings, latents, on_step=lambda done, total, kind=kind: progress.step(kind, done, total)
        )
        run_paths = paths["runs"][kind]
        expected_path = options.refs / expected_file(kind)
        write_generation(run_paths["image"], generation, extra={"reproduce": {"kind": kind, "expected": str(expected_path)}})
        expected = load_image(expected_path)
        result: dict[str, Any] = {
            "kind": kind,
            "controls": [{"kind": c.kind, "scale": c.scale, "guide": c.source} for c in controls],
            "generated": run_paths["image"],
            "sidecar": run_paths["sidecar"],
            "expected": str(expected_path),
            "seconds": generation.record["seconds"],
        }
        difference = None
        if expected.shape != generation.image.shape:
            result.update(metrics=None, passed=False,
                          problem=f"expected image is {expected.shape[1]}x{expected.shape[0]}, generated "
                                  f"{generation.image.shape[1]}x{generation.image.shape[0]}")
        else:
            metrics: Metrics = compare_arrays(generation.image, expected)
            difference = difference_image(generation.image, expected)
            write_png_atomic(run_paths["difference"], difference)
            result.update(metrics=metrics.as_dict(), passed=metrics.passes(), difference=run_paths["difference"])
        results.append(result)
        metrics_dict = result.get("metrics") or {}
        label = kind
        if metrics_dict:
            label += f"\nPSNR {metrics_dict['psnr']:.2f} dB\nSSIM {metrics_dict['ssim']:.4f}\n" + ("pass" if result["passed"] else "FAIL")
        sheet_rows.append({
            "label": label,
            "input": photo,
            "guides": [guides[c.kind] for c in controls],
            "generated": generation.image,
            "expected": expected,
            "difference": difference,
        })

    passed = sum(1 for result in results if result["passed"])
    first_record = generation.record
    report = {
        "summary": {"passed": passed, "total": len(results), "all_passed": passed == len(results),
                    "kinds": list(options.kinds)},
        "thresholds": {"psnr": PASS_PSNR, "ssim": PASS_SSIM},
        "guides": options.guides,
        "refs": str(options.refs),
        "settings": settings.as_dict(),
        "scheduler": first_record["scheduler"],
        "precision": options.precision,
        "device": first_record["device"],
        "latents": {**latents.as_dict(), "saved_to": paths["latents"]},
        "models": {
            "base": {**base.as_dict(), "loaded_files": generator.loaded_files()},
            "controlnets": {kind: {**net.as_dict(), "loaded_files": generator.loaded_files(kind)}
                            for kind, net in nets.items()},
            "checkpoints": {name: c.as_dict() for name, c in checkpoints.items()},
        },
        "libraries": first_record["libraries"],
        "results": results,
        "guide_comparison": guide_comparison,
        "notes": _notes(options, generator.device.type, latents.source),
    }
    from .report import contact_sheet, write_report

    written = write_report(options.out, report, contact_sheet(sheet_rows))
    return ReproduceResult(report, written)

