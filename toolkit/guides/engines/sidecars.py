"""Sidecar documents (``guides.annotators.base.Sidecar``): the JSON an annotator makes beside each guide
(openpose: the keypoints), written by both engines as a second output of the annotator's stage.

``SidecarStage`` wraps a loaded annotator so that its ``finish`` gives ``(guide, document)``: the engines
then write the two outputs of the stage's job (``<guide>.png`` and ``<name>.json``) as they write any
stage with several outputs (``guides.engines.writing``), atomically, and a rerun skips a job only when
both are complete (``guides.engines.resume``). Where the sidecar goes is planned with the guides
(``guides.engines.planning.plan_jobs``, ``sidecars``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from ..annotators.base import Annotator
from .planning import SIDECAR_SUFFIX

__all__ = ["SIDECAR_SUFFIX", "SidecarStage", "with_sidecar"]


class SidecarStage(Annotator):
    """``annotator`` whose stage result is ``(guide, sidecar document)`` (``finish_with_sidecar``).

    Everything else (prepare, predict, batching keys, batch size, close, the loaded files) is the wrapped
    annotator's, so the engines pipeline and batch it exactly as they would the annotator itself."""

    def __init__(self, annotator: Annotator) -> None:
        if type(annotator).sidecar is None:
            raise TypeError(f"{type(annotator).__qualname__} declares no sidecar")
        self.annotator = annotator
        self.name = annotator.name  # type: ignore[misc]  (the class attribute of the wrapped annotator)
        self.options = annotator.options

    @property
    def loaded_files(self) -> tuple[Any, ...]:  # type: ignore[override]
        return self.annotator.loaded_files

    @loaded_files.setter
    def loaded_files(self, value: tuple[Any, ...]) -> None:
        self.annotator.loaded_files = value

    def prepare(self, image: np.ndarray) -> Any:
        return self.annotator.prepare(image)

    def predict(self, items: list[Any]) -> list[Any]:
        return self.annotator.predict(items)

    def finish(self, item: Any, output: Any) -> tuple[np.ndarray, dict[str, Any]]:  # type: ignore[override]
        return self.annotator.finish_with_sidecar(item, output)

    def item_key(self, item: Any) -> Hashable:
        return self.annotator.item_key(item)

    def batch_key(self, image: np.ndarray) -> Hashable:
        return self.annotator.batch_key(image)

    @property
    def batch_size(self) -> int:
        return self.annotator.batch_size

    def close(self) -> None:
        self.annotator.close()


def with_sidecar(annotator: Annotator) -> SidecarStage:
    """``annotator`` as a stage that also makes its sidecar document."""
    return SidecarStage(annotator)
