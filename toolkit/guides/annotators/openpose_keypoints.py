"""OpenPose post-processing as controlnet_aux 0.0.10 does it (its ``Body``, ``Hand``, ``Face`` and
``util.handDetect`` / ``faceDetect``), computed to the same numbers with less work.

Body (one scale, 0.5 x 368 / height, as the reference):

1. ``body_input``: the BGR working image resized by that scale (INTER_AREA shrinking, INTER_LANCZOS4
   enlarging), padded right and down to multiples of 8 with 128;
2. ``full_size_maps``: the network's 1/8 maps enlarged x8 (LANCZOS4), the padding cut, resized to the
   working size (AREA or LANCZOS4 by the reference's rule), each channel on its own as the reference does
   (OpenCV's multi-channel resize differs from it in the last bit at some sizes, measured). The background
   heatmap (channel 18) is never used and is not resized; part-affinity channels are resized only for the
   limbs whose two parts both have candidates (none at all in a photo without people);
3. ``find_peaks``: per part, a Gaussian blur (sigma 3, radius 12, reflected borders: scipy's
   ``gaussian_filter`` arithmetic, reproduced bit for bit in float64) and the 4-neighbour local maxima
   above 0.1 of the blurred map, scored on the unblurred one. A blurred value can exceed 0.1 only within
   12 pixels of an unblurred value above 0.1 (its weights are positive and sum to 1), so the blur runs only
   on that part's bounding box of such pixels widened by 26 pixels (the window, the neighbour comparison,
   the window again): the same numbers as blurring the whole map, without blurring the empty rest;
4. ``connect_limbs`` and ``assemble_people``: the part-affinity scores of every candidate pair (10 samples
   on the segment, rounded half to even, summed in the reference's order), the greedy matching, and the
   reference's person assembly (merging, its 17-limb rule for new people, removal of people with fewer than
   4 parts or a mean score under 0.4), vectorised where it does not change a number.

Hands (``hand_boxes``: the reference's box from shoulder, elbow and wrist; ``hand_inputs``: the crop
blurred (sigma 0.8) and resized to 184, 368, 552 and 736 pixels; ``hand_peaks``: the four maps enlarged x8
(LANCZOS4), reduced to 128 x 128 (AREA), averaged in float64, blurred, thresholded at 0.05, the component
with the largest sum kept, its maximum scaled back to the crop). Every hand crop at one scale has the same
size, so all the hands of a batch share one network call per scale.

Face (``face_box``, ``face_input``: the crop resized to 384 x 384; ``face_peaks``: the last stage's maps
resized bilinearly (align_corners) to the crop, and each channel's first maximum where it is over 0.05;
the reference keeps all 71 channels, the background's included, compacting away the absent ones: its
drawing draws exactly those, and so does ours).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    import torch

BOX_SIZE = 368
BODY_SCALE = 0.5
STRIDE = 8
PAD_VALUE = 128
PART_THRESHOLD = 0.1
AFFINITY_THRESHOLD = 0.05
AFFINITY_SAMPLES = 10
PARTS = 18
HAND_KEYPOINTS = 21
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
HAND_MAP_SIZE = 128
HAND_THRESHOLD = 0.05
FACE_INPUT = 384
FACE_THRESHOLD = 0.05
FACE_LANDMARKS = 70
BLUR_SIGMA = 3.0

#: The 19 limbs (part A, part B), zero-based OpenPose COCO-18 parts (0 nose, 1 neck, 2-4 right arm,
#: 5-7 left arm, 8-10 right leg, 11-13 left leg, 14/15 eyes, 16/17 ears); the first 17 are drawn.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17))
#: The part-affinity channels (x, y) of each limb in the network's 38.
LIMB_CHANNELS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
                 (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
#: Only these first limbs may start a new person (the reference's ``k < 17``).
LIMBS_STARTING_PEOPLE = 17


@dataclasses.dataclass(frozen=True)
class Person:
    """One person: 18 parts, each (x, y, score) in working-image pixels or None, and the assembly's
    total score and part count (the reference's ``BodyResult``)."""

    parts: tuple[tuple[float, float, float] | None, ...]
    total_score: float
    total_parts: int


@dataclasses.dataclass(frozen=True)
class HandBox:
    """A square hand crop (x, y, side in working pixels) and whether it is the person's left hand."""

    x: int
    y: int
    side: int
    is_left: bool


@dataclasses.dataclass(frozen=True)
class FaceBox:
    x: int
    y: int
    side: int


# ---------------------------------------------------------------------------------------- resizing


def _interpolation(source: tuple[int, int], target: tuple[float, float]) -> int:
    """The reference's ``smart_resize`` rule: INTER_AREA when the summed sides shrink, else LANCZOS4."""
    ratio = float(target[0] + target[1]) / float(source[0] + source[1])
    return cv2.INTER_AREA if ratio < 1 else cv2.INTER_LANCZOS4


def smart_resize(image: np.ndarray, height: float, width: float) -> np.ndarray:
    """Resize to (int(height), int(width)) by the reference's rule: images of 1 or 3 channels at once,
    maps of other channel counts one channel at a time (the reference's arithmetic)."""
    size = (int(width), int(height))
    interpolation = _interpolation(image.shape[:2], (height, width))
    if image.ndim == 2 or image.shape[2] in (1, 3):
        resized = cv2.resize(image, size, interpolation=interpolation)
        return resized if resized.ndim == image.ndim else resized[:, :, None]
    out = np.empty((size[1], size[0], image.shape[2]), image.dtype)
    for channel in range(image.shape[2]):
        out[:, :, channel] = cv2.resize(np.ascontiguousarray(image[:, :, channel]), size, interpolation=interpolation)
    return out


def pad_right_down(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Pad (H, W, C) at the bottom and right to multiples of 8 with 128: (padded, pad down, pad right)."""
    down = (-image.shape[0]) % STRIDE
    right = (-image.shape[1]) % STRIDE
    if down or right:
        image = np.pad(image, ((0, down), (0, right), (0, 0)), constant_values=PAD_VALUE)
    return image, down, right


def body_scale(working_height: int) -> float:
    return BODY_SCALE * BOX_SIZE / working_height


def body_input_size(working_height: int, working_width: int) -> tuple[int, int]:
    """(height, width) of the working image at the body network's scale, before padding."""
    scale = body_scale(working_height)
    return int(working_height * scale), int(working_width * scale)


def body_input(bgr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The body network's input for a BGR working image: (padded uint8 image, pad down, pad right)."""
    scale = body_scale(bgr.shape[0])
    return pad_right_down(smart_resize(bgr, bgr.shape[0] * scale, bgr.shape[1] * scale))


def full_size_maps(maps: np.ndarray, pad_down: int, pad_right: int, size: tuple[int, int],
                   channels: list[int] | None = None) -> np.ndarray:
    """Network maps (C, h, w) at the working size (H, W, len(channels)) float32, as the reference makes
    them: x8 (LANCZOS4), padding cut, then to ``size`` by its rule. ``channels``: the ones needed."""
    selected = maps if channels is None else maps[channels]
    if selected.shape[0] == 0:
        return np.zeros((*size, 0), np.float32)
    hwc = selected.transpose(1, 2, 0)
    enlarged = smart_resize(hwc, hwc.shape[0] * STRIDE, hwc.shape[1] * STRIDE)
    enlarged = enlarged[:enlarged.shape[0] - pad_down, :enlarged.shape[1] - pad_right]
    return smart_resize(enlarged, size[0], size[1])


# ------------------------------------------------------------------------------------------ blurring


@lru_cache(maxsize=4)
def _gaussian_weights(sigma: float) -> tuple[float, ...]:
    """scipy.ndimage's Gaussian kernel (truncate 4): the centre weight, then the weights at 1..radius."""
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets ** 2)
    weights = weights / weights.sum()
    return tuple(float(w) for w in weights[radius:])


def gaussian_blur(values: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(values, sigma)`` for a 2-D float64 array, in scipy's arithmetic
    (symmetric kernel: centre term, then the pairs from the outermost in; rows, then columns; reflected
    borders), so the numbers are the same bit for bit."""
    weights = _gaussian_weights(sigma)
    radius = len(weights) - 1
    out = values.astype(np.float64, copy=False)
    for axis in (0, 1):
        length = out.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")

        def window(shift: int, padded: np.ndarray = padded, axis: int = axis, length: int = length) -> np.ndarray:
            index = [slice(None), slice(None)]
            index[axis] = slice(radius + shift, radius + shift + length)
            return padded[tuple(index)]

        blurred = window(0) * weights[0]
        for distance in range(radius, 0, -1):
            blurred += (window(-distance) + window(distance)) * weights[distance]
        out = blurred
    return out


# --------------------------------------------------------------------------------------------- peaks


def find_peaks(heatmaps: np.ndarray) -> list[np.ndarray]:
    """Per part, its candidates (n, 3) float64: x, y (working pixels), score (the unblurred heatmap),
    in the reference's order (rows, then columns). ``heatmaps``: (H, W, 18) float32."""
    height, width = heatmaps.shape[:2]
    radius = len(_gaussian_weights(BLUR_SIGMA)) - 1
    peaks = []
    for part in range(PARTS):
        values = heatmaps[:, :, part]
        # below 0.1 everywhere (with a margin for rounding): the blur (an average) is too
        hot = values > PART_THRESHOLD * (1 - 1e-6)
        rows, cols = np.any(hot, axis=1), np.any(hot, axis=0)
        if not rows.any():
            peaks.append(np.zeros((0, 3)))
            continue
        y0, y1 = int(np.argmax(rows)), height - int(np.argmax(rows[::-1]))
        x0, x1 = int(np.argmax(cols)), width - int(np.argmax(cols[::-1]))
        # blurred > 0.1 possible within `radius` of a hot pixel; the neighbours of those one further
        oy0, oy1 = max(y0 - radius - 1, 0), min(y1 + radius + 1, height)
        ox0, ox1 = max(x0 - radius - 1, 0), min(x1 + radius + 1, width)
        # exact blurred values on that region and one pixel around it: the window once more
        by0, by1 = max(oy0 - radius - 1, 0), min(oy1 + radius + 1, height)
        bx0, bx1 = max(ox0 - radius - 1, 0), min(ox1 + radius + 1, width)
        blurred = gaussian_blur(values[by0:by1, bx0:bx1].astype(np.float64))
        # the evaluated region, with one pixel of context (zero outside the image, as the reference)
        cy0, cy1, cx0, cx1 = oy0 - by0, oy1 - by0, ox0 - bx0, ox1 - bx0
        context = np.zeros((oy1 - oy0 + 2, ox1 - ox0 + 2))
        ry0, rx0 = max(cy0 - 1, 0), max(cx0 - 1, 0)
        ry1, rx1 = min(cy1 + 1, blurred.shape[0]), min(cx1 + 1, blurred.shape[1])
        context[ry0 - (cy0 - 1):ry1 - (cy0 - 1), rx0 - (cx0 - 1):rx1 - (cx0 - 1)] = blurred[ry0:ry1, rx0:rx1]
        centre = context[1:-1, 1:-1]
        is_peak = ((centre >= context[:-2, 1:-1]) & (centre >= context[2:, 1:-1]) & (centre >= context[1:-1, :-2])
                   & (centre >= context[1:-1, 2:]) & (centre > PART_THRESHOLD))
        ys, xs = np.nonzero(is_peak)
        ys, xs = ys + oy0, xs + ox0
        scores = values[ys, xs].astype(np.float64)
        peaks.append(np.stack([xs.astype(np.float64), ys.astype(np.float64), scores], axis=1))
    return peaks


def limbs_with_candidates(peaks: list[np.ndarray]) -> list[int]:
    """The limbs whose two parts both have candidates (only their affinity channels are needed)."""
    return [k for k, (a, b) in enumerate(LIMBS) if len(peaks[a]) and len(peaks[b])]


def affinity_channels(limbs: list[int]) -> list[int]:
    return [channel for k in limbs for channel in LIMB_CHANNELS[k]]


# ------------------------------------------------------------------------------------- association


def _linspace(start: np.ndarray, stop: np.ndarray, num: int) -> np.ndarray:
    """numpy's ``linspace(start, stop, num)`` of each pair of float64 ends (samples last): its arithmetic,
    ``arange(num) * step + start`` with the last sample set to ``stop``."""
    step = (stop - start) / (num - 1)
    values = np.arange(num, dtype=np.float64) * step[..., None] + start[..., None]
    values[..., -1] = stop
    return values


def connect_limbs(peaks: list[np.ndarray], affinities: dict[int, np.ndarray], height: int) -> dict[int, np.ndarray]:
    """Per limb with candidates at both ends, the chosen connections (n, 5): candidate id A, id B, score,
    index in A, index in B. ``affinities``: limb -> its (H, W, 2) float32 part-affinity field."""
    offsets = np.cumsum([0] + [len(p) for p in peaks])
    connections: dict[int, np.ndarray] = {}
    for k, field in affinities.items():
        part_a, part_b = LIMBS[k]
        cand_a, cand_b = peaks[part_a], peaks[part_b]
        n_a, n_b = len(cand_a), len(cand_b)
        ax, ay = cand_a[:, 0][:, None], cand_a[:, 1][:, None]
        bx, by = cand_b[:, 0][None, :], cand_b[:, 1][None, :]
        vx, vy = np.broadcast_to(bx - ax, (n_a, n_b)), np.broadcast_to(by - ay, (n_a, n_b))
        norm = np.maximum(np.sqrt(vx * vx + vy * vy), 0.001)
        ux, uy = vx / norm, vy / norm
        xs = _linspace(np.broadcast_to(ax, (n_a, n_b)), np.broadcast_to(bx, (n_a, n_b)), AFFINITY_SAMPLES)
        ys = _linspace(np.broadcast_to(ay, (n_a, n_b)), np.broadcast_to(by, (n_a, n_b)), AFFINITY_SAMPLES)
        rx, ry = np.rint(xs).astype(np.intp), np.rint(ys).astype(np.intp)
        sampled = field[ry, rx].astype(np.float64)  # (n_a, n_b, samples, 2)
        along = sampled[..., 0] * ux[..., None] + sampled[..., 1] * uy[..., None]
        total = along[..., 0].copy()
        for sample in range(1, AFFINITY_SAMPLES):  # the reference's sequential sum
            total += along[..., sample]
        score = total / AFFINITY_SAMPLES + np.minimum(0.5 * height / norm - 1, 0)
        good = ((along > AFFINITY_THRESHOLD).sum(axis=2) > 0.8 * AFFINITY_SAMPLES) & (score > 0)
        pairs = [(int(i), int(j)) for i, j in zip(*np.nonzero(good))]  # row-major: the reference's loop order
        pairs.sort(key=lambda pair: score[pair], reverse=True)  # stable, as sorted(..., reverse=True)
        used_a, used_b, rows = set(), set(), []
        for i, j in pairs:
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            rows.append((offsets[part_a] + i, offsets[part_b] + j, score[i, j], i, j))
            if len(rows) >= min(n_a, n_b):
                break
        connections[k] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return connections


def assemble_people(peaks: list[np.ndarray], connections: dict[int, np.ndarray]) -> list[Person]:
    """The reference's person assembly from the limb connections (see the module docstring)."""
    scores = np.concatenate([p[:, 2] for p in peaks]) if peaks else np.zeros(0)
    coordinates = np.concatenate([p[:, :2] for p in peaks]) if peaks else np.zeros((0, 2))
    people: list[np.ndarray] = []  # rows of 20: 18 candidate ids (-1 none), total score, part count
    for k in range(len(LIMBS)):
        if k not in connections:
            continue
        part_a, part_b = LIMBS[k]
        for id_a, id_b, score, _, _ in connections[k]:
            found = [index for index, row in enumerate(people) if row[part_a] == id_a or row[part_b] == id_b][:2]
            if len(found) == 1:
                row = people[found[0]]
                if row[part_b] != id_b:
                    row[part_b] = id_b
                    row[-1] += 1
                    row[-2] += scores[int(id_b)] + score
            elif len(found) == 2:
                first, second = people[found[0]], people[found[1]]
                overlap = ((first >= 0).astype(int) + (second >= 0).astype(int))[:-2]
                if not (overlap == 2).any():
                    first[:-2] += second[:-2] + 1
                    first[-2:] += second[-2:]
                    first[-2] += score
                    del people[found[1]]
                else:
                    first[part_b] = id_b
                    first[-1] += 1
                    first[-2] += scores[int(id_b)] + score
            elif not found and k < LIMBS_STARTING_PEOPLE:
                row = -1 * np.ones(PARTS + 2)
                row[part_a], row[part_b] = id_a, id_b
                row[-1] = 2
                row[-2] = scores[int(id_a)] + scores[int(id_b)] + score
                people.append(row)
    result = []
    for row in people:
        if row[-1] < 4 or row[-2] / row[-1] < 0.4:
            continue
        parts = tuple(
            None if int(index) == -1 else (float(coordinates[int(index), 0]), float(coordinates[int(index), 1]),
                                           float(scores[int(index)]))
            for index in row[:PARTS]
        )
        result.append(Person(parts, float(row[-2]), int(row[-1])))
    return result


def find_people(pafs: np.ndarray, heatmaps: np.ndarray, pad_down: int, pad_right: int,
                size: tuple[int, int]) -> list[Person]:
    """The people in a working image of ``size`` (H, W) from the body network's (38, h, w) part-affinity
    fields and (19, h, w) heatmaps of its padded input."""
    peaks = find_peaks(full_size_maps(heatmaps, pad_down, pad_right, size, channels=list(range(PARTS))))
    limbs = limbs_with_candidates(peaks)
    fields = full_size_maps(pafs, pad_down, pad_right, size, channels=affinity_channels(limbs))
    affinities = {k: fields[:, :, 2 * n:2 * n + 2] for n, k in enumerate(limbs)}
    return assemble_people(peaks, connect_limbs(peaks, affinities, size[0]))


# --------------------------------------------------------------------------------------------- hands


def hand_boxes(person: Person, height: int, width: int) -> list[HandBox]:
    """The reference's ``handDetect``: a square around each hand from its wrist, elbow and shoulder
    (left, then right), clipped to the image, kept when its side is at least 20 pixels."""
    boxes = []
    for shoulder, elbow, wrist, is_left in ((5, 6, 7, True), (2, 3, 4, False)):
        points = [person.parts[i] for i in (shoulder, elbow, wrist)]
        if any(point is None for point in points):
            continue
        (x1, y1, _), (x2, y2, _), (x3, y3, _) = points
        ratio = 0.33
        x = x3 + ratio * (x3 - x2)
        y = y3 + ratio * (y3 - y2)
        wrist_elbow = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
        elbow_shoulder = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
        side = 1.5 * max(wrist_elbow, 0.9 * elbow_shoulder)
        x -= side / 2
        y -= side / 2
        x, y = max(x, 0), max(y, 0)
        side_x = width - x if x + side > width else side
        side_y = height - y if y + side > height else side
        side = min(side_x, side_y)
        if side >= 20:
            boxes.append(HandBox(int(x), int(y), int(side), is_left))
    return boxes


def hand_inputs(bgr: np.ndarray, box: HandBox) -> list[np.ndarray]:
    """The hand network's four square inputs (uint8 BGR, 184 to 736 pixels) for one hand box."""
    crop = bgr[box.y:box.y + box.side, box.x:box.x + box.side]
    blurred = cv2.GaussianBlur(crop, (0, 0), 0.8)
    return [smart_resize(blurred, scale * BOX_SIZE, scale * BOX_SIZE) for scale in HAND_SCALES]


def hand_peaks(maps: list[np.ndarray], crop_size: tuple[int, int]) -> np.ndarray:
    """The 21 keypoints (21, 2) int (x, y in the crop of ``crop_size`` (height, width); 0, 0 when absent)
    from the network's maps (22, s/8, s/8) at the four scales, as the reference's ``Hand`` finds them."""
    average = np.zeros((HAND_MAP_SIZE, HAND_MAP_SIZE, HAND_KEYPOINTS))
    for scale_maps in maps:
        hwc = scale_maps[:HAND_KEYPOINTS].transpose(1, 2, 0)
        enlarged = smart_resize(hwc, hwc.shape[0] * STRIDE, hwc.shape[1] * STRIDE)
        average += smart_resize(enlarged, HAND_MAP_SIZE, HAND_MAP_SIZE) / len(maps)
    points = np.zeros((HAND_KEYPOINTS, 2), np.int64)
    for part in range(HAND_KEYPOINTS):
        values = average[:, :, part]
        binary = np.ascontiguousarray(gaussian_blur(values) > HAND_THRESHOLD, dtype=np.uint8)
        if not binary.any():
            continue
        count, labels = cv2.connectedComponents(binary, connectivity=8, ltype=cv2.CV_32S)
        sums = [np.sum(values[labels == label]) for label in range(1, count)]
        kept = np.where(labels == int(np.argmax(sums)) + 1, values, 0.0)
        y, x = np.unravel_index(int(np.argmax(kept)), kept.shape)
        points[part] = (int(float(x) * float(crop_size[1]) / float(HAND_MAP_SIZE)),
                        int(float(y) * float(crop_size[0]) / float(HAND_MAP_SIZE)))
    return points


# ---------------------------------------------------------------------------------------------- face


def face_box(person: Person, height: int, width: int) -> FaceBox | None:
    """The reference's ``faceDetect``: a square around the nose sized by the eyes and ears (None without
    the nose or any of them, or under 20 pixels)."""
    nose = person.parts[0]
    others = [(person.parts[index], factor) for index, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5))]
    if nose is None or all(point is None for point, _ in others):
        return None
    x0, y0 = nose[0], nose[1]
    side = 0.0
    for point, factor in others:
        if point is not None:
            side = max(side, max(abs(x0 - point[0]), abs(y0 - point[1])) * factor)
    x, y = max(x0 - side, 0), max(y0 - side, 0)
    side_x = width - x if x + side > width else side * 2
    side_y = height - y if y + side > height else side * 2
    side = min(side_x, side_y)
    return FaceBox(int(x), int(y), int(side)) if side >= 20 else None


def face_input(bgr: np.ndarray, box: FaceBox) -> np.ndarray:
    """The face network's input (uint8 BGR, 384 x 384) for one face box."""
    crop = bgr[box.y:box.y + box.side, box.x:box.x + box.side]
    return smart_resize(crop, FACE_INPUT, FACE_INPUT)


def face_peaks(maps: torch.Tensor, crop_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(channels (n,), points (n, 2) int x, y in the crop) of the 71 face maps (71, h, w) whose bilinear
    enlargement to ``crop_size`` (align_corners) exceeds 0.05 somewhere: each one's first maximum."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        enlarged = F.interpolate(maps[None].float(), crop_size, mode="bilinear", align_corners=True)[0]
        flat = enlarged.reshape(enlarged.shape[0], -1)
        best, where = flat.max(dim=1)
    best_np, where_np = best.numpy(), where.numpy()
    present = np.nonzero(best_np > FACE_THRESHOLD)[0]
    # torch's max returns a maximum's index; the reference takes the first in row-major order
    points = []
    for channel in present:
        index = int(where_np[channel])
        row = flat[channel]
        if bool((row[:index] == row[index]).any()):
            index = int(torch.nonzero(row == row[index])[0, 0])
        points.append((index % crop_size[1], index // crop_size[1]))
    return present, np.array(points, dtype=np.int64).reshape(-1, 2)


def normalised(points: np.ndarray, offset_x: int, offset_y: int, width: int, height: int) -> np.ndarray:
    """Crop points to the reference's normalised float32 coordinates: -1/size where a coordinate is 0 (its
    mark of an absent point), else (offset + value) / size."""
    values = points.astype(np.float32)
    out = np.empty_like(values)
    out[:, 0] = np.where(values[:, 0] < 1e-6, -1, values[:, 0] + offset_x) / float(width)
    out[:, 1] = np.where(values[:, 1] < 1e-6, -1, values[:, 1] + offset_y) / float(height)
    return out
