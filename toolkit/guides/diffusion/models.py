"""Finding and loading the diffusers models of the ControlNet stage.

Finding happens first and all at once (``locate_models``): every model a run needs (the base model,
each ControlNet, and the annotator checkpoints when we make the guides) is looked up before any work,
and everything missing is reported in one ``WeightsError``. Lookup goes through
``guides.weights.resolve_diffusers_repo``: a local diffusers folder > ``--models-dir`` / the repo's name >
the huggingface_hub cache > a download only when asked for.

Loading (``load_base``, ``load_controlnet``) builds each component once so that several generations
(``guides reproduce`` runs six) share them. torch, diffusers and transformers are imported inside the
functions: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ..errors import UsageError, WeightsError
from ..imaging import first_line

logger = logging.getLogger(__name__)

Source = Literal["local-folder", "models-dir", "hub-cache", "downloaded", "missing"]


@dataclasses.dataclass(frozen=True)
class ModelLocation:
    """Where one diffusers model is: its id as given, the folder, how it was found, the hub revision."""

    role: Literal["base", "controlnet"]
    kind: str | None
    """The guide kind of a ControlNet (None for the base model)."""
    model_id: str
    path: Path | None
    source: Source
    revision: str | None = None
    """The hub commit (from the cache's snapshot folder name); None for local folders."""
    problem: str | None = None
    """The weights module's message when the model is missing."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "kind": self.kind,
            "id": self.model_id,
            "path": None if self.path is None else str(self.path),
            "source": self.source,
            "revision": self.revision,
        }


@dataclasses.dataclass(frozen=True)
class CheckpointLocation:
    """Where one annotator checkpoint is (used when our annotators make the guides)."""

    name: str
    path: Path | None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": None if self.path is None else str(self.path)}


def _source_of(model_id: str, found: Path, models_dir: str | os.PathLike | None) -> tuple[Source, str | None]:
    if Path(model_id).expanduser().is_dir():
        return "local-folder", None
    if found.parent.name == "snapshots":
        return "hub-cache", found.name
    return "models-dir", None


def locate_model(
    role: Literal["base", "controlnet"],
    model_id: str,
    kind: str | None = None,
    models_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
) -> ModelLocation:
    """Find one diffusers model without loading it; a missing model comes back with its ``problem``."""
    from ..weights import resolve_diffusers_repo

    try:
        found = Path(resolve_diffusers_repo(model_id, models_dir, download=False))
    except WeightsError as error:
        if not download:
            return ModelLocation(role, kind, model_id, None, "missing", problem=str(error))
        try:
            found = Path(resolve_diffusers_repo(model_id, models_dir, download=True))
        except WeightsError as download_error:
            return ModelLocation(role, kind, model_id, None, "missing", problem=str(download_error))
        _, revision = _source_of(model_id, found, models_dir)
        return ModelLocation(role, kind, model_id, found, "downloaded", revision)
    problem = _check_folder(role, found)
    source, revision = _source_of(model_id, found, models_dir)
    if problem is not None:
        return ModelLocation(role, kind, model_id, None, "missing", revision, problem=problem)
    return ModelLocation(role, kind, model_id, found, source, revision)


def _check_folder(role: str, folder: Path) -> str | None:
    """A base model needs model_index.json and its components; a ControlNet a config.json."""
    if role == "base":
        missing = [
            name
            for name in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")
            if not (folder / name).is_file()
        ]
        if not (folder / "tokenizer").is_dir():
            missing.append("tokenizer/")
        if not (folder / "scheduler").is_dir():
            missing.append("scheduler/")
        if missing:
            return f"{folder}: not a Stable Diffusion model folder (missing {', '.join(missing)})"
        return None
    if not (folder / "config.json").is_file():
        return f"{folder}: not a ControlNet model folder (no config.json)"
    return None


def locate_checkpoint(name: str, models_dir: str | os.PathLike | None, *, download: bool = False) -> CheckpointLocation:
    """Find one annotator checkpoint without loading it (``problem`` set when missing)."""
    from ..weights import resolve_checkpoint

    try:
        return CheckpointLocation(name, Path(resolve_checkpoint(name, None, models_dir, download=download)))
    except WeightsError as error:
        return CheckpointLocation(name, None, problem=str(error))


def locate_models(
    base_model: str,
    controlnets: Mapping[str, str],
    models_dir: str | os.PathLike | None = None,
    *,
    checkpoints: Iterable[str] = (),
    download: bool = False,
) -> tuple[ModelLocation, dict[str, ModelLocation], dict[str, CheckpointLocation]]:
    """Find the base model, every ControlNet (kind -> id) and annotator checkpoint; nothing is loaded."""
    base = locate_model("base", base_model, None, models_dir, download=download)
    nets = {kind: locate_model("controlnet", model_id, kind, models_dir, download=download) for kind, model_id in controlnets.items()}
    found_checkpoints = {name: locate_checkpoint(name, models_dir, download=download) for name in dict.fromkeys(checkpoints)}
    return base, nets, found_checkpoints


def missing_problems(
    base: ModelLocation, nets: Mapping[str, ModelLocation], checkpoints: Mapping[str, CheckpointLocation] | None = None
) -> list[str]:
    """The messages of every missing model, in a stable order (base, ControlNets, checkpoints)."""
    problems = [base.problem] if base.problem else []
    problems += [net.problem for net in nets.values() if net.problem]
    problems += [c.problem for c in (checkpoints or {}).values() if c.problem]
    return problems  # type: ignore[return-value]


def raise_if_missing(problems: list[str]) -> None:
    """One ``WeightsError`` naming every missing model, each with the weights module's hint (one line
    for one model, then one line per model)."""
    if not problems:
        return
    count = len(problems)
    if count == 1:
        raise WeightsError(f"nothing was run: {problems[0]} (or pass --download)")
    lines = "\n".join(f"  - {problem}" for problem in problems)
    raise WeightsError(
        f"{count} model{'s are' if count > 1 else ' is'} missing, nothing was run "
        f"(download with `guides models download NAME`, or pass --download):\n{lines}"
    )


def parse_controlnet_overrides(values: Iterable[str], allowed: Iterable[str]) -> dict[str, str]:
    """``KIND=ID_OR_PATH`` strings -> {kind: id}; unknown kinds and malformed values are usage errors."""
    allowed = tuple(allowed)
    overrides: dict[str, str] = {}
    for value in values:
        kind, sep, model_id = value.partition("=")
        kind = kind.strip()
        if not sep or not kind or not model_id.strip():
            raise UsageError(f"--controlnet {value!r}: expected KIND=ID_OR_PATH, e.g. canny=lllyasviel/control_v11p_sd15_canny")
        if kind not in allowed:
            raise UsageError(f"--controlnet {value!r}: unknown kind {kind!r}; use one of {', '.join(allowed)}")
        overrides[kind] = model_id.strip()
    return overrides


# ------------------------------------------------------------------------------------------- loading


def _loading_kwargs(dtype: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"torch_dtype": dtype}
    if importlib.util.find_spec("accelerate") is None:
        # Without accelerate diffusers warns and falls back to this; say it ourselves, once, at debug level.
        kwargs["low_cpu_mem_usage"] = False
    return kwargs


#: Weight file names per library, in the order diffusers / transformers prefer them (no variant given):
#: a single safetensors file, a sharded safetensors index, then the pickle forms.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def weight_files(folder: Path, library: Literal["diffusers", "transformers"] = "diffusers") -> tuple[tuple[Path, ...], bool | None]:
    """The weight file(s) a ``from_pretrained(folder)`` loads, and the ``use_safetensors`` value that makes
    the library load exactly those (so the record names what was really read).

    Safetensors before pickles, a single file before a sharded index (the index plus the shards it lists),
    as both libraries choose. Nothing found: ``((), None)`` (the library then raises its own error).
    """
    for name in _DIFFUSERS_WEIGHTS if library == "diffusers" else _TRANSFORMERS_WEIGHTS:
        single = folder / name
        if single.is_file():
            return (single,), name.endswith(".safetensors")
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards = []  # the library reports the broken index itself
            return (index, *(folder / shard for shard in shards)), name.endswith(".safetensors")
    return (), None


def describe_files(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """``[{"file", "size", "sha256"}]`` of model files that were loaded (as the dataset card records
    checkpoints); the digest is computed once per file version (``guides.weights.digest``)."""
    from ..weights.digest import file_sha256

    return [{"file": str(path), "size": path.stat().st_size, "sha256": file_sha256(path)} for path in paths]


@dataclasses.dataclass
class BaseComponents:
    """The loaded parts of a Stable Diffusion model, shared by every generation of a run."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler_config: Mapping[str, Any]
    """The base model's scheduler configuration as the base scheduler instance reports it."""
    scheduler_class: str
    """The base model's own scheduler class name (PNDMScheduler for SD 1.5)."""
    files: tuple[Path, ...] = ()
    """The weight files loaded (VAE, UNet, text encoder), for the record."""


@dataclasses.dataclass(frozen=True)
class LoadedControlNet:
    """A loaded ControlNet and the weight file(s) it was loaded from."""

    model: Any
    files: tuple[Path, ...]


def load_base(path: Path, device: Any, dtype: Any) -> BaseComponents:
    """Load VAE, text encoder, tokenizer, UNet and the scheduler config of a diffusers SD folder."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = _loading_kwargs(dtype)
    logger.info("loading base model from %s", path)
    vae_files, vae_safetensors = weight_files(path / "vae")
    unet_files, unet_safetensors = weight_files(path / "unet")
    text_files, text_safetensors = weight_files(path / "text_encoder", "transformers")
    try:
        vae = AutoencoderKL.from_pretrained(path / "vae", use_safetensors=vae_safetensors, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", use_safetensors=unet_safetensors, **kwargs)
        # No dtype argument: transformers < 4.56 names it torch_dtype (and passes an unknown ``dtype`` on to
        # the model's constructor), 5.x deprecates torch_dtype. The cast below gives the same values.
        text_encoder = _quietly(lambda: CLIPTextModel.from_pretrained(path / "text_encoder",
                                                                       use_safetensors=text_safetensors))
        tokenizer = _quietly(lambda: CLIPTokenizer.from_pretrained(path / "tokenizer",
                                                                    **_special_tokens(path / "tokenizer")))
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{path}: cannot load the base model ({first_line(error, limit=300)})") from None
    scheduler_dir = path / "scheduler"
    try:
        stored = json.loads((scheduler_dir / "scheduler_config.json").read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{scheduler_dir}: cannot read scheduler_config.json ({first_line(error, limit=300)})") from None
    class_name = stored.get("_class_name", "PNDMScheduler")
    base_class = getattr(diffusers, class_name, None)
    if base_class is None:
        raise WeightsError(f"{scheduler_dir}: unknown scheduler class {class_name!r}")
    # Instantiate the base scheduler as the pipeline would, then keep *its* config: that is what
    # ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`` receives (defaults included).
    base_scheduler = base_class.from_config(stored)
    # diffusers models are already in ``dtype`` (casting them again would override any module they keep
    # in float32); the text encoder is loaded as stored and cast here.
    text_encoder.to(dtype=dtype)
    for module in (vae, unet, text_encoder):
        module.to(device)
        module.eval()
        module.requires_grad_(False)
    return BaseComponents(vae, text_encoder, tokenizer, unet, dict(base_scheduler.config), class_name,
                          files=(*vae_files, *unet_files, *text_files))


def _special_tokens(folder: Path) -> dict[str, Any]:
    """The special tokens stored as objects in ``special_tokens_map.json`` (SD 1.5 stores bos, eos and unk
    so), built here and passed explicitly: transformers 5 hands the file's ``"__type"`` key on to the
    tokenizers library, which prints "Ignored unknown kwarg option __type" on stdout once per token. The
    tokens are the same (``AddedToken`` of the stored fields, special); a file we cannot read is left to
    transformers."""
    from transformers import AddedToken

    try:
        stored = json.loads((folder / "special_tokens_map.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    tokens: dict[str, Any] = {}
    for key, value in stored.items():
        if key.endswith("_token") and isinstance(value, dict) and isinstance(value.get("content"), str):
            fields = {name: item for name, item in value.items() if name not in ("__type", "special")}
            try:
                tokens[key] = AddedToken(**fields, special=True)
            except TypeError:  # a field this tokenizers version does not know: let transformers read the file
                return {}
    return tokens


def _quietly(load: Any) -> Any:
    """Run a transformers loader without its own progress bar (ours is the one on screen)."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        return load()
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def load_controlnet(path: Path, device: Any, dtype: Any) -> LoadedControlNet:
    """Load one diffusers ControlNet folder onto ``device`` in ``dtype`` (and say which file was read)."""
    from diffusers import ControlNetModel

    logger.info("loading ControlNet from %s", path)
    files, use_safetensors = weight_files(path)
    try:
        net = ControlNetModel.from_pretrained(path, use_safetensors=use_safetensors, **_loading_kwargs(dtype))
    except (OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{path}: cannot load the ControlNet ({first_line(error, limit=300)})") from None
    net.to(device)
    net.eval()
    net.requires_grad_(False)
    return LoadedControlNet(net, files)


def make_scheduler(name: str, base: BaseComponents) -> Any:
    """A fresh scheduler ``name`` (see ``settings.SCHEDULERS``) built from the base scheduler's config."""
    import diffusers

    from .settings import SCHEDULERS

    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    class_name = SCHEDULERS[name] or base.scheduler_class
    return getattr(diffusers, class_name).from_config(base.scheduler_config)


def library_versions() -> dict[str, str | None]:
    """Versions of everything that can change a generated pixel."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("controlnet-guides", "torch", "diffusers", "transformers", "huggingface_hub", "safetensors",
                    "accelerate", "piq", "numpy", "pillow", "opencv-python-headless"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        import torch

        versions["torch_cuda_build"] = torch.version.cuda
        versions["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    except ImportError:  # pragma: no cover - torch is required for generation
        pass
    return versions


def device_description(device: Any) -> dict[str, Any]:
    """The device as a sidecar records it: name, type, and the GPU model for CUDA."""
    import torch

    info: dict[str, Any] = {"device": str(device), "type": device.type, "platform": platform.platform()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(index)))
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info
