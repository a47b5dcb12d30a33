"""Generating images from guides with Stable Diffusion 1.5 + ControlNet (diffusers).

``ControlNetGenerator`` loads the base model once and each ControlNet on first use, then runs any
number of generations that share them: one ControlNet (``StableDiffusionControlNetPipeline``) or a stack
(``MultiControlNetModel``, one conditioning scale per ControlNet). Every generation returns the image and
a record of everything that made it (settings, model ids and revisions, the weight files loaded with
their sha256, guides, initial latents, device, library versions) that ``write_generation`` stores as a
JSON sidecar.

Initial noise: the expected images were made after ``torch.manual_seed(seed)`` with the pipeline drawing
``randn(1, 4, H/8, W/8)`` on CUDA. We draw the same tensor explicitly from a generator seeded with
``seed`` on the generating device (identical to the global-seed draw), always in float32, so it can be
saved (``save_latents``) and replayed anywhere (``--latents``): CPU and CUDA draws differ, so a faithful
reproduction needs CUDA or the saved CUDA latents.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError, WeightsError
from ..imaging import encode_png, write_atomic
from .models import (
    BaseComponents,
    LoadedControlNet,
    ModelLocation,
    describe_files,
    device_description,
    library_versions,
    load_base,
    load_controlnet,
    make_scheduler,
)
from .settings import SCHEDULERS, GenerationSettings

logger = logging.getLogger(__name__)

#: ``on_step(done, total)`` after each denoising step.
StepCallback = Callable[[int, int], None]

LATENT_SUFFIXES = (".safetensors", ".pt", ".pth", ".npy")


@dataclasses.dataclass(frozen=True)
class Control:
    """One ControlNet input: the guide (RGB uint8, as stored), its kind and conditioning scale."""

    kind: str
    image: np.ndarray
    scale: float
    source: str | None = None
    """Where the guide came from (a file path, or ``annotator:<kind>``), for the record."""


@dataclasses.dataclass(frozen=True)
class Latents:
    """Initial latents (float32, on the CPU or the device) and where they came from."""

    tensor: Any
    source: str
    """``seed`` (drawn here) or ``file``."""
    seed: int | None = None
    drawn_on: str | None = None
    path: str | None = None

    @property
    def sha256(self) -> str:
        """Digest of the float32 values: equal digests mean bit-identical initial noise."""
        array = self.tensor.detach().to("cpu", dtype=_torch().float32).contiguous().numpy()
        return hashlib.sha256(array.tobytes()).hexdigest()

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "seed": self.seed,
            "drawn_on": self.drawn_on,
            "file": self.path,
            "shape": list(self.tensor.shape),
            "sha256": self.sha256,
        }


@dataclasses.dataclass
class Generation:
    """A generated image (RGB uint8) and the record written beside it."""

    image: np.ndarray
    record: dict[str, Any]


def _torch() -> Any:
    import torch

    return torch


# -------------------------------------------------------------------------------------------- latents


def draw_latents(seed: int, shape: Sequence[int], device: Any) -> Latents:
    """``randn(shape)`` from a generator seeded with ``seed`` on ``device`` (float32).

    Equal to what ``torch.manual_seed(seed)`` followed by the pipeline's own draw gives on that device.
    """
    torch = _torch()
    generator = torch.Generator(device=device).manual_seed(seed)
    tensor = torch.randn(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    return Latents(tensor, "seed", seed=seed, drawn_on=str(device))


def load_latents(path: str | os.PathLike) -> Latents:
    """Read saved latents: ``.safetensors`` (key ``latents``), ``.pt``/``.pth`` (a tensor, read with
    ``weights_only=True``) or ``.npy`` (no pickles). Returns float32 on the CPU."""
    torch = _torch()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise UsageError(f"{path}: latents must be a {', '.join(LATENT_SUFFIXES)} file")
    if not path.is_file():
        raise UsageError(f"{path}: no such latents file")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "latents" in tensors:
                tensor = tensors["latents"]
            elif len(tensors) == 1:
                tensor = next(iter(tensors.values()))
            else:
                raise UsageError(f"{path}: expected one tensor named 'latents', found {', '.join(sorted(tensors))}")
        elif suffix == ".npy":
            tensor = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict):
                loaded = loaded.get("latents", next(iter(loaded.values())) if len(loaded) == 1 else None)
            if not isinstance(loaded, torch.Tensor):
                raise UsageError(f"{path}: expected a tensor (or a dict with 'latents'), found {type(loaded).__name__}")
            tensor = loaded
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 - unreadable, truncated, pickled code: all a bad file to the user
        raise UsageError(f"{path}: cannot read latents ({str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__})") from None
    if not tensor.is_floating_point():
        raise UsageError(f"{path}: latents must be floating point, got {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"{path}: latents contain NaN or infinite values")
    return Latents(tensor, "file", path=str(path))


def save_latents(latents: Latents, path: str | os.PathLike) -> Path:
    """Write latents (float32, CPU) by suffix: ``.safetensors`` (key ``latents``), ``.pt``/``.pth`` or ``.npy``."""
    torch = _torch()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LATENT_SUFFIXES:
        raise UsageError(f"{path}: latents are saved as {', '.join(LATENT_SUFFIXES)}")
    tensor = latents.tensor.detach().to("cpu", dtype=torch.float32).contiguous()
    if suffix == ".safetensors":
        from safetensors.torch import save as save_bytes

        data = save_bytes({"latents": tensor}, metadata={"source": latents.source, "seed": str(latents.seed), "drawn_on": str(latents.drawn_on)})
    elif suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, tensor.numpy(), allow_pickle=False)
        data = buffer.getvalue()
    else:
        import io

        buffer = io.BytesIO()
        torch.save(tensor, buffer)
        data = buffer.getvalue()
    write_atomic(path, data)
    return path


# ------------------------------------------------------------------------------------------ generator


class ControlNetGenerator:
    """Stable Diffusion + ControlNet(s), loaded once, generating many times."""

    def __init__(
        self,
        base: ModelLocation,
        controlnets: Mapping[str, ModelLocation],
        device: str = "auto",
        precision: str = "fp32",
    ) -> None:
        from ..devices import resolve_device, resolve_dtype

        if base.path is None:
            raise WeightsError(base.problem or f"base model {base.model_id} is missing")
        for location in controlnets.values():
            if location.path is None:
                raise WeightsError(location.problem or f"ControlNet {location.model_id} is missing")
        self.device = resolve_device(device)
        self.precision = precision
        self.dtype = resolve_dtype(precision, self.device)
        if self.device.type == "cpu" and precision == "fp16":
            logger.warning("fp16 on the CPU is slow and less accurate than fp32; the reference ran in fp32")
        self.base_location = base
        self.controlnet_locations = dict(controlnets)
        self._base: BaseComponents | None = None
        self._nets: dict[str, LoadedControlNet] = {}

    # -------------------------------------------------------------------------------- models
    @property
    def base(self) -> BaseComponents:
        """The base model's components (loaded on first use)."""
        if self._base is None:
            assert self.base_location.path is not None
            self._base = load_base(self.base_location.path, self.device, self.dtype)
        return self._base

    def controlnet(self, kind: str) -> Any:
        """The ControlNet of ``kind`` (loaded on first use, then shared)."""
        return self._loaded_controlnet(kind).model

    def _loaded_controlnet(self, kind: str) -> LoadedControlNet:
        if kind not in self._nets:
            location = self.controlnet_locations.get(kind)
            if location is None or location.path is None:
                raise UsageError(f"no ControlNet given for kind {kind!r}")
            self._nets[kind] = load_controlnet(location.path, self.device, self.dtype)
        return self._nets[kind]

    def loaded_files(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The weight files the base model (``kind`` None) or the ControlNet of ``kind`` was loaded from,
        with size and sha256 (loads the model if it is not loaded yet)."""
        files = self.base.files if kind is None else self._loaded_controlnet(kind).files
        return describe_files(files)

    def load(self, kinds: Sequence[str]) -> None:
        """Load the base model and the ControlNets of ``kinds`` now (before timing anything)."""
        _ = self.base
        for kind in kinds:
            self.controlnet(kind)

    def _config(self, component: str) -> dict[str, Any]:
        """A component's config.json, read without loading the model."""
        assert self.base_location.path is not None
        path = self.base_location.path / component / "config.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise WeightsError(f"{path}: cannot read the model config ({error})") from None

    @property
    def vae_scale_factor(self) -> int:
        """8 for SD 1.5: 2 ** (VAE blocks - 1), from the config (nothing is loaded)."""
        return 2 ** (len(self._config("vae")["block_out_channels"]) - 1)

    def latent_shape(self, settings: GenerationSettings) -> tuple[int, int, int, int]:
        """(1, latent channels, height / f, width / f) for the VAE's scale factor f (nothing is loaded)."""
        factor = self.vae_scale_factor
        check_size(settings, factor)
        channels = int(self._config("unet").get("in_channels", 4))
        return (1, channels, settings.height // factor, settings.width // factor)

    def draw_latents(self, settings: GenerationSettings) -> Latents:
        """The reference draw: seeded ``randn`` on the generating device, float32."""
        return draw_latents(settings.seed, self.latent_shape(settings), self.device)

    def check_latents(self, latents: Latents, settings: GenerationSettings) -> None:
        expected = self.latent_shape(settings)
        if tuple(latents.tensor.shape) != expected:
            raise UsageError(
                f"latents{' ' + latents.path if latents.path else ''} have shape {tuple(latents.tensor.shape)}, "
                f"but {settings.width}x{settings.height} with this model needs {expected}"
            )

    # ---------------------------------------------------------------------------- generation
    def pipeline(self, kinds: Sequence[str], scheduler: str) -> Any:
        """A pipeline over the shared components: one ControlNet, or a stack of them in order."""
        from diffusers import StableDiffusionControlNetPipeline
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        nets = [self.controlnet(kind) for kind in kinds]
        controlnet = nets[0] if len(nets) == 1 else MultiControlNetModel(nets)
        base = self.base
        pipe = StableDiffusionControlNetPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            controlnet=controlnet,
            scheduler=make_scheduler(scheduler, base),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(
        self,
        controls: Sequence[Control],
        settings: GenerationSettings,
        latents: Latents | None = None,
        on_step: StepCallback | None = None,
    ) -> Generation:
        """Generate one image from ``controls`` with ``settings``; ``latents`` default to the seeded draw."""
        torch = _torch()
        from PIL import Image

        if not controls:
            raise UsageError("at least one guide (--control) is needed")
        if settings.scheduler not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {settings.scheduler!r}; use one of {', '.join(SCHEDULERS)}")
        if settings.steps < 1:
            raise UsageError(f"steps must be at least 1, got {settings.steps}")
        if latents is None:
            latents = self.draw_latents(settings)
        self.check_latents(latents, settings)
        pipe = self.pipeline([control.kind for control in controls], settings.scheduler)
        # Stochastic schedulers (ancestral) draw more noise: from the same seed, after the latents.
        generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        if latents.source == "seed":  # continue after the latents' draw, as the global seed would
            torch.randn(tuple(latents.tensor.shape), generator=generator, device=self.device, dtype=torch.float32)
        images = [Image.fromarray(_as_rgb(control.image)) for control in controls]
        scales = [float(control.scale) for control in controls]

        def step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, settings.steps)
            return kwargs

        started = time.perf_counter()
        output = pipe(
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            image=images[0] if len(images) == 1 else images,
            height=settings.height,
            width=settings.width,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            latents=latents.tensor.to(device=self.device, dtype=self.dtype),
            generator=generator,
            controlnet_conditioning_scale=scales[0] if len(scales) == 1 else scales,
            output_type="pil",
            callback_on_step_end=step_end,
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        image = np.asarray(output.images[0].convert("RGB"), dtype=np.uint8).copy()
        record = self.record(controls, settings, latents, pipe.scheduler, seconds)
        return Generation(image, record)

    def record(self, controls: Sequence[Control], settings: GenerationSettings, latents: Latents,
               scheduler: Any, seconds: float) -> dict[str, Any]:
        """Everything that made a generation, JSON-ready (the sidecar, less the output file)."""
        return {
            "settings": settings.as_dict(),
            "controls": [
                {
                    "kind": control.kind,
                    "scale": float(control.scale),
                    "guide": {
                        "source": control.source,
                        "width": int(control.image.shape[1]),
                        "height": int(control.image.shape[0]),
                        "sha256": hashlib.sha256(np.ascontiguousarray(_as_rgb(control.image)).tobytes()).hexdigest(),
                        "resized_to": None if control.image.shape[:2] == (settings.height, settings.width)
                        else [settings.width, settings.height],
                    },
                    "controlnet": {**self.controlnet_locations[control.kind].as_dict(),
                                   "loaded_files": self.loaded_files(control.kind)},
                }
                for control in controls
            ],
            "base_model": {**self.base_location.as_dict(), "loaded_files": self.loaded_files()},
            "scheduler": {
                "name": settings.scheduler,
                "class": type(scheduler).__name__,
                "built_from": self.base.scheduler_class,
                "config": dict(scheduler.config),
            },
            "safety_checker": None,
            "latents": latents.as_dict(),
            "precision": self.precision,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": device_description(self.device),
            "libraries": library_versions(),
            "seconds": round(seconds, 3),
        }


def check_size(settings: GenerationSettings, factor: int = 8) -> None:
    """Width and height must be positive multiples of the VAE factor (8 for SD 1.5)."""
    for name, value in (("width", settings.width), ("height", settings.height)):
        if value <= 0 or value % factor:
            raise UsageError(f"{name} must be a positive multiple of {factor}, got {value}")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    from ..imaging import array_to_rgb

    return array_to_rgb(image)


# -------------------------------------------------------------------------------------------- output


def jsonable(value: Any) -> Any:
    """Plain JSON values: paths and tuples converted, non-finite floats written as strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return str(value)


def dumps(value: Any) -> str:
    """Strict JSON (no NaN/Infinity), indented, with a final newline."""
    return json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n"


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """``out.png`` -> ``out.json``."""
    return Path(image_path).with_suffix(".json")


def write_generation(path: str | os.PathLike, generation: Generation, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the image (PNG, atomically) and its JSON sidecar; returns the sidecar path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"{path}: generated images are written as .png")
    data = encode_png(generation.image)
    write_atomic(path, data)
    record = dict(generation.record)
    record["output"] = {
        "path": str(path),
        "width": int(generation.image.shape[1]),
        "height": int(generation.image.shape[0]),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if extra:
        record.update(extra)
    sidecar = sidecar_path(path)
    write_atomic(sidecar, dumps(record).encode())
    return sidecar
