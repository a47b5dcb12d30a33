"""Checkpoints: the catalog (what exists), resolution (where it is), loading (safely and fast).

Contract used by every learned annotator and the ControlNet stage:

* ``guides.weights.catalog.CHECKPOINTS[name]`` -> ``Checkpoint`` (repo, filename, container, size,
  sha256, licence, used_by): a read-only view of what the registered annotators declare
  (``Annotator.checkpoints``, plugins included; ``guides models list`` and ``models/README.md`` list
  them). ``DIFFUSERS_REPOS`` lists the diffusers repositories of the ControlNet stage: ``sd15`` and a
  ``controlnet-KIND`` for each ControlNet an annotator declares (``Annotator.controlnets``).
* ``resolve_checkpoint(name, explicit=None, models_dir=None, *, download=True) -> Path``: explicit file >
  ``models_dir`` / ``GUIDES_MODELS_DIR`` (flat folder, hub file names; SAM also by basename) >
  huggingface_hub cache > download (unless ``download=False`` or ``HF_HUB_OFFLINE``). Raises
  ``guides.errors.WeightsError`` with the one-line message users see (file, repo, the
  ``guides models download NAME`` command, the ``--models-dir`` alternative). A named models folder
  that does not exist is an error, not a miss.
* ``resolve_diffusers_repo(repo_or_path, models_dir=None, *, download=False) -> Path``: a local folder of
  a diffusers repo (given folder > models folder / repo name > hub cache > download when asked), else
  WeightsError with the download hint; accepts hub ids and catalog names (``sd15``, ``controlnet-depth``).
* ``load_checkpoint_into(factory, path, *, container, key_filters=()) -> nn.Module``: builds
  ``factory()`` on the meta device (``with torch.device("meta")``: no wasted random initialisation, nothing
  global patched; the buffers the network computes are filled by its ``fill_computed_buffers()`` or, for a
  network without one, taken from one plain build), reads the file with ``weights_only=True``
  (memory-mapped), applies only the named key filters (``"strip_module_prefix"``,
  ``"drop_computed_buffers"`` or the functions themselves), loads strictly by assignment
  (``load_state_dict(assign=True)``), returns the network in eval mode on the CPU.
* ``read_state_dict(path, *, container) -> dict[str, Tensor]``: the safe read alone.
* ``file_sha256(path) -> str`` (``guides.weights.digest``): a file's sha256, computed once per
  (resolved path, size, mtime_ns) in a bounded thread-safe cache; for the dataset card and sidecars.
* ``load_named_checkpoint(name, factory, explicit=None, models_dir=None, key_filters=None, *, download=True)
  -> nn.Module``: resolve + load with the catalog's container and key filters
  (``CHECKPOINTS[name].key_filters``). The simplest call for an annotator:
  ``load_named_checkpoint("depth", zoed_n, options.checkpoint, options.models_dir)``.

Importing this package does not import torch or huggingface_hub.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from guides.weights.catalog import CHECKPOINTS, DIFFUSERS_REPOS, Checkpoint, DiffusersRepo, get_checkpoint
    from guides.weights.digest import file_sha256
    from guides.weights.load import (
        KEY_FILTERS,
        KeyFilterSpec,
        drop_computed_buffers,
        load_checkpoint_into,
        read_state_dict,
        strip_module_prefix,
        unwrap_model_dict,
    )
    from guides.weights.resolve import resolve_checkpoint, resolve_diffusers_repo

#: Where each public name lives. Imported when first used (PEP 562), so that importing
#: ``guides.weights.declarations`` (every annotator module does) costs no zipfile, hashlib or resolver
#: import: a command that needs no checkpoint starts faster.
_EXPORTS = {
    "CHECKPOINTS": "catalog", "DIFFUSERS_REPOS": "catalog", "Checkpoint": "catalog", "DiffusersRepo": "catalog",
    "get_checkpoint": "catalog", "file_sha256": "digest", "KEY_FILTERS": "load", "KeyFilterSpec": "load",
    "drop_computed_buffers": "load", "load_checkpoint_into": "load", "read_state_dict": "load",
    "strip_module_prefix": "load", "unwrap_model_dict": "load", "resolve_checkpoint": "resolve",
    "resolve_diffusers_repo": "resolve",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guides.weights' has no attribute {name!r}")
    return getattr(importlib.import_module(f"guides.weights.{module}"), name)


__all__ = [
    "CHECKPOINTS",
    "DIFFUSERS_REPOS",
    "KEY_FILTERS",
    "Checkpoint",
    "DiffusersRepo",
    "drop_computed_buffers",
    "file_sha256",
    "get_checkpoint",
    "load_checkpoint_into",
    "load_named_checkpoint",
    "read_state_dict",
    "resolve_checkpoint",
    "resolve_diffusers_repo",
    "strip_module_prefix",
    "unwrap_model_dict",
]


def load_named_checkpoint(
    name: str,
    factory: Callable[[], nn.Module],
    explicit: str | Path | None = None,
    models_dir: str | Path | None = None,
    key_filters: Sequence[KeyFilterSpec] | None = None,
    *,
    download: bool = True,
) -> nn.Module:
    """Resolve the catalog checkpoint ``name`` and load it into ``factory()`` the way the catalog says.

    Container and key filters come from the entry (``Checkpoint.key_filters``: normals strips
    ``module.``, depth drops its saved relative_position_index tables after checking them);
    ``key_filters`` replaces the catalog's list when given; ``download`` as in ``resolve_checkpoint``.
    """
    from guides.weights.catalog import get_checkpoint
    from guides.weights.load import load_checkpoint_into
    from guides.weights.resolve import resolve_checkpoint

    entry = get_checkpoint(name)
    path = resolve_checkpoint(name, explicit=explicit, models_dir=models_dir, download=download)
    filters = entry.key_filters if key_filters is None else tuple(key_filters)
    return load_checkpoint_into(factory, path, container=entry.container, key_filters=filters)
