"""Name -> annotator. The CLI, the batch engine and the ControlNet stage all go through here.

Entries are plain data; an annotator's module is imported only when it is used, so ``guides --help``
and ``guides canny`` never pay for torch. Adding an annotator means adding one line to ``_ENTRIES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .annotators.base import Annotator, AnnotatorOptions
from .errors import UsageError


@dataclasses.dataclass(frozen=True)
class AnnotatorSpec:
    """What the registry knows about an annotator without importing it."""

    name: str
    summary: str
    target: str
    """``"package.module:ClassName"`` of the ``Annotator`` subclass."""

    def annotator_class(self) -> type[Annotator]:
        module_name, _, class_name = self.target.partition(":")
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
        if not (isinstance(cls, type) and issubclass(cls, Annotator)):
            raise TypeError(f"{self.target} is not an Annotator subclass")
        return cls

    def options(self, **values: Any) -> AnnotatorOptions:
        """Build this annotator's options, refusing unknown names with a clear message."""
        options_type = self.annotator_class().Options
        known = {field.name for field in dataclasses.fields(options_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return options_type(**values)

    def load(self, **values: Any) -> Annotator:
        """Build (and load the model of) this annotator, ready to be called on many images."""
        return self.annotator_class()(self.options(**values))


_ENTRIES = (
    AnnotatorSpec("canny", "Canny edges (OpenCV), white on black.", "guides.annotators.canny:CannyAnnotator"),
    AnnotatorSpec("lineart", "Line art (lllyasviel's generator), dark lines on white.", "guides.annotators.lineart:LineartAnnotator"),
    AnnotatorSpec("normals", "Surface normals (NormalBae), RGB = (n + 1) / 2.", "guides.annotators.normals:NormalsAnnotator"),
    AnnotatorSpec("depth", "Depth (ZoeDepth ZoeD_N), near = white.", "guides.annotators.depth:DepthAnnotator"),
    AnnotatorSpec("sam", "Segment Anything segments, one flat colour each.", "guides.annotators.sam:SamAnnotator"),
    AnnotatorSpec("mask", "Binary subject mask (Segment Anything): white = repaint.", "guides.annotators.mask:MaskAnnotator"),
)

REGISTRY: Mapping[str, AnnotatorSpec] = MappingProxyType({spec.name: spec for spec in _ENTRIES})


def available() -> list[str]:
    """Names of every registered annotator, in registry order."""
    return list(REGISTRY)


def get(name: str) -> AnnotatorSpec:
    """The spec of annotator ``name``; a ``UsageError`` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown annotator {name!r}; available: {', '.join(REGISTRY)}") from None
