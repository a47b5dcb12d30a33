"""Calling a stage on one batch, shared by both engines: a result or a ``Failure`` per image.

``run_stage`` calls ``annotate_batch`` on images; ``run_predict`` calls a staged annotator's ``predict`` on
prepared items (``guides.annotators.base``). Both sort errors out the same way (``run_batch``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from ..errors import GuidesError, InternalError
from .reasons import failure_reason, is_out_of_memory, out_of_memory_reason
from .summary import Failure
from .writing import GuideResult

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Stage(Protocol):
    """What the engines need of an annotator (``guides.annotators.base.Annotator`` fits)."""

    @property
    def batch_size(self) -> int: ...

    def annotate_batch(self, images: Sequence[np.ndarray]) -> Sequence[GuideResult]: ...

    def batch_key(self, image: np.ndarray) -> Hashable: ...


def run_stage(stage: Stage, name: str, images: Sequence[np.ndarray], sources: Sequence[str | os.PathLike]) -> list[GuideResult | Failure]:
    """One ``annotate_batch`` call over ``images`` (from ``sources``): a guide or a ``Failure`` per image
    (errors sorted out as ``run_batch`` says). Shared by the local and Ray engines."""
    return run_batch(stage.annotate_batch, name, images, sources, made="guides", given="images")


def run_predict(stage: Any, name: str, items: Sequence[Any], sources: Sequence[str | os.PathLike]) -> list[Any]:
    """One ``predict`` call of a staged annotator over prepared ``items``: an output or a ``Failure`` per
    item, with the errors of ``run_stage`` (an item-by-item retry finds the item at fault)."""
    return run_batch(stage.predict, name, items, sources, made="outputs", given="items")


def run_batch(call: Callable[[list[T]], Sequence[Any]], name: str, inputs: Sequence[T],
              sources: Sequence[str | os.PathLike], *, made: str = "guides", given: str = "images") -> list[Any]:
    """``call(inputs)``: one result per input, or a ``Failure`` for each input at fault.

    * A ``GuidesError`` is bad input: a batch of several is retried input by input to find the one at
      fault (the others still get their results); that one gets a ``Failure``.
    * An out-of-memory (``is_out_of_memory``) in a batch of several is retried at batch size 1; an input
      that still runs out alone gets a ``Failure`` naming the options to change.
    * Anything else is a bug: ``InternalError(path, name, error)`` is raised (after an input-by-input
      retry of a batch, so that it names the file it happens on).
    """
    outcome = _call(call, name, inputs, made, given)
    if not isinstance(outcome, BaseException):
        return outcome
    error = outcome
    if len(inputs) > 1:
        if is_out_of_memory(error):
            logger.info("%s ran out of memory on a batch of %d; retrying image by image (a smaller --batch-size "
                        "avoids this)", name, len(inputs))
            error.__traceback__ = None  # release the failed attempt's frames (and device memory) first
        results = [result for one, source in zip(inputs, sources)
                   for result in run_batch(call, name, [one], [source], made=made, given=given)]
        if not isinstance(error, GuidesError) and not is_out_of_memory(error):
            # Every input passes alone, yet the batch raised: still a bug, reported on the batch's first file.
            raise InternalError(sources[0], name, error) from error
        return results
    source = str(sources[0])
    if isinstance(error, GuidesError):
        return [Failure(source, failure_reason(error, source))]
    if is_out_of_memory(error):
        logger.debug("%s ran out of memory on %s", name, source, exc_info=error)
        return [Failure(source, out_of_memory_reason(name, error))]
    raise InternalError(source, name, error) from error


def _call(call: Callable[[list[T]], Sequence[Any]], name: str, inputs: Sequence[T], made: str, given: str) -> list[Any] | Exception:
    """The call's results, or the exception it raised (returned, so a retry runs outside the handler)."""
    try:
        results = list(call(list(inputs)))
    except Exception as error:  # noqa: BLE001 - sorted out by run_batch
        return error
    if len(results) != len(inputs):
        return RuntimeError(f"{name} returned {len(results)} {made} for {len(inputs)} {given}")
    return results
