"""Post-processing shared by the soft-edge annotators (hed, pidinet, teed, anyline), as ControlNet's
annotators define it.

* ``safe_step``: quantise an edge probability map in [0, 1] to ``steps`` levels (``--safe``), which removes
  the faint texture a ControlNet would otherwise copy;
* ``scribble``: turn a soft-edge guide (uint8) into a binary scribble (``--scribble``): non-maximum
  suppression of the blurred map along four directions, threshold 127, a blur of sigma 3 and every pixel
  above 4 set to 255 (the rest 0).

And the two ControlNets these guides are meant for, declared once here for every soft-edge annotator
(one guide kind, one set of facts): ``SOFTEDGE_CONTROLNET`` and, with ``--scribble``, ``SCRIBBLE_CONTROLNET``.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..weights.declarations import MB, ControlNet

#: The ControlNet of soft-edge guides (kind ``softedge``: hed, pidinet, teed).
SOFTEDGE_CONTROLNET = ControlNet(
    kind="softedge",
    repo="lllyasviel/control_v11p_sd15_softedge",
    # stated: https://huggingface.co/lllyasviel/control_v11p_sd15_softedge/resolve/b5bcad0c48e9b12f091968cf5eadbb89402d6bc9/diffusion_pytorch_model.fp16.safetensors
    # (imaginAIry's ControlNet configs, as for canny's commit)
    revision="b5bcad0c48e9b12f091968cf5eadbb89402d6bc9",
    licence="OpenRAIL (ControlNet v1.1)",
    approx_size=1_450 * MB,
)

#: The ControlNet of scribbles (kind ``scribble``: hed and pidinet with ``--scribble``).
SCRIBBLE_CONTROLNET = ControlNet(
    kind="scribble",
    when=(("scribble", True),),
    repo="lllyasviel/control_v11p_sd15_scribble",
    # no public source found stating a commit of this repository: main (not pinned)
    licence="OpenRAIL (ControlNet v1.1)",
    approx_size=1_450 * MB,
)

#: The four 3x3 line kernels (horizontal, vertical, both diagonals) of the non-maximum suppression.
_NMS_KERNELS = (
    np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0]], np.uint8),
    np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], np.uint8),
    np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.uint8),
    np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], np.uint8),
)

SCRIBBLE_THRESHOLD = 127
SCRIBBLE_SIGMA = 3.0
SCRIBBLE_KEEP_ABOVE = 4


def safe_step(edge: np.ndarray, steps: int = 2) -> np.ndarray:
    """``edge`` (probabilities in [0, 1]) quantised to ``steps`` levels: ``floor(edge * (steps + 1)) / steps``
    as float32 (values above 1 are clipped later, when the guide is made uint8)."""
    scaled = edge.astype(np.float32) * np.float32(steps + 1)
    return scaled.astype(np.int32).astype(np.float32) / np.float32(steps)


def suppress_non_maxima(guide: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """255 where the blurred ``guide`` is a local maximum along one of four directions and above
    ``threshold``, else 0 (uint8)."""
    blurred = cv2.GaussianBlur(guide.astype(np.float32), (0, 0), sigma)
    peaks = np.zeros_like(blurred)
    for kernel in _NMS_KERNELS:
        np.putmask(peaks, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    return np.where(peaks > threshold, np.uint8(255), np.uint8(0))


def scribble(guide: np.ndarray) -> np.ndarray:
    """The binary scribble (0/255 uint8) of a soft-edge guide (H, W) uint8."""
    lines = suppress_non_maxima(guide, SCRIBBLE_THRESHOLD, SCRIBBLE_SIGMA)
    lines = cv2.GaussianBlur(lines, (0, 0), SCRIBBLE_SIGMA)
    return np.where(lines > SCRIBBLE_KEEP_ABOVE, np.uint8(255), np.uint8(0))
