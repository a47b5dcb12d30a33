"""The soft-edge post-processing (``--safe``, ``--scribble``) equals ControlNet's (controlnet_aux's
``safe_step`` and the scribble steps of its HED/PiDiNet detectors), bit for bit."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from guides.annotators.soft_edges import safe_step, scribble


def _soft_edges(seed: int, height: int, width: int) -> np.ndarray:
    """Blurred random lines of several strengths on black (what a soft-edge network gives), uint8."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((height, width), np.uint8)
    for _ in range(12):
        x0, x1 = rng.integers(0, width, 2)
        y0, y1 = rng.integers(0, height, 2)
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), int(rng.integers(120, 256)), 5)
    return cv2.GaussianBlur(canvas, (0, 0), 1.5)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_safe_step_equals_the_reference(steps: int) -> None:
    from controlnet_aux.util import safe_step as reference

    edge = np.random.default_rng(steps).random((64, 80))
    edge[0, :4] = [0.0, 1 / 3, 2 / 3, 1.0]  # exact step boundaries
    got = safe_step(edge, steps)
    assert got.dtype == np.float32
    assert np.array_equal(got, reference(edge, steps))
    assert len(np.unique(got)) == steps + 2 or steps == 1


def test_scribble_equals_the_reference_steps() -> None:
    from controlnet_aux.util import nms

    guide = _soft_edges(3, 120, 170)
    expected = nms(guide, 127, 3.0)
    expected = cv2.GaussianBlur(expected, (0, 0), 3.0)
    expected[expected > 4] = 255
    expected[expected < 255] = 0
    got = scribble(guide)
    assert got.dtype == np.uint8 and set(np.unique(got)) == {0, 255}
    assert 0.03 < (got == 255).mean() < 0.6, "the test map should give a real scribble"
    assert np.array_equal(got, expected)
