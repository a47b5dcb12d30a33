"""Every checkpoint and diffusers repository guides knows, collected from the annotators' declarations.

Each annotator declares its own checkpoint files (``Annotator.checkpoints``) and ControlNets
(``Annotator.controlnets``) in its module (``guides.weights.declarations`` holds the types); this module
gathers them from the registry, built-in annotators first, then plugins, and adds the one model no
annotator owns: the SD 1.5 base of the ControlNet stage. ``CHECKPOINTS`` and ``DIFFUSERS_REPOS`` are
read-only views computed on each use (no state of their own), so an installed plugin's checkpoints appear
in ``guides models`` and resolve like the built-in ones.

Two names for one file with different facts, or two files under one name, is a declaration error
(``TypeError``), found by ``tests/weights/test_catalog.py``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping

from guides.errors import WeightsError
from guides.weights.declarations import (
    ANNOTATORS_COMMIT,
    ANNOTATORS_REPO,
    MB,
    SAM_COMMIT,
    SAM_REPO,
    Checkpoint,
    Container,
    ControlNet,
    DiffusersRepo,
    is_commit,
    revision_text,
)

__all__ = [
    "ANNOTATORS_COMMIT", "ANNOTATORS_REPO", "BASE_MODELS", "CHECKPOINTS", "DIFFUSERS_REPOS", "SAM_COMMIT", "SAM_REPO",
    "Checkpoint", "Container", "ControlNet", "DiffusersRepo", "get_checkpoint", "get_diffusers_repo", "is_commit",
    "revision_text",
]

log = logging.getLogger(__name__)

#: The diffusers repositories no annotator owns: the base model of the ControlNet stage.
BASE_MODELS: tuple[DiffusersRepo, ...] = (
    DiffusersRepo(
        name="sd15",
        repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
        role="base",
        licence="CreativeML OpenRAIL-M",
        used_by="generate, reproduce",
        approx_size=5_500 * MB,
        # stated in public code as the cache snapshot
        # models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/451f4fe16113bff5a5d2269ed5ad43b0592e9a14
        # (with feature_extractor/ and unet/ files; also runwayml's last commit of the same repository)
        revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        # The fp32 safetensors of every component; skip the EMA-only and the ckpt/bin duplicates.
        allow_patterns=("*.json", "*.txt", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors"),
    ),
)


def _annotator_classes() -> Iterator[type]:
    """Registered annotator classes, built-ins first; a plugin that cannot be loaded is warned about and skipped."""
    from guides.registry import REGISTRY, loadable_classes

    yield from loadable_classes(REGISTRY)


def _declared_checkpoints() -> dict[str, Checkpoint]:
    found: dict[str, Checkpoint] = {}
    for cls in _annotator_classes():
        for checkpoint in cls.checkpoints:
            if not checkpoint.used_by:
                checkpoint = dataclasses.replace(checkpoint, used_by=cls.name)
            known = found.get(checkpoint.name)
            if known is None:
                found[checkpoint.name] = checkpoint
            elif dataclasses.replace(known, used_by="") != dataclasses.replace(checkpoint, used_by=""):
                raise TypeError(f"checkpoint {checkpoint.name!r} is declared twice with different facts "
                                f"({known.repo}/{known.filename} and {checkpoint.repo}/{checkpoint.filename})")
    return found


def _declared_repositories() -> dict[str, DiffusersRepo]:
    found = {repo.name: repo for repo in BASE_MODELS}
    for kind, (controlnet, annotators) in declared_controlnets().items():
        repo = controlnet.repository(kind, annotators)
        if repo.name in found:
            raise TypeError(f"diffusers repository {repo.name!r} is declared twice")
        found[repo.name] = repo
    return found


def declared_controlnets(builtin_only: bool = False) -> dict[str, tuple[ControlNet, tuple[str, ...]]]:
    """Guide kind -> (its ControlNet, the annotators declaring it), in registry order (built-ins first).

    Several annotators may declare one kind (hed, pidinet, teed: ``softedge``), with the same facts apart
    from ``when``; anything else is a declaration error (``TypeError``)."""
    from guides.registry import REGISTRY, loadable_classes

    registry = {name: spec for name, spec in REGISTRY.items() if spec.builtin or not builtin_only}
    found: dict[str, tuple[ControlNet, tuple[str, ...]]] = {}
    for cls in loadable_classes(registry):
        for controlnet in cls.controlnets:
            kind = controlnet.kind_for(cls.name)
            known = found.get(kind)
            if known is None:
                found[kind] = (controlnet, (cls.name,))
            elif not known[0].same_facts(controlnet):
                raise TypeError(f"ControlNet kind {kind!r} is declared with different facts by "
                                f"{', '.join(known[1])} ({known[0].repo}) and {cls.name} ({controlnet.repo})")
            elif cls.name not in known[1]:
                found[kind] = (known[0], (*known[1], cls.name))
    return found


def guide_controlnet(cls: type, options: object) -> ControlNet | None:
    """The ControlNet a guide of annotator class ``cls`` made with ``options`` is meant for: the first it
    declares whose ``when`` matches (``None``: none)."""
    return next((controlnet for controlnet in cls.controlnets if controlnet.selected_by(options)), None)


class _Declared(Mapping):  # type: ignore[type-arg]
    """A read-only mapping recomputed from the declarations on each use."""

    def __init__(self, collect) -> None:  # type: ignore[no-untyped-def]
        self._collect = collect

    def __getitem__(self, name: str):  # type: ignore[no-untyped-def]
        return self._collect()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._collect())

    def __len__(self) -> int:
        return len(self._collect())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)})"


#: Checkpoint name -> ``Checkpoint``, from every registered annotator's ``checkpoints``.
CHECKPOINTS: Mapping[str, Checkpoint] = _Declared(_declared_checkpoints)
#: Short name -> ``DiffusersRepo``: ``BASE_MODELS`` and every registered annotator's ``controlnets``.
DIFFUSERS_REPOS: Mapping[str, DiffusersRepo] = _Declared(_declared_repositories)


def get_checkpoint(name: str) -> Checkpoint:
    """The catalog entry ``name``; an unknown name is a WeightsError listing the known ones."""
    checkpoints = dict(CHECKPOINTS)
    try:
        return checkpoints[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(checkpoints)}") from None


def get_diffusers_repo(name_or_repo: str) -> DiffusersRepo | None:
    """The diffusers entry with this short name or hub repo id, or None if it is not catalogued."""
    repositories = dict(DIFFUSERS_REPOS)
    if name_or_repo in repositories:
        return repositories[name_or_repo]
    for entry in repositories.values():
        if entry.repo == name_or_repo:
            return entry
    return None


def guide_checkpoints(annotator: str, options: object | None = None) -> tuple[str, ...]:
    """Names of the checkpoints annotator ``annotator`` loads with ``options`` (default: its defaults)."""
    from guides.registry import get

    cls = get(annotator).annotator_class()
    return cls.checkpoint_names(cls.Options() if options is None else options)


