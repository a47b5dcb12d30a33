"""What an annotator declares about the models it uses, as data: the checkpoint files it loads
(``Checkpoint``) and the ControlNets its guide is meant for (``ControlNet``); and the diffusers-format
repositories of the ControlNet stage (``DiffusersRepo``). Plain frozen dataclasses (no torch, no hub
client): ``guides.weights.catalog`` collects the declarations of every registered annotator.

Revisions are hub commits where a public source states the commit holding the file (cited next to each
declaration), so a download is reproducible; ``"main"`` (the moving branch) remains only where no commit
is known, and ``guides models list`` says so ("main (not pinned)").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

Container = Literal["state_dict", "model_dict", "state_dict_entry", "safetensors"]

#: Where ``--models-dir`` is read from when not given (a flat folder of checkpoints under their hub file names).
MODELS_DIR_ENV = "GUIDES_MODELS_DIR"

ANNOTATORS_REPO = "lllyasviel/Annotators"
SAM_REPO = "ybelkada/segment-anything"
_COMMIT = re.compile(r"[0-9a-f]{40}")

# Commits found stated in public sources (the code search index of public repositories; none is invented):
# lllyasviel/Annotators 982e7ed...: download manifests fetch
#   https://huggingface.co/lllyasviel/Annotators/resolve/982e7edaec38759d914a963c48c4726685de7d96/sk_model.pth
#   and .../sk_model2.pth (with their sha256), and code loads controlnet_aux's NormalBaeDetector (scannet.pt)
#   from the cache snapshot models--lllyasviel--Annotators/snapshots/982e7edaec38759d914a963c48c4726685de7d96.
#   No source names ZoeD_M12_N.pt at a commit: depth stays on main.
ANNOTATORS_COMMIT = "982e7edaec38759d914a963c48c4726685de7d96"
# ybelkada/segment-anything 7790786...: pinned as
#   https://huggingface.co/ybelkada/segment-anything/resolve/7790786db131bcdc639f24a915d9f2c331d843ee/checkpoints/sam_vit_h_4b8939.pth
#   (an audit records that revision with 2,564,550,879 bytes and the sha256 below) and a cache snapshot
#   .../snapshots/7790786db131bcdc639f24a915d9f2c331d843ee/checkpoints/sam_vit_b_01ec64.pth. None names
#   sam_vit_l_0b3195.pth at a commit: sam-vit-l stays on main.
SAM_COMMIT = "7790786db131bcdc639f24a915d9f2c331d843ee"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file and everything needed to find, check and load it.

    ``container``: ``"state_dict"`` (the file is the state dict), ``"model_dict"`` (a dict holding the
    state dict under ``"model"``) or ``"state_dict_entry"`` (a dict holding it under ``"state_dict"``, as
    training scripts save a checkpoint with its epoch: PiDiNet's ``table5_pidinet.pth``) or ``"safetensors"``
    (a safetensors file: a flat name -> tensor table, memory-mapped, no pickle at all; the ``model.safetensors``
    of transformers-layout hub repositories).
    ``may_have_module_prefix``: keys may start with ``module.`` (saved from ``nn.DataParallel``). ``size``:
    exact bytes, checked on download and by ``guides models verify``. ``sha256``: full hex digest where
    known. ``md5_prefix``: the start of the MD5 digest that the file name carries (SAM's
    ``sam_vit_h_4b8939.pth``: MD5 ``4b8939a8...``; measured sources agree it is MD5, not sha256).
    """

    name: str
    repo: str
    filename: str
    container: Container
    licence: str
    used_by: str = ""
    """Which commands load it (``lineart --coarse``); the catalog fills in the annotator's name if empty."""
    revision: str = "main"
    approx_size: int | None = None
    may_have_module_prefix: bool = False
    has_saved_computed_buffers: bool = False
    size: int | None = None
    sha256: str | None = None
    md5_prefix: str | None = None
    description: str = ""
    when: tuple[tuple[str, object], ...] = ()
    """The option values that select this file among its annotator's checkpoints (``(("coarse", True),)``);
    empty: always loaded."""
    local_name: str | None = None
    """The file's name in a flat models folder when its hub file name is shared by other declared files
    (the three Depth Anything V2 ``-hf`` repositories each hold a ``model.safetensors``): the only name
    looked up there (besides ``<repo name>/<file name>``), and the name ``guides models download --to DIR``
    writes it under. None: the hub name."""
    non_commercial: bool = False
    """The licence forbids commercial use (CC-BY-NC-4.0): ``guides models list`` marks it and a download
    says so in a warning line."""

    def selected_by(self, options: object) -> bool:
        """Whether an annotator with ``options`` loads this file (every ``when`` pair matches)."""
        return all(getattr(options, name, None) == value for name, value in self.when)

    @property
    def basename(self) -> str:
        """The file name without the hub sub-folder (``checkpoints/sam_vit_h_4b8939.pth`` -> ``sam_vit_h_4b8939.pth``)."""
        return self.filename.rsplit("/", 1)[-1]

    @property
    def flat_names(self) -> tuple[str, ...]:
        """Names accepted in a flat models folder: ``local_name`` where declared (a hub name shared by several
        files would be ambiguous there), then ``<repo name>/<hub file name>`` (the repository's folder, as a
        ``--local-dir`` download makes it); else the hub file name, then its basename if different."""
        if self.local_name is not None:
            return (self.local_name, f"{self.repo.rsplit('/', 1)[-1]}/{self.filename}")
        return (self.filename,) if self.basename == self.filename else (self.filename, self.basename)

    @property
    def folder_name(self) -> str:
        """The name to give the file in a flat models folder (``local_name``, else the basename)."""
        return self.local_name if self.local_name is not None else self.basename

    @property
    def key_filters(self) -> tuple[str, ...]:
        """The named key transformations (guides.weights.load.KEY_FILTERS) this file needs, in order."""
        filters: list[str] = []
        if self.may_have_module_prefix:
            filters.append("strip_module_prefix")
        if self.has_saved_computed_buffers:
            filters.append("drop_computed_buffers")
        return tuple(filters)

    @property
    def size_hint(self) -> int:
        """The exact size where recorded, else the approximate one (for listings and READMEs)."""
        size = self.size if self.size is not None else self.approx_size
        assert size is not None, f"{self.name}: record size or approx_size"
        return size

    @property
    def has_digest(self) -> bool:
        """Whether a checksum is recorded (a full sha256, or the MD5 prefix of the file name)."""
        return self.sha256 is not None or self.md5_prefix is not None

    @property
    def pinned(self) -> bool:
        """Whether ``revision`` is a commit (reproducible) rather than a branch such as ``main``."""
        return is_commit(self.revision)


@dataclass(frozen=True)
class DiffusersRepo:
    """A diffusers-format hub repository (a folder of configs and weights) used by the ControlNet stage."""

    name: str
    repo: str
    role: Literal["base", "controlnet"]
    licence: str
    used_by: str
    approx_size: int
    revision: str = "main"
    guide: str | None = None
    """The guide kind of a ControlNet (``guides generate --control KIND``)."""
    scale: float | None = None
    """ControlNet conditioning scale of the reference runs (ControlNets only)."""
    annotators: tuple[str, ...] = ()
    """The annotators whose guides are meant for this ControlNet (ControlNets only), registry order."""
    base: str = "sd15"
    """The base model family (``sd15``, ``sdxl``)."""
    # Files worth fetching: diffusers needs configs and one weights variant, not every format in the repo.
    allow_patterns: tuple[str, ...] = field(default=("*.json", "*.txt", "*.safetensors"))

    @property
    def pinned(self) -> bool:
        """Whether ``revision`` is a commit (reproducible) rather than a branch such as ``main``."""
        return is_commit(self.revision)


def is_commit(revision: str) -> bool:
    """A full 40-hex-digit commit id (what a reproducible download pins)."""
    return bool(_COMMIT.fullmatch(revision))


def revision_text(entry: Checkpoint | DiffusersRepo) -> str:
    """The revision as ``guides models list`` shows it: the short commit, or ``main (not pinned)``."""
    return entry.revision[:12] if entry.pinned else f"{entry.revision} (not pinned)"




MB = 1_000_000


@dataclass(frozen=True)
class ControlNet:
    """A ControlNet an annotator's guide is meant for (diffusers format on the hub), declared by the annotator.

    ``scale``: the conditioning scale the reference runs use. The catalog lists it as the ``DiffusersRepo``
    ``name`` (default ``controlnet-<annotator>``), used by ``guides generate``/``reproduce``."""

    repo: str
    licence: str
    approx_size: int
    revision: str = "main"
    scale: float = 0.5
    name: str | None = None
    allow_patterns: tuple[str, ...] = ("*.json", "diffusion_pytorch_model.safetensors")
    kind: str | None = None
    """The guide kind ``guides generate --control KIND`` names (default: the annotator's name); several
    annotators may declare one kind (hed, pidinet and teed: ``softedge``) with the same facts."""
    when: tuple[tuple[str, object], ...] = ()
    """The option values under which the guide is meant for this ControlNet (hed ``(("scribble", True),)``);
    empty: always. The first declared ControlNet whose ``when`` matches is the guide's ControlNet."""
    base: str = "sd15"
    """The base model family (``sd15``; ``sdxl`` ones are recorded, ``guides generate`` runs SD 1.5 only)."""
    in_reference_suite: bool = False
    """Whether ``refs/`` holds this kind's reference guide and expected image (``guides reproduce`` runs it)."""

    def selected_by(self, options: object) -> bool:
        """Whether a guide made with ``options`` is meant for this ControlNet (every ``when`` pair matches)."""
        return all(getattr(options, name, None) == value for name, value in self.when)

    def kind_for(self, annotator: str) -> str:
        """The guide kind of this ControlNet when annotator ``annotator`` declares it (``kind`` or that name)."""
        return self.kind or annotator

    def same_facts(self, other: ControlNet) -> bool:
        """Whether ``other`` declares the same ControlNet (everything but ``when``, which is per annotator)."""
        return replace(self, when=()) == replace(other, when=())

    def repository(self, kind: str, annotators: tuple[str, ...]) -> DiffusersRepo:
        """This ControlNet as the catalog's entry for guide kind ``kind``, made by ``annotators``."""
        return DiffusersRepo(
            name=self.name or f"controlnet-{kind}", repo=self.repo, role="controlnet", licence=self.licence,
            used_by="generate, reproduce" if self.in_reference_suite else (
                "generate" if self.base == "sd15" else f"nothing here ({self.base}; recorded)"),
            approx_size=self.approx_size, revision=self.revision, guide=kind, scale=self.scale,
            allow_patterns=self.allow_patterns, annotators=annotators, base=self.base,
        )
