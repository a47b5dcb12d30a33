"""The Ray engine: the jobs of ``guides.engines.planning.plan_jobs`` on Ray Data, the outputs of the local
engine (``guides.engines.local.run_jobs``).

The driver lists the files once (``plan_jobs``), decides what to skip and removes the temporary files of
dead runs with the local engine's own code (``guides.engines.resume.work_to_do``,
``guides.engines.writing.remove_stale_temporaries``). Then a Ray Data pipeline runs the rest:

    job rows -> decode (Ray tasks) -> annotator 1 (actor pool) -> ... -> annotator N -> write (Ray tasks)

* Every annotator has its own actor pool; each actor builds its annotator once (the model is loaded once
  per actor) and batches images of equal ``batch_key`` up to the annotator's ``batch_size``, isolating a
  failing image exactly like the local engine (``guides.engines.stage_calls.run_stage``: bad input and an image that runs
  out of memory alone are failure lines; a bug stops the run with ``InternalError`` naming the file, carried
  back to the driver in the row's ``fatal`` column). ``num_gpus`` reserves a (fractional) GPU per actor.
* A staged annotator (``prepare``/``predict``/``finish``, ``guides.annotators.base``) goes through its
  ``annotate_batch``, which runs the three stages on the actor's batch (items grouped by ``item_key``):
  the same guides as the local engine's pipeline, without overlapping the stages inside one actor (Ray
  Data overlaps the actors with the decode and write tasks instead).
* Guides travel as raw arrays and are PNG-encoded and written by the write tasks with the local engine's
  ``write_guides``, in the same order, so the files are byte-identical and a failure gets the same
  one-line reason (``guides.engines.reasons``: decode, annotate or write).
* Only small status rows come back to the driver, which builds the same ``Summary`` (failures in job
  order, after the planning failures).

Files are read and written by the Ray workers under the paths the driver planned: on a cluster, the
inputs and the output folder must be on a filesystem every node mounts at the same path, and guides
(with the extras its annotators need) must be installed on every node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..errors import GuidesError, InternalError, UsageError
from ..imaging import DEFAULT_MAX_PIXELS, load_image
from .planning import Job
from .reasons import decode_failure_reason, failure_reason, write_failure_reason
from .resume import work_to_do
from .stage_calls import Stage, run_stage
from .summary import Failure, Summary
from .writing import remove_stale_temporaries, write_guides

logger = logging.getLogger(__name__)

#: Rows per decode task and per write task; annotator batches are at least this big too.
DEFAULT_ROWS_PER_TASK = 4
RAY_EXTRA_HINT = 'the Ray engine needs Ray Data: pip install "controlnet-guides[ray]"'

_PICKLED = "pickle"  # dtype marker for a stage result that is not a numpy array (kept for the writer)


def import_ray() -> Any:
    """``import ray`` and ``ray.data``, or a UsageError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(RAY_EXTRA_HINT) from None
    return ray


@contextlib.contextmanager
def ray_runtime(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Use the running Ray runtime if there is one; else connect to ``address`` or start a local one.

    Only a runtime started here is shut down on exit.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    verbose = logging.getLogger("guides").isEnabledFor(logging.INFO)
    options: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(address="local", num_cpus=num_cpus, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UsageError(f"cannot start Ray{f' at {address}' if address else ''}: {error}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def run_jobs_ray(
    jobs: Sequence[Job],
    loaders: Mapping[str, Callable[[], Stage]],
    *,
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    failures: Sequence[Failure] = (),
    decode: Callable[[Path, int], np.ndarray] = load_image,
    address: str | None = None,
    num_gpus: float | Mapping[str, float] = 0.0,
    batch_sizes: Mapping[str, int] | None = None,
    rows_per_task: int = DEFAULT_ROWS_PER_TASK,
    num_cpus: int | None = None,
) -> Summary:
    """Run ``jobs`` on Ray Data with the same skip, atomic-write and failure rules as ``run_jobs``.

    ``loaders`` build each stage (called once in each actor, never in the driver; they must pickle).
    ``workers`` caps the actors per annotator (default: what the cluster fits). ``num_gpus`` is the
    GPU fraction per actor, one value or per stage. ``batch_sizes`` (per stage) sizes Ray's batches for
    annotators that batch. ``num_cpus`` sizes a local runtime started here (default: all cores).
    """
    summary = Summary(failed=list(failures))
    started = time.perf_counter()
    remove_stale_temporaries(jobs)
    items = []
    for index, (job, needed) in enumerate(work_to_do(jobs, overwrite)):
        if not needed:
            summary.skipped += 1
            continue
        targets = {name: [str(target) for target in targets] for name, targets in job.outputs.items()}
        items.append({"index": index, "source": str(job.source), "needed": json.dumps(list(needed)), "targets": json.dumps(targets)})
    if not items:
        summary.seconds = time.perf_counter() - started
        return summary
    wanted = {name for item in items for name in json.loads(item["needed"])}
    stage_names = [name for name in loaders if name in wanted]
    gpus = {name: float(num_gpus.get(name, 0.0) if isinstance(num_gpus, Mapping) else num_gpus) for name in stage_names}
    show = sys.stderr.isatty() if progress is None else progress

    with ray_runtime(address, num_cpus) as ray:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = bool(show)
        context.print_on_execution_start = False
        context.enable_auto_log_stats = False
        if not show:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        resources = ray.cluster_resources()
        total_cpus = float(resources.get("CPU", 1.0))
        total_gpus = float(resources.get("GPU", 0.0))
        for name, fraction in gpus.items():
            if fraction > total_gpus:
                raise UsageError(f"--num-gpus-per-worker {fraction:g}: the Ray cluster has {total_gpus:g} GPU(s) for {name}")
        # Every actor pool keeps at least one actor alive: leave room for the decode and write tasks.
        share = min(1.0, total_cpus / (len(stage_names) + 1))
        blocks = max(1, min(len(items), math.ceil(len(items) / rows_per_task)))
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        # Decode and write tasks mostly wait on files: half a share each. (Different resources also keep
        # Ray Data from fusing decoding into the first annotator's actors.)
        task_cpus = share / 2
        dataset = dataset.map_batches(
            _decode_batch, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus,
            fn_kwargs={"decode": decode, "max_pixels": max_pixels},
        )
        for position, name in enumerate(stage_names):
            if gpus[name] > 0:
                most = workers or max(1, int(total_gpus / gpus[name]))
            else:
                most = workers or max(1, int((total_cpus - task_cpus) / (share * len(stage_names))))
            dataset = dataset.map_batches(
                _actor_class(name, loaders[name], last=position == len(stage_names) - 1),
                batch_format="pyarrow",
                batch_size=max(rows_per_task, (batch_sizes or {}).get(name, 1)),
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=most),
                num_cpus=share,
                num_gpus=gpus[name] or None,
            )
        dataset = dataset.map_batches(_write_batch, batch_format="pyarrow", batch_size=None, num_cpus=task_cpus)

        failed: list[tuple[int, Failure]] = []
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                if row["fatal"]:
                    raise _fatal_error(json.loads(row["fatal"]))
                if row["reason"] is None:
                    summary.written += 1
                else:
                    failed.append((row["index"], Failure(row["source"], row["reason"])))
    summary.failed.extend(failure for _, failure in sorted(failed, key=lambda item: item[0]))
    summary.seconds = time.perf_counter() - started
    return summary


# ------------------------------------------------------------------------------- tasks and actors


def _schema(guide_columns: Sequence[str]) -> Any:
    import pyarrow as pa

    guide = pa.list_(pa.struct([("data", pa.large_binary()), ("shape", pa.list_(pa.int64())), ("dtype", pa.string())]))
    fields = [
        ("index", pa.int64()), ("source", pa.string()), ("needed", pa.string()), ("targets", pa.string()),
        ("image", pa.large_binary()), ("shape", pa.list_(pa.int64())), ("dtype", pa.string()),
        ("error", pa.string()), ("fatal", pa.string()),
    ]
    return pa.schema(fields + [(column, guide) for column in guide_columns])


def _table(rows: list[dict[str, Any]], guide_columns: Sequence[str]) -> Any:
    import pyarrow as pa

    schema = _schema(guide_columns)
    for row in rows:
        for field in schema.names:
            row.setdefault(field, None)
    return pa.Table.from_pylist(rows, schema=schema)


def _guide_columns(table: Any) -> list[str]:
    return [name for name in table.column_names if name.startswith("guide:")]


def _decode_batch(table: Any, decode: Callable[[Path, int], np.ndarray], max_pixels: int) -> Any:
    """Read and decode each row's file (Ray task); a failure becomes the row's ``error``."""
    rows = table.to_pylist()
    for row in rows:
        try:
            image = np.ascontiguousarray(decode(Path(row["source"]), max_pixels))
        except GuidesError as error:
            row["error"] = failure_reason(error, row["source"])
            continue
        except Exception as error:
            try:
                row["error"] = decode_failure_reason(row["source"], error)
            except InternalError as bug:  # a bug in the reader: the whole run stops, as locally
                row["fatal"] = _internal_payload(bug)
            continue
        row.update(image=image.tobytes(), shape=list(image.shape), dtype=image.dtype.str)
    return _table(rows, [])


def _actor_class(name: str, loader: Callable[[], Stage], last: bool) -> type:
    """A ``_StageActor`` subclass carrying its annotator's loader, so actors take no constructor
    arguments (Ray keeps those in the object store, which restarts of actors depend on)."""
    safe = "".join(char if char.isalnum() else "_" for char in name)
    attributes = {"NAME": name, "LOADER": staticmethod(loader), "LAST": last, "__module__": __name__}
    return type(f"Annotate_{safe}", (_StageActor,), attributes)


class _StageActor:
    """One annotator, built once per actor; annotates the rows that need it (Ray actor)."""

    NAME: str = ""
    LOADER: Callable[[], Stage]
    LAST: bool = False

    def __init__(self) -> None:
        self.name = self.NAME
        self.column = f"guide:{self.name}"
        self.last = self.LAST
        self.fatal: str | None = None
        try:
            self.stage: Stage | None = type(self).LOADER()
        except GuidesError as error:  # a missing checkpoint etc.: the whole run stops, as locally
            self.stage = None
            self.fatal = json.dumps({"type": type(error).__name__, "message": str(error), "exit_code": error.exit_code})

    def __call__(self, table: Any) -> Any:
        rows = table.to_pylist()
        columns = _guide_columns(table) + [self.column]
        if self.fatal is not None:
            for row in rows:
                row["fatal"] = self.fatal
            return _table(rows, columns)
        assert self.stage is not None
        work = [row for row in rows if row["error"] is None and row["image"] is not None and self.name in json.loads(row["needed"])]
        images = [np.frombuffer(row["image"], dtype=np.dtype(row["dtype"])).reshape(row["shape"]).copy() for row in work]
        groups: dict[Hashable, list[int]] = {}
        for position, image in enumerate(images):
            groups.setdefault(self.stage.batch_key(image), []).append(position)
        size = max(1, self.stage.batch_size)
        for members in groups.values():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                try:
                    results = run_stage(self.stage, self.name, [images[i] for i in chunk], [work[i]["source"] for i in chunk])
                except InternalError as bug:  # a bug, not bad input: the whole run stops, as locally
                    for row in rows:
                        row["fatal"] = _internal_payload(bug)
                    return _table(rows, columns)
                for position, result in zip(chunk, results):
                    row = work[position]
                    if isinstance(result, Failure):
                        row.update(error=result.reason, image=None)
                        for column in columns:
                            row[column] = None
                    else:
                        row[self.column] = [_pack(guide) for guide in (result if isinstance(result, tuple) else (result,))]
        if self.last:
            for row in rows:
                row["image"] = None
        return _table(rows, columns)

    def __del__(self) -> None:
        close = getattr(getattr(self, "stage", None), "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _internal_payload(error: InternalError) -> str:
    """An ``InternalError`` as a row's ``fatal`` JSON; the driver raises it again (``_fatal_error``)."""
    cause = error.error
    try:
        pickled = pickle.dumps(cause).hex()
    except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
        pickled = None
    return json.dumps({
        "type": "InternalError", "path": error.path, "stage": error.stage, "error_type": type(cause).__name__,
        "message": str(cause), "pickled": pickled,
        "traceback": "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)),
    })


def _pack(guide: Any) -> dict[str, Any]:
    if isinstance(guide, np.ndarray):
        array = np.ascontiguousarray(guide)
        return {"data": array.tobytes(), "shape": list(array.shape), "dtype": array.dtype.str}
    return {"data": pickle.dumps(guide), "shape": [], "dtype": _PICKLED}


def _unpack(packed: Mapping[str, Any]) -> Any:
    if packed["dtype"] == _PICKLED:
        return pickle.loads(packed["data"])  # noqa: S301 - our own actor's output, same job
    return np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"])).reshape(packed["shape"])


def _write_batch(table: Any) -> Any:
    """Encode and write each row's guides atomically (Ray task), as the local engine's writer does."""
    import pyarrow as pa

    guide_columns = _guide_columns(table)
    out: dict[str, list[Any]] = {"index": [], "source": [], "reason": [], "fatal": []}
    for row in table.to_pylist():
        reason = row["error"]
        if reason is None and row["fatal"] is None:
            results = {column.split(":", 1)[1]: tuple(_unpack(packed) for packed in row[column])
                       for column in guide_columns if row[column] is not None}
            try:
                write_guides(row["source"], json.loads(row["targets"]), results)
            except GuidesError as error:
                reason = failure_reason(error, row["source"])
            except OSError as error:  # disk full, permissions: this file's failure
                reason = write_failure_reason(error)
            except InternalError as bug:  # a guide that cannot be encoded: a bug, the run stops
                row["fatal"] = _internal_payload(bug)
        out["index"].append(row["index"])
        out["source"].append(row["source"])
        out["reason"].append(reason)
        out["fatal"].append(row["fatal"])
    schema = pa.schema([("index", pa.int64()), ("source", pa.string()), ("reason", pa.string()), ("fatal", pa.string())])
    return pa.Table.from_pydict(out, schema=schema)


def _fatal_error(payload: Mapping[str, Any]) -> Exception:
    """The driver-side exception of a ``fatal`` row: the ``GuidesError`` that stopped an actor's loader, or
    the ``InternalError`` of a bug met on a worker (its worker traceback is logged at debug level)."""
    if payload.get("type") == "InternalError":
        cause: BaseException | None = None
        if payload.get("pickled"):
            with contextlib.suppress(Exception):
                cause = pickle.loads(bytes.fromhex(str(payload["pickled"])))  # noqa: S301 - our own worker's
        if not isinstance(cause, BaseException):
            cause = RuntimeError(f"{payload.get('error_type')}: {payload.get('message')}")
        logger.debug("traceback on the Ray worker:\n%s", payload.get("traceback"))
        error = InternalError(payload.get("path"), payload.get("stage"), cause)
        error.__cause__ = cause
        return error
    kind = getattr(errors, str(payload.get("type")), None)
    message = str(payload.get("message"))
    if isinstance(kind, type) and issubclass(kind, GuidesError) and kind not in (errors.InputError, errors.OutputError):
        return kind(message)
    error = GuidesError(message)
    error.exit_code = int(payload.get("exit_code", 1))
    return error


def run_specs_on_ray(
    specs: Sequence[Any],
    loaders: Mapping[str, Callable[[], Stage]],
    jobs: Sequence[Job],
    failures: Sequence[Failure],
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quiet: bool = False,
    address: str | None = None,
    num_gpus_per_worker: float = 0.0,
) -> Summary:
    """``guides run --engine ray``: GPU fractions and batch sizes for the learned annotators of ``specs``
    (registry ``AnnotatorSpec``s; non-learned ones such as canny get CPU actors)."""
    import_ray()
    from ..annotators.base import ModelOptions

    gpus: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for spec in specs:
        options_type = spec.annotator_class().Options
        learned = issubclass(options_type, ModelOptions)
        gpus[spec.name] = num_gpus_per_worker if learned else 0.0
        if learned:
            sizes[spec.name] = batch_size or options_type().batch_size
    return run_jobs_ray(
        jobs, loaders, workers=workers, overwrite=overwrite, max_pixels=max_pixels, progress=False if quiet else None,
        failures=failures, address=address, num_gpus=gpus, batch_sizes=sizes,
    )


class RayExportEngine:
    """``guides dataset --engine ray``: each shard's jobs (the photo stage plus the annotators) run through
    ``run_jobs_ray`` on one Ray runtime kept up for the whole export (closed by ``close``)."""

    def __init__(self, entries: Sequence[Any], *, learned: Sequence[str] = (), batch_sizes: Mapping[str, int] | None = None,
                 workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool | None = False,
                 address: str | None = None, num_gpus_per_worker: float = 0.0) -> None:
        from ..dataset.export import PHOTO_STAGE, PhotoStage

        import_ray()
        self.loaders: dict[str, Callable[[], Stage]] = {PHOTO_STAGE: PhotoStage}
        self.loaders.update({entry.name: entry.load for entry in entries})
        self.gpus = {name: (num_gpus_per_worker if name in learned else 0.0) for name in self.loaders}
        self.batch_sizes = dict(batch_sizes or {})
        self.workers = workers
        self.max_pixels = max_pixels
        self.progress = progress
        self.address = address
        self._runtime: contextlib.ExitStack | None = None

    def run(self, jobs: Sequence[Job], decode: Callable[[Path, int], np.ndarray]) -> Summary:
        if self._runtime is None:
            stack = contextlib.ExitStack()
            stack.enter_context(ray_runtime(self.address))
            self._runtime = stack
        return run_jobs_ray(jobs, self.loaders, workers=self.workers, max_pixels=self.max_pixels, progress=self.progress,
                            decode=decode, num_gpus=self.gpus, batch_sizes=self.batch_sizes)

    def model_files(self) -> dict[str, list[dict[str, Any]]]:
        """The annotators load in Ray actors, not here: the card lists the catalog's entries."""
        from ..dataset.card import describe_model_files
        from ..dataset.export import PHOTO_STAGE

        return {name: describe_model_files(name, None) for name in self.loaders if name != PHOTO_STAGE}

    def close(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
