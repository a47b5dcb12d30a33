"""The reference settings of the ControlNet stage, as data (no torch, no diffusers).

These are the settings with which the expected images in ``refs/`` were made (CONTEXT.md, "ControlNet
stage"): SD 1.5 in float32, ``DPMSolverMultistepScheduler.from_config(base scheduler config)``, the
prompt pair below, ``torch.manual_seed(2)`` drawing the initial latents on the generating device,
30 steps, guidance 7.5, 512x512, ControlNet conditioning scale 0.5 (the stack: depth 0.3 + canny 0.7),
each guide fed as it is stored. ``guides generate`` uses them as defaults and ``guides reproduce``
uses them unchanged.

What belongs to each guide kind is not written here: it is derived from the annotators' declarations
(``Annotator.controlnets``, ``Annotator.checkpoints``, see ``guides.annotators.base``), read from the
registry when first asked for (functions and read-only mappings below, nothing at import time):

* a guide kind (``control_kinds()``) is the ``kind`` of a declared SD 1.5 ControlNet (default: the
  declaring annotator's name; hed, pidinet and teed all declare ``softedge``, hed and pidinet with
  ``--scribble`` ``scribble``), in registry order (built-ins first, then plugins): ``guides generate
  --control KIND`` accepts each;
* its ControlNet (``CONTROLNET_MODELS``) is that declaration, at its ``scale``;
* its checkpoints (``GUIDE_CHECKPOINTS``) are those the first declaring annotator's default options select;
* ``guides reproduce`` runs the reference kinds (``reference_kinds()``): the built-in ControlNets marked
  ``in_reference_suite``, each with its stored reference guide ``cutecat_guide_<kind>.png`` and expected
  image (other ControlNets can be generated with, but the reference suite has no image of them); then the
  stack below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..weights.declarations import ControlNet

#: Base model: SD 1.5. ``runwayml/stable-diffusion-v1-5`` (used for the expected images) left the hub in
#: 2024; this community mirror holds the same weights.
BASE_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"

#: The name of the reproduced run that stacks several ControlNets.
STACK_KIND = "stack"

#: The stack of the reference suite: the (guide kind, conditioning scale) pairs fed to the pipeline, in order.
STACK: tuple[tuple[str, float], ...] = (("depth", 0.3), ("canny", 0.7))

#: ControlNet conditioning scale of a single ControlNet in the reference runs (what the built-in kinds
#: declare; ``guides generate`` uses each kind's declared scale).
REFERENCE_SCALE = 0.5

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


# ----------------------------------------------------------------------- derived from the declarations


def _kinds(builtin_only: bool = False) -> dict[str, tuple[ControlNet, tuple[str, ...]]]:
    """Guide kind -> (its ControlNet, the annotators declaring it), registry order; a plugin that cannot be
    loaded is warned about and skipped (``guides.weights.catalog.declared_controlnets``)."""
    from ..weights.catalog import declared_controlnets

    return declared_controlnets(builtin_only=builtin_only)


def control_kinds() -> tuple[str, ...]:
    """The guide kinds ``guides generate --control`` takes: every declared SD 1.5 ControlNet's kind, in
    registry order (SDXL ones, such as anyline's MistoLine, are recorded in the catalog only)."""
    return tuple(kind for kind, (controlnet, _) in _kinds().items() if controlnet.base == "sd15")


def reference_kinds() -> tuple[str, ...]:
    """The kinds of the reference suite: built-in ControlNets marked ``in_reference_suite``, registry order."""
    return tuple(kind for kind, (controlnet, _) in _kinds(builtin_only=True).items() if controlnet.in_reference_suite)


def reproduce_kinds() -> tuple[str, ...]:
    """What ``guides reproduce`` runs, in report order: every reference kind, then the stack."""
    return (*reference_kinds(), STACK_KIND)


def controlnet(kind: str) -> ControlNet:
    """The ControlNet of guide kind ``kind`` (KeyError if no annotator declares it)."""
    return _kinds()[kind][0]


def controlnet_scale(kind: str) -> float:
    """The conditioning scale of ``kind``'s ControlNet in a single-ControlNet run (its declared ``scale``)."""
    return controlnet(kind).scale


def kind_annotator(kind: str) -> str:
    """The annotator that makes guides of ``kind``: the first declaring it (``softedge``: hed)."""
    return _kinds()[kind][1][0]


def guide_checkpoints(kind: str) -> tuple[str, ...]:
    """Names of the checkpoints (``guides.weights.catalog.CHECKPOINTS``) the annotator of ``kind``
    (``kind_annotator``) loads with its default options (``Annotator.checkpoint_names``)."""
    from ..registry import get

    cls = get(kind_annotator(kind)).annotator_class()
    return cls.checkpoint_names(cls.Options())


class _Derived(Mapping):  # type: ignore[type-arg]
    """A read-only mapping computed from the declarations on each use (no state of its own)."""

    def __init__(self, collect: Callable[[], Mapping[str, Any]], doc: str) -> None:
        self._collect = collect
        self.__doc__ = doc

    def __getitem__(self, key: str) -> Any:
        return self._collect()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._collect())

    def __len__(self) -> int:
        return len(self._collect())

    def __repr__(self) -> str:
        return repr(dict(self._collect()))


def _controlnet_models() -> dict[str, str]:
    return {kind: controlnet(kind).repo for kind in control_kinds()}


def _guide_checkpoints() -> dict[str, tuple[str, ...]]:
    return {kind: guide_checkpoints(kind) for kind in control_kinds()}


def _reference_controls() -> dict[str, tuple[tuple[str, float], ...]]:
    return {**{kind: ((kind, controlnet(kind).scale),) for kind in reference_kinds()}, STACK_KIND: STACK}


#: ControlNet per guide kind (hub ids, diffusers format): the first ControlNet each annotator declares.
CONTROLNET_MODELS: Mapping[str, str] = _Derived(_controlnet_models, "guide kind -> ControlNet hub id")

#: Checkpoints our annotators need per guide kind (names of ``guides.weights.catalog.CHECKPOINTS``).
GUIDE_CHECKPOINTS: Mapping[str, tuple[str, ...]] = _Derived(_guide_checkpoints, "guide kind -> checkpoint names")

#: Each reproduced kind: the (guide kind, conditioning scale) pairs fed to the pipeline, in order.
REFERENCE_CONTROLS: Mapping[str, tuple[tuple[str, float], ...]] = _Derived(
    _reference_controls, "reproduced kind -> (guide kind, scale) pairs"
)
