"""The batch engines: files and folders in, guides out.

* ``planning``: inputs (files, folders walked for photos) to ``Job``s, the output naming rule;
* ``resume``: skip/resume (``output_is_complete``, ``stages_to_run``, ``work_to_do``);
* ``writing``: atomic writes of a job's guides, removal of the temporary files of killed runs;
* ``stage_calls``: one batch through a stage (``run_stage``, ``run_predict``), failures isolated;
* ``reasons``: the one-line reasons of failed files (bad input, out of memory, decode, write);
* ``summary``: ``Failure`` and ``Summary``;
* ``local``: ``run_jobs``, the thread-pool engine (staged annotators pipelined);
* ``ray``: ``run_jobs_ray``, the same jobs on Ray Data (imported on first use: ``ray`` is an extra).

Both engines share the skip/resume decision, the stale-temporary cleanup, the failure reasons and the
writer, so they write byte-identical guides and the same failure lines. Importing this package imports
neither torch nor ray.
"""

from __future__ import annotations

from typing import Any

from .local import is_staged, run_jobs
from .planning import EXTRA_OUTPUT_NAMES, Job, is_own_output, output_names, output_path, plan_jobs, walk_images
from .reasons import decode_failure_reason, failure_reason, is_out_of_memory, out_of_memory_reason, write_failure_reason
from .resume import output_is_complete, stages_to_run, work_to_do
from .stage_calls import Stage, run_predict, run_stage
from .summary import Failure, Summary
from .writing import GuideResult, remove_stale_temporaries, write_guides

_RAY_NAMES = ("RayExportEngine", "import_ray", "ray_runtime", "run_jobs_ray", "run_specs_on_ray")


def __getattr__(name: str) -> Any:
    """The Ray engine's names, imported from ``guides.engines.ray`` on first use (it imports ray lazily too)."""
    if name in _RAY_NAMES:
        from . import ray as ray_engine

        return getattr(ray_engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXTRA_OUTPUT_NAMES", "Failure", "GuideResult", "Job", "Stage", "Summary", "decode_failure_reason", "failure_reason",
    "is_out_of_memory", "is_own_output", "is_staged", "out_of_memory_reason", "output_is_complete", "output_names",
    "output_path", "plan_jobs", "remove_stale_temporaries", "run_jobs", "run_predict", "run_stage", "stages_to_run",
    "walk_images", "work_to_do", "write_failure_reason", "write_guides", *_RAY_NAMES,
]
