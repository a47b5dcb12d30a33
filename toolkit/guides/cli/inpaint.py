"""``guides inpaint-target IMAGE...``: the subject mask (SAM) and the inpainting target in one step.

For each image it writes the mask (``guides mask``: white = repaint, black = keep) and the target
(``guides composite`` of the image with that mask: the image where the mask is black, the background
colour where it is white), without ever writing the mask to disk in between.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import click
import numpy as np

from ..engines import Job, plan_jobs
from ..errors import UsageError
from ..registry import REGISTRY, get
from .annotate import _report, _run, batch_options
from .options import apply, click_options

STAGE = "inpaint-target"
MASK, TARGET = "mask", "target"


class InpaintTargetStage:
    """A batch-engine stage: image -> (mask, target), both at the input size."""

    def __init__(self, annotator: Any, background: tuple[int, int, int]) -> None:
        self.annotator = annotator
        self.background = background

    @property
    def batch_size(self) -> int:
        return self.annotator.batch_size

    def batch_key(self, image: np.ndarray) -> Hashable:
        return self.annotator.batch_key(image)

    def annotate(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.annotate_batch([image])[0]

    def annotate_batch(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Masks (input size, as ``guides mask``) in the annotator's batches, and their targets."""
        from ..annotators.composite import composite

        masks = self.annotator.annotate_batch(images)
        return [(mask, composite(image, np.repeat(mask[:, :, None], 3, axis=2), self.background))
                for image, mask in zip(images, masks)]

    def close(self) -> None:
        self.annotator.close()


def _command() -> click.Command:
    spec = get("mask")
    cls = spec.annotator_class()

    def callback(inputs: tuple[str, ...], output: str | None, overwrite: bool, jobs: int | None, max_pixels: int,
                 quiet: bool, as_json: bool, background: str, **values: Any) -> None:
        from ..annotators.composite import parse_color

        if output is not None and output.lower().endswith(".png"):
            raise UsageError(f"-o {output}: inpaint-target writes two images per input; give a folder")
        color = parse_color(background)
        options = spec.options(**values)
        planned, failures = plan_jobs(inputs, [MASK, TARGET], output, per_stage_folders=True,
                                      own_outputs=(*REGISTRY, TARGET))
        planned = [Job(job.source, {STAGE: job.outputs[MASK] + job.outputs[TARGET]}) for job in planned]
        summary = _run(planned, failures, {STAGE: lambda: InpaintTargetStage(cls(options), color)},
                       jobs, overwrite, max_pixels, quiet)
        _report(summary, as_json)

    # The mask's options, derived from MaskOptions (as `guides mask`), then this command's own.
    own = click.option("--background", default="white", show_default=True,
                       help="Colour painted where the mask is white (name or #rrggbb).")
    command = batch_options(apply(callback, [*click_options(cls.Options), own]))
    return click.command(
        STAGE,
        short_help="Subject mask and inpainting target in one step (SAM).",
        help=(
            "Subject mask (SAM) and inpainting target in one step.\n\n"
            "The subject is chosen by --point/--negative-point/--box or, without them, automatically "
            "(the best-scored automatic mask covering the image centre); as `guides mask`. "
            "The mask keeps the subject (black) and repaints the rest (white) unless --invert; the target "
            "is the image where the mask is black and --background where it is white.\n\n"
            "Without -o, writes <stem>.mask.png and <stem>.target.png beside each input; with -o OUT, "
            "OUT/mask/<path>.png and OUT/target/<path>.png. Existing outputs are skipped unless --overwrite."
        ),
    )(command)


inpaint_target = _command()
