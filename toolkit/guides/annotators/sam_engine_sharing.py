"""One SAM model per process, shared by the annotators that use it: ``SamEngineCache`` (engines by
model, device, precision and checkpoint file, held while an annotator holds them), ``load_engine`` (the
weights contract: find the file, load it strictly, wrap it in a ``SamEngine``) and ``engine_for`` (an
engine around an already built model). ``guides run sam,mask`` (or ``inpaint-target`` beside ``sam``)
thus loads one model and encodes each image once.

Imports no torch at import time; ``load_engine`` imports torch and segment_anything.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .sam_checkpoints import MODEL_CHECKPOINTS, MODEL_TYPES, SAM_CHECKPOINTS

if TYPE_CHECKING:
    from ..nets.sam_engine import SamEngine

log = logging.getLogger(__name__)


EngineKey = tuple[str, str, str, str]


class SamEngineCache:
    """Loaded SAM engines by (model, device, precision, resolved checkpoint file), shared by the
    annotators that acquire them: ``guides run sam,mask`` (or ``inpaint-target`` beside ``sam``) loads
    one model and encodes each image once.

    Thread-safe: one lock guards the cache, and a load (seconds, gigabytes) runs under a lock of its own key
    only, so two threads asking for the same engine load it once while other keys, ``release`` and ``close``
    of other annotators are not held up. An engine stays cached while an annotator holds it: ``release`` by
    its last holder drops it from the cache and frees its image embeddings; an annotator dropped without
    ``close`` stops holding it when it is garbage collected. Annotators built without a cache use
    ``SHARED_ENGINES``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: weakref.WeakValueDictionary[EngineKey, SamEngine] = weakref.WeakValueDictionary()
        self._holders: weakref.WeakKeyDictionary[SamEngine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
        self._loading: dict[EngineKey, threading.Lock] = {}

    def _held(self, engine: SamEngine, holder: Any) -> SamEngine:
        """Record that ``holder`` holds ``engine`` (call with ``self._lock`` held)."""
        self._holders.setdefault(engine, weakref.WeakSet()).add(holder)
        return engine

    def acquire(self, key: EngineKey, load: Callable[[], SamEngine], holder: Any) -> SamEngine:
        """The engine cached under ``key``, else ``load()``'s (then cached); ``holder`` now holds it."""
        with self._lock:
            engine = self._engines.get(key)
            if engine is not None:
                return self._held(engine, holder)
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                engine = self._engines.get(key)
                if engine is not None:  # loaded by the thread this one waited for
                    return self._held(engine, holder)
            try:
                engine = load()
                with self._lock:
                    self._engines[key] = engine
                    return self._held(engine, holder)
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def release(self, engine: SamEngine, holder: Any) -> bool:
        """``holder`` no longer holds ``engine``; True when no one does any more (the engine is then
        removed from the cache and its embeddings freed)."""
        with self._lock:
            holders = self._holders.get(engine)
            if holders is None:  # not acquired here (or already released by its last holder)
                return False
            holders.discard(holder)
            if holders:
                return False
            del self._holders[engine]
            for key in [key for key, cached in self._engines.items() if cached is engine]:
                del self._engines[key]
        engine.reset()
        return True

    def holders(self, engine: SamEngine) -> int:
        """How many live annotators hold ``engine`` (for tests and diagnostics)."""
        with self._lock:
            holders = self._holders.get(engine)
            return 0 if holders is None else len(holders)

    def __len__(self) -> int:
        with self._lock:
            return len(self._engines)


#: The cache of annotators built without one (the CLI's, ``guides.load``'s): how the annotators of one
#: process share a model. Pass ``engines=SamEngineCache()`` to an annotator to keep it apart.
SHARED_ENGINES = SamEngineCache()


def load_engine(model: str, device: str, precision: str, models_dir: str | None, checkpoint: str | None,
                download: bool = True, engines: SamEngineCache | None = None, holder: Any = None) -> SamEngine:
    """Find the checkpoint (weights contract), load it strictly into segment_anything's network, move it
    to ``device`` and wrap it in a ``SamEngine`` running at ``precision`` (its ``checkpoint`` is the file
    loaded); with ``engines``, an engine cached there for the same model, device, precision and file is
    shared, and ``holder`` holds it (``SamEngineCache.release``)."""
    if model not in MODEL_CHECKPOINTS:
        raise UsageError(f"unknown SAM model {model!r}; use one of {', '.join(MODEL_TYPES)}")
    from functools import partial

    from ..devices import resolve_device, resolve_dtype
    from ..nets import sam_network
    from ..nets.sam_engine import SamEngine
    from ..weights.load import load_checkpoint_into
    from ..weights.resolve import resolve_checkpoint

    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    name = MODEL_CHECKPOINTS[model]
    declared = {entry.name: entry for entry in SAM_CHECKPOINTS}[name]
    path = Path(resolve_checkpoint(name, explicit=checkpoint, models_dir=models_dir, download=download))

    def load() -> SamEngine:
        network = load_checkpoint_into(partial(sam_network.build_sam, model), path, container=declared.container,
                                       key_filters=declared.key_filters)
        log.info("SAM %s from %s on %s (%s)", model, path, torch_device, precision)
        return SamEngine(network.to(torch_device), dtype=dtype, checkpoint=path)

    if engines is None:
        return load()
    return engines.acquire((model, str(torch_device), precision, str(path.resolve())), load, holder)


def engine_for(model: Any, dtype_name: str = "fp32") -> SamEngine:
    """Wrap an already built segment_anything ``Sam`` (or pass a ``SamEngine`` through): for tests and
    for sharing one model, and its cached image embedding, between annotators."""
    from ..devices import resolve_dtype
    from ..nets.sam_engine import SamEngine

    if isinstance(model, SamEngine):
        return model
    return SamEngine(model, dtype=resolve_dtype(dtype_name, model.device))
