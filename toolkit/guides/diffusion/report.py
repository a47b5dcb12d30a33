"""The reproduction report: ``report.json`` (everything, machine-readable), ``report.md`` (the table a
person reads) and ``contact_sheet.png`` (rows: kind; columns: input, guide, generated, expected,
difference). Plain numpy/Pillow; no torch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..imaging import write_atomic
from .generate import dumps

COLUMNS = ("input", "guide", "generated", "expected", "difference")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _thumbnail(image: np.ndarray | None, cell: int) -> Image.Image:
    """The image fitted into a cell x cell square (grey when absent)."""
    canvas = Image.new("RGB", (cell, cell), (96, 96, 96))
    if image is None:
        return canvas
    picture = Image.fromarray(image).convert("RGB")
    picture.thumbnail((cell, cell), Image.Resampling.LANCZOS)
    canvas.paste(picture, ((cell - picture.width) // 2, (cell - picture.height) // 2))
    return canvas


def _side_by_side(images: Sequence[np.ndarray], cell: int) -> Image.Image:
    """Several guides (a stack) in one cell: vertical strips, each the matching part of its guide."""
    canvas = Image.new("RGB", (cell, cell), (96, 96, 96))
    width = cell // len(images)
    for index, image in enumerate(images):
        tile = _thumbnail(image, cell)
        left = index * width
        right = cell if index == len(images) - 1 else left + width
        canvas.paste(tile.crop((left, 0, right, cell)), (left, 0))
    return canvas


def contact_sheet(rows: Sequence[Mapping[str, Any]], cell: int = 192) -> np.ndarray:
    """One row per kind: ``{"label": str, "input", "guides": [arrays], "generated", "expected",
    "difference"}`` (arrays may be None). Returns the sheet as RGB uint8."""
    label_width = max(cell // 2 + 40, 130)
    header = 28
    font, small = _font(16), _font(13)
    sheet = Image.new("RGB", (label_width + cell * len(COLUMNS), header + cell * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(COLUMNS):
        draw.text((label_width + column * cell + 6, 6), title, fill=(0, 0, 0), font=font)
    for index, row in enumerate(rows):
        top = header + index * cell
        lines = str(row.get("label", "")).split("\n")
        for line_index, line in enumerate(lines):
            draw.text((6, top + 6 + line_index * 18), line, fill=(0, 0, 0), font=font if line_index == 0 else small)
        guides = [guide for guide in row.get("guides") or [] if guide is not None]
        cells = [
            _thumbnail(row.get("input"), cell),
            _side_by_side(guides, cell) if len(guides) > 1 else _thumbnail(guides[0] if guides else None, cell),
            _thumbnail(row.get("generated"), cell),
            _thumbnail(row.get("expected"), cell),
            _thumbnail(row.get("difference"), cell),
        ]
        for column, image in enumerate(cells):
            sheet.paste(image, (label_width + column * cell, top))
    return np.asarray(sheet)


def _number(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the result table, the guide comparison, the settings and models, the notes."""
    thresholds = report["thresholds"]
    summary = report["summary"]
    lines = [
        "# ControlNet reproduction report",
        "",
        f"{summary['passed']} of {summary['total']} passed "
        f"(PSNR >= {thresholds['psnr']} dB and SSIM >= {thresholds['ssim']} against the expected image; "
        "`piq.psnr` / `piq.ssim` on [0, 1] RGB).",
        "",
        f"Guides: **{report['guides']}**. Device: {report['device'].get('device')} ({report['device'].get('name')}), "
        f"precision {report['precision']}. Initial latents: {report['latents']['source']}"
        + (f" (seed {report['latents']['seed']}, drawn on {report['latents']['drawn_on']})" if report["latents"]["source"] == "seed"
           else f" ({report['latents']['file']})")
        + f", sha256 `{report['latents']['sha256'][:16]}`.",
        "",
        "| kind | controls | PSNR (dB) | SSIM | result | guide vs reference: PSNR / SSIM |",
        "| --- | --- | ---: | ---: | --- | --- |",
    ]
    for result in report["results"]:
        metrics = result.get("metrics") or {}
        controls = " + ".join(f"{c['kind']} {c['scale']:g}" for c in result["controls"])
        guide_parts = []
        for control in result["controls"]:
            comparison = report["guide_comparison"].get(control["kind"])
            if comparison is None:
                continue
            if comparison.get("metrics") is None:
                guide_parts.append(f"{control['kind']}: {comparison.get('problem', 'n/a')}")
            else:
                m = comparison["metrics"]
                guide_parts.append(f"{control['kind']}: {_number(m['psnr'], 2)} / {_number(m['ssim'], 4)}")
        status = "pass" if result["passed"] else ("FAIL" if metrics else result.get("problem", "FAIL"))
        lines.append(
            f"| {result['kind']} | {controls} | {_number(metrics.get('psnr'), 2)} | {_number(metrics.get('ssim'), 4)} "
            f"| {status} | {'; '.join(guide_parts) if guide_parts else 'n/a (reference guides used)'} |"
        )
    lines += ["", "![contact sheet](contact_sheet.png)", "", "## Settings", ""]
    for key, value in report["settings"].items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", "## Models", ""]
    for model in [report["models"]["base"], *report["models"]["controlnets"].values()]:
        where = model.get("path") or "missing"
        revision = f", revision `{model['revision']}`" if model.get("revision") else ""
        role = "base" if model["role"] == "base" else f"ControlNet ({model['kind']})"
        lines.append(f"- {role}: `{model['id']}` from {model['source']} `{where}`{revision}")
    for checkpoint in report["models"].get("checkpoints", {}).values():
        lines.append(f"- annotator checkpoint `{checkpoint['name']}`: `{checkpoint['path']}`")
    lines += ["", "## Libraries", ""]
    lines += [f"- {name}: {version}" for name, version in report["libraries"].items() if version]
    if report.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: Mapping[str, Any], sheet: np.ndarray) -> dict[str, Path]:
    """Write report.json, report.md and contact_sheet.png into ``out``; returns their paths."""
    from ..imaging import write_png_atomic

    paths = {"json": out / "report.json", "markdown": out / "report.md", "contact_sheet": out / "contact_sheet.png"}
    write_png_atomic(paths["contact_sheet"], sheet)
    write_atomic(paths["json"], dumps(report).encode())
    write_atomic(paths["markdown"], markdown(report).encode())
    return paths
