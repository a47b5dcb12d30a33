"""Straight-line guides with M-LSD (``mlsd_large_512_fp32.pth``): white segments, one pixel wide, on
black, the convention of ControlNet v1.1's mlsd model.

Pipeline (ControlNet's, as controlnet_aux 0.0.10's ``MLSDdetector`` runs it):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64). The
   detector hands ``pred_lines`` the working size as its input shape, so the network sees the working
   image itself (no further resize; controlnet_aux's INTER_AREA resize to the same size is a copy);
2. network input: RGB / 127.5 - 1 and a fourth, constant channel (ones before the same scaling:
   1 / 127.5 - 1); the network's maps are at half the working size: a line-centre logit and four
   displacements (start x, y, end x, y) from a centre to its segment's ends;
3. decoding: centre score = sigmoid(logit), kept only where it is the maximum of its 3x3 neighbourhood;
   the 200 best centres (top-k) whose score is above ``score_threshold`` and whose segment is longer than
   ``distance_threshold`` (in half-resolution pixels) become segments, endpoints ``2 * (centre +
   displacement)`` truncated to integers (float32 comparisons, float64 coordinates, as the reference);
4. each segment drawn with ``cv2.line`` (width 1, value 255) on a black image of the working size (the
   reference stops drawing at a segment whose coordinates OpenCV cannot take -- beyond 32-bit -- and so
   does this); then resized to the input size with ``cv2.INTER_LINEAR`` (so edges of lines become grey
   where the size changes).

The network and the top-k run batched on the device (``forward``); the thresholds and drawing per image
in ``render``, so a folder run decodes in the engine's worker threads.

``--resolution 0`` keeps the input size: the network needs sides that are multiples of 16, so the image
is reflect-padded at the bottom and right, centres in the padding are ignored and lines are drawn on the
unpadded image (controlnet_aux returns a black guide for such sizes: its decoder fails and the error is
swallowed). Likewise images with fewer than 200 centres (under 40 x 40 at resolution 0) take them all.

Speed (about 0.72x the reference detector's time per 512 x 512 image on 2 CPU cores, same weights): the
network's batch norms are folded into its convolutions at load, each activation runs fused with its
convolution (one oneDNN call on the CPU), the stride-2 layers use an equivalent 4x4 kernel instead of
padding a copy of their input, everything stays in channels-last memory (oneDNN's native layout) and the
head computes only the five maps the decoder reads.

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU). Segments come from thresholds and integer
truncation, so a lower precision moves, adds or drops some of them; fp16 on the CPU is refused (no fast
half-precision convolutions there); use bf16.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from ..imaging import resize_to
from ..options import option
from ..weights.declarations import MB, ANNOTATORS_REPO, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from .base import ModelOptions
from .learned import LearnedAnnotator, WorkingImage, check_rgb_batch, pad_to_multiple

NETWORK_MULTIPLE = 16
"""Sides the network maps to exactly half their size; other sizes (``--resolution 0``) are padded."""
TOP_K = 200
"""Line centres the decoder considers per image (the best scores after 3x3 peak suppression)."""
PEAK_WINDOW = 3
"""Side of the max-pool window a centre must be the maximum of."""
LINE_VALUE = 255
LINE_WIDTH = 1
_CV_INT_MAX = 2**31 - 1  # OpenCV takes point coordinates as 32-bit ints

#: One decoded candidate per row of ``forward``'s output: centre row, column (half-resolution pixels),
#: score, then the four displacements (start x, start y, end x, end y).
CANDIDATE_FIELDS = ("y", "x", "score", "start_dx", "start_dy", "end_dx", "end_dy")


@dataclasses.dataclass(frozen=True)
class MlsdOptions(ModelOptions):
    score_threshold: float = option(
        0.1, "Keep line centres whose score (0 to 1) is above this.", min=0.0, max=1.0,
    )
    """Keep line centres whose score (sigmoid of the centre logit) is above this (ControlNet's ``thr_v``)."""
    distance_threshold: float = option(
        0.1, "Keep segments longer than this, in pixels of the half-size map.", min=0.0,
    )
    """Keep segments longer than this, in pixels of the half-size map (ControlNet's ``thr_d``; 0.1 keeps
    nearly all)."""


# ------------------------------------------------------------------------------------------- annotator


class MlsdAnnotator(LearnedAnnotator):
    """M-LSD straight-line segments; one forward per batch of images with the same working size."""

    name = "mlsd"
    summary = "Straight line segments (M-LSD), white on black."
    #: 16.8 Mpx: about 0.45 GB of activations per Mpx at fp32 (measured at 1024 x 1024).
    default_max_working_pixels = 1 << 24
    Options = MlsdOptions
    options: MlsdOptions
    checkpoints = (
        Checkpoint(
            name="mlsd",
            repo=ANNOTATORS_REPO,
            filename="mlsd_large_512_fp32.pth",
            # No public source found naming this file at a commit, nor its exact size or digest.
            revision="main",
            container="state_dict",
            licence="Apache-2.0 (M-LSD, Gu et al.)",
            used_by="mlsd",
            approx_size=6 * MB,  # the state dict of this network saved by torch.save: 6,332,011 bytes
            description="M-LSD large line-segment detector (MobileNetV2 trunk), 512 px",
        ),
    )
    union_modes = (
        UnionMode("xinsir", "thin line"),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15_mlsd",
            # No public source found naming a commit of this repository: the moving branch.
            revision="main",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            kind="mlsd",
        ),
    )

    def load(self) -> Any:
        """``mlsd_large_512_fp32.pth``, loaded strictly (CPU, fp32)."""
        from ..nets.mlsd import mlsd_large

        return self.load_checkpoint(mlsd_large)

    def to_device(self, model: Any) -> Any:
        """Batch norms folded, head trimmed (``prepare_for_inference``), on the device in channels-last."""
        import torch

        model = model.eval().prepare_for_inference()
        return model.to(self.device, self.dtype, memory_format=torch.channels_last)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """The ``TOP_K`` best line centres of each RGB uint8 working image (B, H, W, 3): (B, K, 7) float32
        rows of ``CANDIDATE_FIELDS``, best score first (K = ``TOP_K``, or every centre of a tiny map)."""
        import torch
        import torch.nn.functional as F

        check_rgb_batch(images, "mlsd")
        count, height, width = images.shape[:3]
        padded = pad_to_multiple(images, NETWORK_MULTIPLE, NETWORK_MULTIPLE)
        with torch.inference_mode():
            pixels = torch.from_numpy(np.ascontiguousarray(padded)).to(self.device)
            batch = torch.empty((count, 4) + padded.shape[1:3], dtype=torch.float32, device=self.device,
                                memory_format=torch.channels_last)
            batch[:, :3] = pixels.permute(0, 3, 1, 2)
            batch[:, 3] = 1.0
            batch = batch.div_(127.5).sub_(1.0).to(self.dtype)
            maps = self.model(batch).float()
            self.check_finite(maps)
            heat = torch.sigmoid(maps[:, 0])
            peaks = F.max_pool2d(heat, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
            heat = heat * (peaks == heat)
            # centres whose pixel 2 * (y, x) lies in the padding do not exist in the image
            heat[:, (height + 1) // 2:] = 0
            heat[:, :, (width + 1) // 2:] = 0
            map_width = heat.shape[2]
            scores, indices = torch.topk(heat.flatten(1), min(TOP_K, heat[0].numel()), dim=1)
            displacement = maps[:, 1:5].flatten(2).gather(2, indices[:, None].expand(-1, 4, -1))
            rows = torch.div(indices, map_width, rounding_mode="floor")
            candidates = torch.cat(
                (rows[:, :, None].float(), (indices % map_width)[:, :, None].float(), scores[:, :, None],
                 displacement.transpose(1, 2)),
                dim=2,
            )
        return candidates.cpu().numpy()

    def segments(self, candidates: np.ndarray) -> np.ndarray:
        """The segments (N, 4) int64 (x start, y start, x end, y end, working-image pixels) that the
        thresholds keep among one image's candidates, in score order."""
        centres = candidates[:, :2].astype(np.float64)
        scores = candidates[:, 2]
        starts, ends = candidates[:, 3:5], candidates[:, 5:7]
        lengths = np.sqrt(np.sum((starts - ends) ** 2, axis=-1))
        keep = (scores > np.float32(self.options.score_threshold)) & (lengths > np.float32(self.options.distance_threshold))
        yx = centres[keep]
        xy = yx[:, ::-1]
        ends_xy = np.concatenate([xy + starts[keep].astype(np.float64), xy + ends[keep].astype(np.float64)], axis=1)
        coordinates = np.trunc(2.0 * ends_xy)
        fits = np.abs(coordinates) <= _CV_INT_MAX
        bad = np.flatnonzero(~fits.all(axis=1))
        if bad.size:  # the reference stops drawing at the first segment OpenCV cannot take
            coordinates = coordinates[: bad[0]]
        return coordinates.astype(np.int64)

    def draw(self, segments: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``segments`` drawn (width 1, value 255) on a black (H, W) uint8 image of ``size`` (H, W)."""
        canvas = np.zeros(size, np.uint8)
        for x0, y0, x1, y1 in segments.tolist():
            cv2.line(canvas, (x0, y0), (x1, y1), LINE_VALUE, LINE_WIDTH)
        return canvas

    def render(self, prediction: np.ndarray, item: WorkingImage) -> np.ndarray:
        lines = self.draw(self.segments(prediction), item.pixels.shape[:2])
        return resize_to(lines, (item.input_size[1], item.input_size[0]))
