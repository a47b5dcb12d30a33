"""The union ControlNets (one network, several conditions picked by a mode index) and the mode of each
condition, as data: what ``guides dataset`` needs to write the ``control_mode`` column of a union-model
training set, and what the README's union table shows.

An annotator says which union condition its guide serves (``Annotator.union_modes``: ``UnionMode``s naming a
model of ``UNION_MODELS`` and one of its conditions, optionally only under some option values); the
indices live here, once per model, as the model cards give them (see ../shared/CONTEXT.md, "Union
ControlNets and other families": public model cards and training scripts, not verified here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class UnionModel:
    """A union ControlNet: its hub repositories and its conditions in mode-index order."""

    name: str
    """Short name (``xinsir``, ``instantx``): the column header of the README table."""
    repos: tuple[str, ...]
    base: str
    """Base model family (``sdxl``, ``flux``)."""
    conditions: tuple[str, ...]
    """Condition names, position = the ``control_mode`` index the model card gives."""

    def mode(self, condition: str) -> int:
        """The ``control_mode`` index of ``condition`` (a ValueError naming the known ones otherwise)."""
        try:
            return self.conditions.index(condition)
        except ValueError:
            raise ValueError(f"{self.name} union model has no condition {condition!r}; it has "
                             f"{', '.join(self.conditions)}") from None


#: xinsir/controlnet-union-sdxl-1.0 (and its promax weights): the model card's control types.
XINSIR = UnionModel(
    name="xinsir",
    repos=("xinsir/controlnet-union-sdxl-1.0",),
    base="sdxl",
    conditions=("openpose", "depth", "thick line", "thin line", "normal", "segment", "tile", "repaint"),
)
#: InstantX/FLUX.1-dev-Controlnet-Union and Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro (same modes;
#: Union-Pro-2.0 has no mode embedding).
INSTANTX = UnionModel(
    name="instantx",
    repos=("InstantX/FLUX.1-dev-Controlnet-Union", "Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro"),
    base="flux",
    conditions=("canny", "tile", "depth", "blur", "pose", "gray", "low quality"),
)

#: Short name -> union model, in README column order.
UNION_MODELS: Mapping[str, UnionModel] = MappingProxyType({model.name: model for model in (XINSIR, INSTANTX)})


@dataclass(frozen=True)
class UnionMode:
    """An annotator's guide as one condition of a union model (declared by the annotator)."""

    model: str
    """A key of ``UNION_MODELS``."""
    condition: str
    """One of that model's ``conditions``."""
    when: tuple[tuple[str, object], ...] = ()
    """Option values under which the guide serves this condition (teed at 512: thick line); empty: always."""
    note: str = ""
    """What the model card asks of the guide for this condition (``detect resolution 1280``), for the table."""

    def __post_init__(self) -> None:
        if self.model not in UNION_MODELS:
            raise ValueError(f"unknown union model {self.model!r}; known: {', '.join(UNION_MODELS)}")
        UNION_MODELS[self.model].mode(self.condition)  # a ValueError for a condition the model lacks

    @property
    def index(self) -> int:
        """The ``control_mode`` value of this condition."""
        return UNION_MODELS[self.model].mode(self.condition)

    def selected_by(self, options: object) -> bool:
        """Whether a guide made with ``options`` serves this condition (every ``when`` pair matches)."""
        return all(getattr(options, name, None) == value for name, value in self.when)


def union_mode(modes: tuple[UnionMode, ...], model: str, options: object) -> UnionMode | None:
    """The first of ``modes`` for union model ``model`` that ``options`` select (None: the guide serves none)."""
    return next((mode for mode in modes if mode.model == model and mode.selected_by(options)), None)
