"""The reference settings of the ControlNet stage, as data (no torch, no diffusers).

These are the settings with which the expected images in ``refs/`` were made (CONTEXT.md, "ControlNet
stage"): SD 1.5 in float32, ``DPMSolverMultistepScheduler.from_config(base scheduler config)``, the
prompt pair below, ``torch.manual_seed(2)`` drawing the initial latents on the generating device,
30 steps, guidance 7.5, 512x512, ControlNet conditioning scale 0.5 (the stack: depth 0.3 + canny 0.7),
each guide fed as it is stored. ``guides generate`` uses them as defaults and ``guides reproduce``
uses them unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

#: The ControlNet guide kinds (one ControlNet each).
CONTROL_KINDS: tuple[str, ...] = ("canny", "depth", "lineart", "normals", "sam")

#: What ``guides reproduce`` runs, in report order: every kind, then the depth + canny stack.
REPRODUCE_KINDS: tuple[str, ...] = (*CONTROL_KINDS, "stack")

#: Base model: SD 1.5. ``runwayml/stable-diffusion-v1-5`` (used for the expected images) left the hub in
#: 2024; this community mirror holds the same weights.
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

#: ControlNet per guide kind (hub ids, diffusers format).
CONTROLNET_MODELS: Mapping[str, str] = MappingProxyType(
    {
        "canny": "lllyasviel/control_v11p_sd15_canny",
        "depth": "lllyasviel/control_v11f1p_sd15_depth",
        "lineart": "lllyasviel/control_v11p_sd15_lineart",
        "normals": "lllyasviel/control_v11p_sd15_normalbae",
        "sam": "mfidabel/controlnet-segment-anything",
    }
)

#: Schedulers ``--scheduler`` accepts: name -> diffusers class (built ``from_config`` of the base
#: model's scheduler). ``base`` keeps the base model's own scheduler (PNDM for SD 1.5).
SCHEDULERS: Mapping[str, str | None] = MappingProxyType(
    {
        "dpm-multistep": "DPMSolverMultistepScheduler",
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
        "euler-ancestral": "EulerAncestralDiscreteScheduler",
        "unipc": "UniPCMultistepScheduler",
        "pndm": "PNDMScheduler",
        "base": None,
    }
)


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides a generation besides the models, the guides and the device."""

    prompt: str = "a cute cat, detailed high-quality professional image"
    negative_prompt: str = "lowres, bad anatomy, bad hands, cropped, worst quality"
    seed: int = 2
    steps: int = 30
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "dpm-multistep"
    precision: str = "fp32"
    """fp32 (the reference), fp16 or bf16."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, plus the scheduler's diffusers class name."""
        values = dataclasses.asdict(self)
        values["scheduler_class"] = SCHEDULERS.get(self.scheduler)
        return values


#: The settings of the expected images.
REFERENCE_SETTINGS = GenerationSettings()

#: ControlNet conditioning scale of a single ControlNet in the reference runs.
REFERENCE_SCALE = 0.5

#: Each reproduced kind: the (guide kind, conditioning scale) pairs fed to the pipeline, in order.
REFERENCE_CONTROLS: Mapping[str, tuple[tuple[str, float], ...]] = MappingProxyType(
    {
        **{kind: ((kind, REFERENCE_SCALE),) for kind in CONTROL_KINDS},
        "stack": (("depth", 0.3), ("canny", 0.7)),
    }
)

#: Acceptance of the reference suite: PSNR (dB) and SSIM against the expected image, piq on [0, 1].
PASS_PSNR = 35.0
PASS_SSIM = 0.98

#: File names inside the reference folder (``--refs``).
INPUT_FILE = "cutecat_init.png"


def reference_guide_file(kind: str) -> str:
    """The stored reference guide of a ControlNet kind (``cutecat_guide_<kind>.png``)."""
    return f"cutecat_guide_{kind}.png"


def expected_file(kind: str) -> str:
    """The expected generation of a reproduced kind (``expected_controlnet_<kind>.png``, ``..._stack.png``)."""
    return f"expected_controlnet_{kind}.png"


#: Checkpoints our annotators need per guide kind (names of ``guides.weights.catalog.CHECKPOINTS``).
GUIDE_CHECKPOINTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"canny": (), "depth": ("depth",), "lineart": ("lineart",), "normals": ("normals",), "sam": ("sam-vit-h",)}
)
