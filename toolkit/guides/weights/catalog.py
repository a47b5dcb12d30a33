"""Every checkpoint guides knows, as data: where it lives on the hub, how it is stored, what it weighs.

Two kinds of entries:

* ``Checkpoint``: one file loaded by an annotator (``resolve_checkpoint`` finds it, ``load_checkpoint_into``
  loads it);
* ``DiffusersRepo``: a whole diffusers-format repository used by the ControlNet stage (found by
  ``resolve_diffusers_repo``).

Sizes and checksums are recorded only where they are known for certain; ``None`` means "not checked".
Revisions are hub commits where a public source states the commit holding the file (cited next to each
one), so a download is reproducible; ``"main"`` (the moving branch) remains only where no commit is known,
and ``guides models list`` says so ("main (not pinned)").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from guides.errors import WeightsError

Container = Literal["state_dict", "model_dict"]

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

    ``container``: ``"state_dict"`` (the file is the state dict) or ``"model_dict"`` (a dict holding the
    state dict under ``"model"``). ``may_have_module_prefix``: keys may start with ``module.`` (saved from
    ``nn.DataParallel``). ``size``: exact bytes, checked on download and by ``guides models verify``.
    ``sha256``: full hex digest where known. ``md5_prefix``: the start of the MD5 digest that the file name
    carries (SAM's ``sam_vit_h_4b8939.pth``: MD5 ``4b8939a8...``; measured sources agree it is MD5, not sha256).
    """

    name: str
    repo: str
    filename: str
    container: Container
    licence: str
    used_by: str
    revision: str = "main"
    approx_size: int | None = None
    may_have_module_prefix: bool = False
    has_saved_computed_buffers: bool = False
    size: int | None = None
    sha256: str | None = None
    md5_prefix: str | None = None
    description: str = ""

    @property
    def basename(self) -> str:
        """The file name without the hub sub-folder (``checkpoints/sam_vit_h_4b8939.pth`` -> ``sam_vit_h_4b8939.pth``)."""
        return self.filename.rsplit("/", 1)[-1]

    @property
    def flat_names(self) -> tuple[str, ...]:
        """Names accepted in a flat models folder: the hub file name, then its basename if different."""
        return (self.filename,) if self.basename == self.filename else (self.filename, self.basename)

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


_MB = 1_000_000

CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="lineart",
            repo=ANNOTATORS_REPO,
            filename="sk_model.pth",
            revision=ANNOTATORS_COMMIT,
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart",
            size=17_173_511,
            description="informative-drawings generator (fine lines)",
        ),
        Checkpoint(
            name="lineart-coarse",
            repo=ANNOTATORS_REPO,
            filename="sk_model2.pth",
            revision=ANNOTATORS_COMMIT,
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart --coarse",
            size=17_173_511,
            description="informative-drawings generator (coarse lines)",
        ),
        Checkpoint(
            name="normals",
            repo=ANNOTATORS_REPO,
            filename="scannet.pt",
            revision=ANNOTATORS_COMMIT,
            container="model_dict",
            may_have_module_prefix=True,
            licence="MIT (surface_normal_uncertainty, Bae et al.)",
            used_by="normals",
            approx_size=291 * _MB,
            description="NormalBae NNET (EfficientNet-B5 encoder), ScanNet",
        ),
        Checkpoint(
            name="depth",
            repo=ANNOTATORS_REPO,
            filename="ZoeD_M12_N.pt",
            container="model_dict",
            has_saved_computed_buffers=True,
            licence="MIT (isl-org/ZoeDepth)",
            used_by="depth",
            size=1_443_406_099,
            description="ZoeD_N (MiDaS BEiT-L/16-384 backbone)",
        ),
        Checkpoint(
            name="sam-vit-h",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_h_4b8939.pth",
            revision=SAM_COMMIT,
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            size=2_564_550_879,
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            md5_prefix="4b8939",
            description="Segment Anything ViT-H",
        ),
        Checkpoint(
            name="sam-vit-l",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_l_0b3195.pth",
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            size=1_249_524_607,
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            md5_prefix="0b3195",
            description="Segment Anything ViT-L",
        ),
        Checkpoint(
            name="sam-vit-b",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_b_01ec64.pth",
            revision=SAM_COMMIT,
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            size=375_042_383,
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            md5_prefix="01ec64",
            description="Segment Anything ViT-B",
        ),
    )
}

DIFFUSERS_REPOS: dict[str, DiffusersRepo] = {
    r.name: r
    for r in (
        DiffusersRepo(
            name="sd15",
            repo="stable-diffusion-v1-5/stable-diffusion-v1-5",
            role="base",
            licence="CreativeML OpenRAIL-M",
            used_by="generate, reproduce",
            approx_size=5_500 * _MB,
            # stated in public code as the cache snapshot
            # models--stable-diffusion-v1-5--stable-diffusion-v1-5/snapshots/451f4fe16113bff5a5d2269ed5ad43b0592e9a14
            # (with feature_extractor/ and unet/ files; also runwayml's last commit of the same repository)
            revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
            # The fp32 safetensors of every component; skip the EMA-only and the ckpt/bin duplicates.
            allow_patterns=("*.json", "*.txt", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-canny",
            repo="lllyasviel/control_v11p_sd15_canny",
            role="controlnet",
            guide="canny",
            # stated: https://huggingface.co/lllyasviel/control_v11p_sd15_canny/resolve/115a470d547982438f70198e353a921996e2e819/diffusion_pytorch_model.fp16.safetensors
            # (imaginAIry's ControlNet configs and download scripts), and cache snapshots of that commit loaded
            # with ControlNetModel.from_pretrained
            revision="115a470d547982438f70198e353a921996e2e819",
            licence="OpenRAIL (ControlNet v1.1)",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-depth",
            repo="lllyasviel/control_v11f1p_sd15_depth",
            role="controlnet",
            guide="depth",
            # stated: https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/resolve/539f99181d33db39cf1af2e517cd8056785f0a87/diffusion_pytorch_model.fp16.safetensors
            revision="539f99181d33db39cf1af2e517cd8056785f0a87",
            licence="OpenRAIL (ControlNet v1.1)",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-lineart",
            repo="lllyasviel/control_v11p_sd15_lineart",
            role="controlnet",
            guide="lineart",
            # stated: a cache snapshot
            # models--lllyasviel--control_v11p_sd15_lineart/snapshots/8a158f547e031c5b8fbca19ead09a74767ff4db0/diffusion_pytorch_model.safetensors
            revision="8a158f547e031c5b8fbca19ead09a74767ff4db0",
            licence="OpenRAIL (ControlNet v1.1)",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-normals",
            repo="lllyasviel/control_v11p_sd15_normalbae",
            role="controlnet",
            guide="normals",
            # stated: https://huggingface.co/lllyasviel/control_v11p_sd15_normalbae/resolve/cb7296e6587a219068e9d65864e38729cd862aa8/diffusion_pytorch_model.fp16.safetensors
            revision="cb7296e6587a219068e9d65864e38729cd862aa8",
            licence="OpenRAIL (ControlNet v1.1)",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-sam",
            repo="mfidabel/controlnet-segment-anything",
            role="controlnet",
            guide="sam",
            # no commit of mfidabel/controlnet-segment-anything found stated anywhere: main (not pinned)
            licence="unverified: see the model card",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "*.safetensors", "*.bin"),
        ),
    )
}


def get_checkpoint(name: str) -> Checkpoint:
    """The catalog entry ``name``; an unknown name is a WeightsError listing the known ones."""
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise WeightsError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}") from None


def get_diffusers_repo(name_or_repo: str) -> DiffusersRepo | None:
    """The diffusers entry with this short name or hub repo id, or None if it is not catalogued."""
    if name_or_repo in DIFFUSERS_REPOS:
        return DIFFUSERS_REPOS[name_or_repo]
    for entry in DIFFUSERS_REPOS.values():
        if entry.repo == name_or_repo:
            return entry
    return None
