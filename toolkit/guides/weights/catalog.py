"""Every checkpoint guides knows, as data: where it lives on the hub, how it is stored, what it weighs.

Two kinds of entries:

* ``Checkpoint``: one file loaded by an annotator (``resolve_checkpoint`` finds it, ``load_checkpoint_into``
  loads it);
* ``DiffusersRepo``: a whole diffusers-format repository used by the ControlNet stage (found by
  ``resolve_diffusers_repo``).

Sizes and checksums are recorded only where they are known for certain; ``None`` means "not checked".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from guides.errors import WeightsError

Container = Literal["state_dict", "model_dict"]

ANNOTATORS_REPO = "lllyasviel/Annotators"
SAM_REPO = "ybelkada/segment-anything"


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file and everything needed to find, check and load it.

    ``container``: ``"state_dict"`` (the file is the state dict) or ``"model_dict"`` (a dict holding the
    state dict under ``"model"``). ``may_have_module_prefix``: keys may start with ``module.`` (saved from
    ``nn.DataParallel``). ``size``: exact bytes, checked on download and by ``guides models verify``.
    ``sha256``: full hex digest where known. ``sha256_prefix``: the start of the digest that the hub file
    name carries (SAM names its files that way).
    """

    name: str
    repo: str
    filename: str
    container: Container
    licence: str
    used_by: str
    approx_size: int
    revision: str = "main"
    may_have_module_prefix: bool = False
    size: int | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    description: str = ""

    @property
    def basename(self) -> str:
        """The file name without the hub sub-folder (``checkpoints/sam_vit_h_4b8939.pth`` -> ``sam_vit_h_4b8939.pth``)."""
        return self.filename.rsplit("/", 1)[-1]

    @property
    def flat_names(self) -> tuple[str, ...]:
        """Names accepted in a flat models folder: the hub file name, then its basename if different."""
        return (self.filename,) if self.basename == self.filename else (self.filename, self.basename)

    def digest_matches(self, hexdigest: str) -> bool:
        """Whether a computed sha256 agrees with what is recorded (full digest, else the name's prefix)."""
        hexdigest = hexdigest.lower()
        if self.sha256 is not None:
            return hexdigest == self.sha256
        if self.sha256_prefix is not None:
            return hexdigest.startswith(self.sha256_prefix)
        return True

    @property
    def has_digest(self) -> bool:
        return self.sha256 is not None or self.sha256_prefix is not None


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


_MB = 1_000_000

CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            name="lineart",
            repo=ANNOTATORS_REPO,
            filename="sk_model.pth",
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart",
            approx_size=17 * _MB,
            description="informative-drawings generator (fine lines)",
        ),
        Checkpoint(
            name="lineart-coarse",
            repo=ANNOTATORS_REPO,
            filename="sk_model2.pth",
            container="state_dict",
            licence="MIT (informative-drawings, Chan et al.)",
            used_by="lineart --coarse",
            approx_size=17 * _MB,
            description="informative-drawings generator (coarse lines)",
        ),
        Checkpoint(
            name="normals",
            repo=ANNOTATORS_REPO,
            filename="scannet.pt",
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
            licence="MIT (isl-org/ZoeDepth)",
            used_by="depth",
            approx_size=1_443 * _MB,
            description="ZoeD_N (MiDaS BEiT-L/16-384 backbone)",
        ),
        Checkpoint(
            name="sam-vit-h",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_h_4b8939.pth",
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            approx_size=2_564 * _MB,
            sha256_prefix="4b8939",
            description="Segment Anything ViT-H",
        ),
        Checkpoint(
            name="sam-vit-l",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_l_0b3195.pth",
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            approx_size=1_250 * _MB,
            sha256_prefix="0b3195",
            description="Segment Anything ViT-L",
        ),
        Checkpoint(
            name="sam-vit-b",
            repo=SAM_REPO,
            filename="checkpoints/sam_vit_b_01ec64.pth",
            container="state_dict",
            licence="Apache-2.0 (facebookresearch/segment-anything)",
            used_by="sam, mask",
            approx_size=375 * _MB,
            sha256_prefix="01ec64",
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
            # The fp32 safetensors of every component; skip the EMA-only and the ckpt/bin duplicates.
            allow_patterns=("*.json", "*.txt", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-canny",
            repo="lllyasviel/control_v11p_sd15_canny",
            role="controlnet",
            guide="canny",
            licence="CreativeML OpenRAIL-M",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-depth",
            repo="lllyasviel/control_v11f1p_sd15_depth",
            role="controlnet",
            guide="depth",
            licence="CreativeML OpenRAIL-M",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-lineart",
            repo="lllyasviel/control_v11p_sd15_lineart",
            role="controlnet",
            guide="lineart",
            licence="CreativeML OpenRAIL-M",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-normals",
            repo="lllyasviel/control_v11p_sd15_normalbae",
            role="controlnet",
            guide="normals",
            licence="CreativeML OpenRAIL-M",
            used_by="generate, reproduce",
            approx_size=1_450 * _MB,
            allow_patterns=("*.json", "diffusion_pytorch_model.safetensors"),
        ),
        DiffusersRepo(
            name="controlnet-sam",
            repo="mfidabel/controlnet-segment-anything",
            role="controlnet",
            guide="sam",
            licence="CreativeML OpenRAIL-M",
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
