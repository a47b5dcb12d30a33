"""``guides models``: list, download, verify and locate the checkpoints in the catalog.

The catalog (``guides.weights.catalog``) is derived from the registered annotators' declarations, plugins
included (a plugin that cannot be loaded gets one warning line and is left out); each command reads it
once. Imports neither torch nor huggingface_hub at import time; only the commands that need the hub
client load it.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import click

from ..errors import GuidesError, WeightsError
from ..weights.catalog import CHECKPOINTS, DIFFUSERS_REPOS, Checkpoint, DiffusersRepo, revision_text
from ..weights.resolve import (
    MODELS_DIR_ENV,
    check_file,
    download_checkpoint,
    download_diffusers_repo,
    find_in_hub_cache,
    locate_checkpoint,
    resolve_checkpoint,
    resolve_diffusers_repo,
)

MODELS_DIR_OPTION = click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=str),
    envvar=MODELS_DIR_ENV,
    default=None,
    help=f"Flat folder of checkpoints under their hub file names [env: {MODELS_DIR_ENV}].",
)


class _ModelsGroup(click.Group):
    """Turns a GuidesError into ``error: <message>`` and its exit code, also when used on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GuidesError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)


def human_size(size: int | None) -> str:
    """Bytes as a short decimal size (``1.4 GB``); ``?`` when unknown."""
    if size is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _size_text(entry: Checkpoint) -> str:
    return human_size(entry.size) if entry.size is not None else f"~{human_size(entry.size_hint)}"


def _licence_text(entry: Checkpoint) -> str:
    """The licence's short name (the text before any parenthesis), marked when it is non-commercial."""
    short = entry.licence.split(" (", 1)[0].strip() or entry.licence
    return f"{short} (non-commercial)" if entry.non_commercial else short


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


def _catalog() -> tuple[dict[str, Checkpoint], dict[str, DiffusersRepo]]:
    """The catalog as it is now (read once per command: it is computed from the declarations on each use)."""
    return dict(CHECKPOINTS), dict(DIFFUSERS_REPOS)


def _expand_names(names: tuple[str, ...], all_checkpoints: bool) -> list[Checkpoint | DiffusersRepo]:
    checkpoints, repositories = _catalog()
    chosen: list[Checkpoint | DiffusersRepo] = list(checkpoints.values()) if all_checkpoints else []
    unknown = []
    for name in names:
        entry = checkpoints.get(name) or repositories.get(name)
        if entry is None:
            unknown.append(name)
        elif entry not in chosen:
            chosen.append(entry)
    if unknown:
        known = ", ".join([*checkpoints, *repositories])
        raise click.UsageError(f"unknown model name(s): {', '.join(unknown)}; known: {known}")
    return chosen


@click.group("models", cls=_ModelsGroup)
def models() -> None:
    """List, download, verify and locate checkpoints.

    \b
    Search order for a checkpoint: --checkpoint FILE > --models-dir DIR (or GUIDES_MODELS_DIR, a flat
    folder of hub file names) > the huggingface_hub cache (HF_HOME) > download (unless HF_HUB_OFFLINE).
    """


@models.command("list", short_help="Every checkpoint and where it is found.")
@MODELS_DIR_OPTION
def list_models(models_dir: str | None) -> None:
    """Every checkpoint: name, used by, file, hub revision, size, licence, and where it is found (or "missing").

    REVISION is the hub commit a download fetches (its first 12 digits), or "main (not pinned)" where no
    commit is known: that file may change on the hub between two downloads.
    """
    checkpoints, repositories = _catalog()
    rows: list[tuple[str, ...]] = [("NAME", "USED BY", "FILE", "REVISION", "SIZE", "LICENCE", "FOUND")]
    for entry in checkpoints.values():
        located = locate_checkpoint(entry.name, models_dir=models_dir)
        found = "missing" if located is None else f"{located.path} ({located.where})"
        rows.append((entry.name, entry.used_by, entry.filename, revision_text(entry), _size_text(entry),
                     _licence_text(entry), found))
    _table(rows)
    click.echo("")
    rows = [("NAME", "USED BY", "HUB REPO", "REVISION", "SIZE", "FOUND")]
    for repo in repositories.values():
        try:
            where = str(resolve_diffusers_repo(repo.repo, models_dir))
        except WeightsError:
            where = "missing"
        rows.append((repo.name, repo.used_by, repo.repo, revision_text(repo), f"~{human_size(repo.approx_size)}", where))
    _table(rows)


@models.command("download", short_help="Download checkpoints and check them.")
@click.argument("names", nargs=-1)
@click.option("--all", "all_checkpoints", is_flag=True, help="Every annotator checkpoint (diffusers models by name).")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Download into this flat folder (usable as --models-dir) instead of the huggingface_hub cache.",
)
@click.pass_context
def download(ctx: click.Context, names: tuple[str, ...], all_checkpoints: bool, to: str | None) -> None:
    """Download checkpoints (NAME... or --all) and check their size and checksum.

    Names: the checkpoints of `guides models list`, and the diffusers models of the ControlNet stage
    it lists (sd15, and controlnet-KIND for each annotator that declares a ControlNet).
    """
    if not names and not all_checkpoints:
        raise click.UsageError("name the checkpoints to download, or pass --all")
    entries = _expand_names(names, all_checkpoints)
    worst = 0
    for entry in entries:
        try:
            if isinstance(entry, Checkpoint):
                present = _present(entry, to)
                if present is not None:
                    click.echo(f"{entry.name}: already present: {present}")
                    continue
                path = download_checkpoint(entry, to=to)
            else:
                path = download_diffusers_repo(entry.name, to=to)
            click.echo(f"{entry.name}: {path}")
        except GuidesError as error:
            click.echo(f"error: {entry.name}: {error}", err=True)
            worst = max(worst, error.exit_code)
    ctx.exit(worst)


def _present(entry: Checkpoint, to: str | None) -> Path | None:
    """The copy a download would replace: in ``to`` under a flat name, else in the hub cache."""
    if to is not None:
        for name in entry.flat_names:
            if (Path(to) / name).is_file():
                return Path(to) / name
        return None
    return find_in_hub_cache(entry)


def _archive_problem(path: Path) -> str | None:
    """CRC check of a torch zip checkpoint (catches truncation and bit rot without a recorded checksum)."""
    if not zipfile.is_zipfile(path):
        return None if _legacy_torch_file(path) else "not a torch checkpoint (neither zip nor legacy format)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"damaged archive ({error})"
    return None if bad is None else f"damaged archive member {bad}"


def _legacy_torch_file(path: Path) -> bool:
    """Pre-zip torch files start with a pickle protocol header (0x80 0x02)."""
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x80\x02"


@models.command("verify", short_help="Check sizes and checksums; a mismatch exits 1.")
@click.argument("names", nargs=-1)
@MODELS_DIR_OPTION
@click.option("-q", "--quiet", is_flag=True, help="No progress bar while hashing.")
@click.pass_context
def verify(ctx: click.Context, names: tuple[str, ...], models_dir: str | None, quiet: bool) -> None:
    """Check the checkpoints found (size, sha256 where known, archive CRCs); mismatches exit 1.

    Missing checkpoints are listed, not counted as mismatches.
    """
    entries = [e for e in _expand_names(names, not names) if isinstance(e, Checkpoint)]
    mismatches = 0
    for entry in entries:
        located = locate_checkpoint(entry.name, models_dir=models_dir)
        if located is None:
            click.echo(f"{entry.name}: missing")
            continue
        path = located.path
        progress = _hash_progress(entry, path, quiet)
        try:
            problems = check_file(entry, path, progress=progress.update if progress else None)
        finally:
            if progress is not None:
                progress.close()
        if not problems and entry.sha256 is None:  # a matching sha256 already proves every byte
            archive = _archive_problem(path)
            if archive:
                problems.append(archive)
        if problems:
            mismatches += 1
            click.echo(f"{entry.name}: MISMATCH {path}: {'; '.join(problems)}")
        else:
            checked = "size, sha256" if entry.sha256 else "size, archive CRC" if entry.size else "archive CRC only"
            click.echo(f"{entry.name}: ok ({checked}) {path}")
    ctx.exit(1 if mismatches else 0)


def _hash_progress(entry: Checkpoint, path: Path, quiet: bool) -> Any:
    if quiet or not entry.has_digest or not sys.stderr.isatty() or os.environ.get("GUIDES_NO_PROGRESS"):
        return None
    from tqdm import tqdm

    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"sha256 {entry.name}", leave=False)


@models.command("path", short_help="Print the file (or folder) NAME resolves to.")
@click.argument("name")
@MODELS_DIR_OPTION
@click.option("--download/--no-download", default=False, show_default=True, help="Download it when missing.")
def path_command(name: str, models_dir: str | None, download: bool) -> None:
    """Print the file NAME resolves to (or the folder of a diffusers model); missing: exit 2."""
    checkpoints, repositories = _catalog()
    if name in repositories:
        click.echo(str(resolve_diffusers_repo(name, models_dir, download=download)))
        return
    if name not in checkpoints:
        _expand_names((name,), False)
    click.echo(str(resolve_checkpoint(name, models_dir=models_dir, download=download)))
