"""Finding checkpoints: explicit file > flat models folder > huggingface_hub cache > download.

Environment read at call time (so a test or a long-lived process can change it):

* ``GUIDES_MODELS_DIR``: the flat models folder used when no ``models_dir`` is passed;
* ``HF_HUB_OFFLINE``: never touch the network; a missing file is an error saying how to get it;
* ``HF_ENDPOINT``: the hub URL (a mirror, or a test server); ``HF_HUB_CACHE`` / ``HF_HOME``: the cache.

A flat folder holds files under their hub file names, the way ComfyUI and A1111 users keep them
(``models/ZoeD_M12_N.pt``; SAM's ``checkpoints/sam_vit_h_4b8939.pth`` or just ``sam_vit_h_4b8939.pth``).
A hub name several declared files share (each Depth Anything V2 ``-hf`` repository's ``model.safetensors``)
is ambiguous there: such a file is declared with its own ``local_name``
(``depth_anything_v2_vits.safetensors``), the name looked up and the name ``download --to`` writes.
Files found there or given explicitly are used as they are; downloaded files are checked against the
catalog's size and sha256 and refused (deleted) on a mismatch.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from guides.errors import WeightsError
from guides.imaging import first_line
from guides.weights.declarations import MODELS_DIR_ENV
from guides.weights.catalog import Checkpoint, DiffusersRepo, get_checkpoint, get_diffusers_repo, is_commit

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_HASH_CHUNK = 8 * 1024 * 1024
PROBE_TIMEOUT_S = 10.0
"""Seconds the one request checking that the hub can serve a file may wait (huggingface_hub's own
default for such requests); a refused connection or a failed name lookup fails at once."""

Where = Literal["explicit", "models-dir", "hub-cache", "downloaded"]


@dataclass(frozen=True)
class Located:
    """Where a checkpoint was found: the file and which step of the search found it."""

    path: Path
    where: Where


# ------------------------------------------------------------------------------------ environment


def is_offline() -> bool:
    """No network access at all: ``HF_HUB_OFFLINE`` as set now, else huggingface_hub's own offline mode.

    huggingface_hub reads HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) once, when it is imported; an
    explicit value in the environment now takes precedence for our decision.
    """
    value = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if value:
        return value in _TRUE
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(constants is not None and constants.is_offline_mode())


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (None: huggingface_hub's default)."""
    value = os.environ.get("HF_ENDPOINT", "").strip()
    return value.rstrip("/") or None


def hub_cache_dir() -> Path:
    """The huggingface_hub cache folder as the environment says now (HF_HUB_CACHE > HF_HOME/hub > default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def models_dir_from(models_dir: str | Path | None) -> Path | None:
    """The flat models folder: the argument, else ``GUIDES_MODELS_DIR``, else None."""
    value = models_dir if models_dir not in (None, "") else os.environ.get(MODELS_DIR_ENV) or None
    return None if value is None else Path(value).expanduser()


def existing_models_dir(models_dir: str | Path | None) -> Path | None:
    """``models_dir_from`` checked: a folder that was named but does not exist is an error, not a miss.

    (A mistyped --models-dir must not silently fall through to a multi-gigabyte download.)
    """
    folder = models_dir_from(models_dir)
    if folder is not None and not folder.is_dir():
        source = "--models-dir" if models_dir not in (None, "") else MODELS_DIR_ENV
        raise WeightsError(f"{folder}: models folder not found (given by {source})")
    return folder


# ---------------------------------------------------------------------------------------- checks


def file_digests(path: str | Path, progress: Callable[[int], None] | None = None) -> tuple[str, str]:
    """(sha256, md5) hex digests of a file, computed in one chunked pass (``progress`` gets byte counts)."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return sha256.hexdigest(), md5.hexdigest()


def check_file(
    entry: Checkpoint,
    path: Path,
    *,
    hash_file: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """What is wrong with ``path`` as a copy of ``entry`` (size, then checksums): empty when it matches."""
    problems: list[str] = []
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        problems.append(f"size {size} bytes, expected {entry.size}")
        return problems  # no point hashing a file of the wrong size
    if hash_file and entry.has_digest:
        sha256, md5 = file_digests(path, progress)
        if entry.sha256 is not None and sha256 != entry.sha256:
            problems.append(f"sha256 {sha256}, expected {entry.sha256}")
        if entry.md5_prefix is not None and not md5.startswith(entry.md5_prefix):
            problems.append(f"md5 {md5} does not start with {entry.md5_prefix} as its file name says")
    return problems


# ------------------------------------------------------------------------------------------ steps


def find_in_models_dir(entry: Checkpoint, models_dir: str | Path | None) -> Path | None:
    """The file in the flat models folder under its hub name (or basename), or None."""
    folder = existing_models_dir(models_dir)
    if folder is None:
        return None
    for name in entry.flat_names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def cache_revisions(revision: str) -> tuple[str, ...]:
    """The revisions a cache lookup tries: the catalog's, then ``main`` when that is a pinned commit.

    Downloads fetch exactly the pinned commit; a copy already cached from ``main`` (an earlier download, or
    another tool's) is still used rather than fetched again, with an info log, and what records provenance
    (the dataset card's sha256, generate's sidecar) names the file actually used.
    """
    return (revision,) if revision == "main" else (revision, "main")


def find_in_hub_cache(entry: Checkpoint) -> Path | None:
    """The file in the huggingface_hub cache, or None: a look at the cache folder only.

    ``try_to_load_from_cache`` rather than ``hf_hub_download(local_files_only=True)``: the latter builds
    request headers, which in huggingface_hub 2.x may fetch a registry from the hub (a network request,
    seconds without a network) even when nothing is downloaded.
    """
    from huggingface_hub import try_to_load_from_cache

    path: Path | None = None
    for revision in cache_revisions(entry.revision):
        try:
            found = try_to_load_from_cache(entry.repo, entry.filename, cache_dir=hub_cache_dir(), revision=revision)
        except (OSError, ValueError):
            continue
        if isinstance(found, str) and Path(found).is_file():
            path = Path(found)
            if revision != entry.revision:
                log.info("%s: using the cached copy from %s (not the pinned commit %s)", entry.name, revision, entry.revision)
            break
    if path is None:
        return None
    if entry.size is not None and path.stat().st_size != entry.size:
        raise WeightsError(
            f"{path}: cached {entry.filename} has {path.stat().st_size} bytes, expected {entry.size}; "
            f"run `guides models download {entry.name}` to fetch it again"
        )
    return path


def missing_message(entry: Checkpoint, models_dir: str | Path | None, *, reason: str) -> str:
    """The one-line message for a checkpoint that cannot be found: what, where from, and how to get it."""
    folder = models_dir_from(models_dir)
    searched = f" (not in {folder})" if folder is not None else ""
    return (
        f"checkpoint {entry.name!r} ({entry.filename} from hub repo {entry.repo}) is not available{searched}: "
        f"{reason}; run `guides models download {entry.name}` (or add --download to the command), or put "
        f"{entry.folder_name} in a folder passed with --models-dir DIR (or {MODELS_DIR_ENV})"
    )


def _remove_cached_download(path: Path) -> None:
    """Delete a refused download: the cache's snapshot link and the blob it points to."""
    try:
        target = path.resolve()
        path.unlink(missing_ok=True)
        if target != path:
            target.unlink(missing_ok=True)
    except OSError as error:  # pragma: no cover - best effort, the error below still refuses the file
        log.warning("could not delete refused download %s: %s", path, error)


def probe_hub_file(repo: str, filename: str, revision: str) -> str | None:
    """Why the hub cannot serve ``filename`` of ``repo`` at ``revision`` now, or None when it can.

    One HEAD request, bounded by its own arguments (``PROBE_TIMEOUT_S``, no retries), so an unreachable
    hub fails in about a second with one reason, instead of huggingface_hub's retries with backoff
    (about 25 s and a warning per try) when a download finds no network. Nothing global is changed.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = hub_endpoint()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    # retry_on_errors is newer than our huggingface_hub floor; older releases retry only on their own terms
    no_retries = {"retry_on_errors": False} if "retry_on_errors" in inspect.signature(get_hf_file_metadata).parameters else {}
    try:
        get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S, endpoint=endpoint, **no_retries)
    except Exception as error:  # connection, timeout, HTTP (404, 401, 5xx): all mean "cannot download now"
        where = endpoint or "https://huggingface.co"
        return f"the hub at {where} cannot serve it ({type(error).__name__}: {first_line(error, limit=None)})"
    return None


def download_checkpoint(entry: Checkpoint | str, to: str | Path | None = None) -> Path:
    """Download a checkpoint into the hub cache (or into the flat folder ``to``) and check it.

    The hub client shows its progress bar. A size or sha256 mismatch deletes the file and raises.
    Offline (``HF_HUB_OFFLINE``) or unreachable hub (checked first with one bounded request,
    ``probe_hub_file``): WeightsError with the alternatives, at once. A file with a non-commercial licence
    gets a warning line saying so before it is fetched. Into ``to``, a file declaring a ``local_name`` is
    fetched into a hidden staging folder there and moved to that name (its hub name is shared).
    """
    if isinstance(entry, str):
        entry = get_checkpoint(entry)
    if is_offline():
        raise WeightsError(missing_message(entry, to, reason="HF_HUB_OFFLINE is set, nothing can be downloaded"))
    unreachable = probe_hub_file(entry.repo, entry.filename, entry.revision)
    if unreachable is not None:
        raise WeightsError(missing_message(entry, to, reason=f"download failed: {unreachable}"))
    from huggingface_hub import hf_hub_download

    if entry.non_commercial:
        log.warning("%s: %s is licensed %s: non-commercial use only", entry.name, entry.filename, entry.licence)
    kwargs: dict[str, object] = {"revision": entry.revision, "endpoint": hub_endpoint()}
    staging: Path | None = None
    if to is not None:
        kwargs["local_dir"] = Path(to).expanduser()
        if entry.local_name is not None:
            staging = Path(to).expanduser() / f".guides-download-{entry.name}"
            kwargs["local_dir"] = staging
    else:
        kwargs["cache_dir"] = hub_cache_dir()
    log.info("downloading %s from %s", entry.filename, entry.repo)
    try:
        path = Path(hf_hub_download(entry.repo, entry.filename, **kwargs))  # type: ignore[arg-type]
    except Exception as error:  # the hub client raises many types (HTTP, connection, OS): all mean "not here"
        raise WeightsError(missing_message(entry, to, reason=f"download failed ({first_line(error, limit=None)})")) from None
    if staging is not None and entry.local_name is not None:
        target = staging.parent / entry.local_name
        os.replace(path, target)
        shutil.rmtree(staging, ignore_errors=True)
        path = target
    problems = check_file(entry, path)
    if problems:
        _remove_cached_download(path)
        raise WeightsError(
            f"downloaded {entry.filename} from {entry.repo} was refused and deleted: {'; '.join(problems)}"
        )
    return path


# ------------------------------------------------------------------------------------------ public


def locate_checkpoint(
    name: str, explicit: str | Path | None = None, models_dir: str | Path | None = None
) -> Located | None:
    """Where the checkpoint is without downloading anything (explicit > models folder > hub cache), or None."""
    entry = get_checkpoint(name)
    if explicit not in (None, ""):
        path = Path(explicit).expanduser()  # type: ignore[arg-type]
        if not path.is_file():
            raise WeightsError(f"{path}: checkpoint file not found (given for {name!r})")
        return Located(path, "explicit")
    found = find_in_models_dir(entry, models_dir)
    if found is not None:
        return Located(found, "models-dir")
    found = find_in_hub_cache(entry)
    if found is not None:
        return Located(found, "hub-cache")
    return None


def resolve_checkpoint(
    name: str,
    explicit: str | Path | None = None,
    models_dir: str | Path | None = None,
    *,
    download: bool = True,
) -> Path:
    """The checkpoint file for catalog entry ``name``: explicit > models folder > hub cache > download.

    ``explicit`` must exist. ``models_dir`` (else ``GUIDES_MODELS_DIR``) is a flat folder of hub file
    names. The download step runs only when ``download`` is true and ``HF_HUB_OFFLINE`` is not set;
    otherwise a missing file is a WeightsError naming the file, the repo and how to get it.
    """
    located = locate_checkpoint(name, explicit, models_dir)
    if located is not None:
        log.debug("checkpoint %s: %s (%s)", name, located.path, located.where)
        return located.path
    entry = get_checkpoint(name)
    if not download:
        raise WeightsError(missing_message(entry, models_dir, reason="not in the hub cache, and downloading was not asked for"))
    if is_offline():
        raise WeightsError(missing_message(entry, models_dir, reason="HF_HUB_OFFLINE is set and it is not in the hub cache"))
    return download_checkpoint(entry)


# ----------------------------------------------------------------------------------- diffusers repos


def _looks_like_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "config.json").is_file()


def cached_snapshot(repo: str, revision: str) -> Path | None:
    """The hub cache's snapshot folder of ``repo`` at ``revision`` (a commit, or a branch read from
    ``refs/``), or None: the documented cache layout read directly, with no hub client call (see
    ``find_in_hub_cache`` for why)."""
    storage = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
    commit = revision
    if not is_commit(revision):
        ref = storage / "refs" / revision
        try:
            commit = ref.read_text(encoding="utf-8").strip()
        except OSError:
            return None
    folder = storage / "snapshots" / commit
    return folder if commit and folder.is_dir() else None


def _diffusers_hint(repo: str, entry: DiffusersRepo | None) -> str:
    name = entry.name if entry is not None else repo
    short = repo.rsplit("/", 1)[-1]
    return (
        f"run `guides models download {name}`, or put the repository folder as {short}/ in a folder passed "
        f"with --models-dir DIR (or {MODELS_DIR_ENV})"
    )


def resolve_diffusers_repo(
    repo_or_path: str | Path,
    models_dir: str | Path | None = None,
    *,
    download: bool = False,
) -> Path:
    """A local folder holding the diffusers repository ``repo_or_path`` (a hub id, a catalog name, or a path).

    Order: an existing folder > ``models_dir`` (else ``GUIDES_MODELS_DIR``) / the repo's name (or its full
    ``owner/name``) > the huggingface_hub cache > a download when ``download`` is true and not offline.
    Missing: WeightsError with the download hint, so the ControlNet stage can fail before any work.
    """
    text = str(repo_or_path)
    as_path = Path(text).expanduser()
    if as_path.is_dir():
        if not _looks_like_diffusers_folder(as_path):
            raise WeightsError(f"{as_path}: not a diffusers model folder (no model_index.json or config.json)")
        return as_path
    entry = get_diffusers_repo(text)
    repo = entry.repo if entry is not None else text
    if repo.count("/") != 1 or text.startswith((".", "/", "~")):
        raise WeightsError(f"{text}: no such folder, and not a hub repository id (owner/name)")
    folder = existing_models_dir(models_dir)
    if folder is not None:
        for candidate in (folder / repo.rsplit("/", 1)[-1], folder / repo):
            if candidate.is_dir() and _looks_like_diffusers_folder(candidate):
                return candidate
    revisions = cache_revisions(entry.revision) if entry is not None else ("main",)
    for revision in revisions:
        found = cached_snapshot(repo, revision)
        if found is not None and _looks_like_diffusers_folder(found):
            if entry is not None and revision != entry.revision:
                log.info("%s: using the cached copy from %s (not the pinned commit %s)", repo, revision, entry.revision)
            return found
    searched = f" (not in {folder})" if folder is not None else ""
    if not download or is_offline():
        why = "HF_HUB_OFFLINE is set and it is" if is_offline() else "it is"
        raise WeightsError(
            f"diffusers model {repo} is not available{searched}: {why} not in the hub cache; "
            + _diffusers_hint(repo, entry)
        )
    return download_diffusers_repo(repo)


def download_diffusers_repo(repo_or_name: str, to: str | Path | None = None) -> Path:
    """Download a diffusers repository (catalogued file patterns only) into the hub cache or ``to``/name."""
    entry = get_diffusers_repo(repo_or_name)
    repo = entry.repo if entry is not None else repo_or_name
    if is_offline():
        raise WeightsError(
            f"diffusers model {repo} cannot be downloaded: HF_HUB_OFFLINE is set; " + _diffusers_hint(repo, entry)
        )
    from huggingface_hub import snapshot_download

    kwargs: dict[str, object] = {"endpoint": hub_endpoint()}
    if entry is not None:
        kwargs.update(revision=entry.revision, allow_patterns=list(entry.allow_patterns))
    if to is not None:
        kwargs["local_dir"] = Path(to).expanduser() / repo.rsplit("/", 1)[-1]
    else:
        kwargs["cache_dir"] = hub_cache_dir()
    try:
        return Path(snapshot_download(repo, **kwargs))  # type: ignore[arg-type]
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"diffusers model {repo} could not be downloaded ({reason}); " + _diffusers_hint(repo, entry)) from None
