"""The OpenPose guide drawing and the OpenPose JSON keypoints document (the ``openpose`` sidecar).

Drawing (controlnet_aux 0.0.10's ``draw_poses``, on a black RGB canvas of the working size, person by
person: body, left hand, right hand, face):

* body: the first 17 limbs as filled ellipses (``cv2.ellipse2Poly``, half-width 4, angle and axes
  truncated to integers) in 60 % of the limb's colour, then discs of radius 4 on the parts in the 18
  OpenPose colours (red, orange, ... magenta);
* hands: the 20 bones as 2-pixel lines in the HSV hue wheel's colours (matplotlib's ``hsv_to_rgb``),
  then blue discs of radius 4 on the keypoints, skipping points at pixel 0 (the reference's absent points);
* face: white discs of radius 3 on the landmarks.

The reference keeps its keypoints normalised to [0, 1] (body in float64, hands and face in float32) and
draws at ``int(normalised * size)``; the same numbers are used here, so the discs land on the same pixels
(a point at 57 px can draw at 56 when the float32 round trip truncates: the reference's pixels).

Document (OpenPose's JSON format, as sd-webui-controlnet and the openpose editor read it):
``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, "hand_left_keypoints_2d": [x, y, c] * 21,
"hand_right_keypoints_2d": ..., "face_keypoints_2d": [x, y, c] * 70}], "canvas_width": W,
"canvas_height": H}`` in INPUT pixels (the normalised coordinates times the input size). A missing point
is 0, 0, 0; body confidences are the part's heatmap peak, hand and face points 1.0 (the reference keeps no
score for them). The hand keys are present only with ``--hands``, the face key only with ``--face``; a
person whose hand or face was not found has ``null`` there (sd-webui-controlnet's convention). "Left" is
the person's left hand (body parts 5-7), the reference's ``is_left``. Face landmarks are by index 0-69 (the
network's 71st map, the background, is left out; the reference's drawing, which draws whatever maps are
present, still draws it).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from .openpose_keypoints import FACE_LANDMARKS, HAND_KEYPOINTS, LIMBS, PARTS

#: The 18 part colours (RGB); limbs use 60 % of them.
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
DRAWN_LIMBS = 17
STICK_WIDTH = 4
#: The 20 hand bones (keypoint pairs): thumb, index, middle, ring, little finger, each from the wrist.
HAND_BONES = tuple((0 if joint % 4 == 0 else finger * 4 + joint % 4, finger * 4 + joint % 4 + 1)
                   for finger in range(5) for joint in range(4))
EPS = 0.01


@dataclasses.dataclass(frozen=True)
class Pose:
    """One person as drawn and written: normalised coordinates as the reference keeps them.

    ``body``: 18 entries (x, y) float64 in [0, 1] or None, with ``scores`` (18,); ``left_hand`` /
    ``right_hand``: (21, 2) float32 or None (negative: absent); ``face``: (n, 2) float32 of the maps found,
    ``face_channels`` their map indices, or None."""

    body: tuple[tuple[float, float] | None, ...]
    scores: tuple[float, ...]
    left_hand: np.ndarray | None = None
    right_hand: np.ndarray | None = None
    face: np.ndarray | None = None
    face_channels: np.ndarray | None = None


@lru_cache(maxsize=1)
def hand_bone_colours() -> tuple[tuple[float, float, float], ...]:
    """The bones' colours as the reference computes them (matplotlib's HSV wheel, times 255; OpenCV rounds)."""
    from matplotlib.colors import hsv_to_rgb

    return tuple(tuple(float(c) for c in hsv_to_rgb([index / float(len(HAND_BONES)), 1.0, 1.0]) * 255)
                 for index in range(len(HAND_BONES)))


def draw_body(canvas: np.ndarray, body: tuple[tuple[float, float] | None, ...]) -> None:
    height, width = canvas.shape[:2]
    for (a, b), colour in zip(LIMBS[:DRAWN_LIMBS], COLOURS):
        if body[a] is None or body[b] is None:
            continue
        ys = np.array([body[a][0], body[b][0]]) * float(width)
        xs = np.array([body[a][1], body[b][1]]) * float(height)
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), STICK_WIDTH), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in colour])
    for point, colour in zip(body, COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 4, colour, thickness=-1)


def _pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, 2) int pixels of float32 normalised points, in the reference's float32 arithmetic."""
    return np.stack([(points[:, 0] * np.float32(width)).astype(np.float32),
                     (points[:, 1] * np.float32(height)).astype(np.float32)], axis=1).astype(np.int64)


def draw_hand(canvas: np.ndarray, hand: np.ndarray | None) -> None:
    if hand is None or len(hand) == 0:
        return
    height, width = canvas.shape[:2]
    pixels = _pixels(hand, width, height)
    for (a, b), colour in zip(HAND_BONES, hand_bone_colours()):
        (x1, y1), (x2, y2) = pixels[a], pixels[b]
        if x1 > EPS and y1 > EPS and x2 > EPS and y2 > EPS:
            cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour, thickness=2)
    for x, y in pixels:
        if x > EPS and y > EPS:
            cv2.circle(canvas, (int(x), int(y)), 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: np.ndarray | None) -> None:
    if face is None or len(face) == 0:
        return
    height, width = canvas.shape[:2]
    for x, y in _pixels(face, width, height):
        if x > EPS and y > EPS:
            cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)


def draw_poses(poses: list[Pose], height: int, width: int, hands: bool, face: bool) -> np.ndarray:
    """The guide at the working size (H, W, 3) RGB uint8: every person's body, then its hands and face."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for pose in poses:
        draw_body(canvas, pose.body)
        if hands:
            draw_hand(canvas, pose.left_hand)
            draw_hand(canvas, pose.right_hand)
        if face:
            draw_face(canvas, pose.face)
    return canvas


def _hand_values(hand: np.ndarray | None, width: int, height: int) -> list[float] | None:
    if hand is None:
        return None
    values: list[float] = []
    for x, y in hand[:HAND_KEYPOINTS]:
        values += [0.0, 0.0, 0.0] if x < 0 or y < 0 else [float(x) * width, float(y) * height, 1.0]
    return values


def _face_values(pose: Pose, width: int, height: int) -> list[float] | None:
    if pose.face is None or pose.face_channels is None:
        return None
    values = [0.0] * (3 * FACE_LANDMARKS)
    for channel, (x, y) in zip(pose.face_channels, pose.face):
        if channel < FACE_LANDMARKS and x >= 0 and y >= 0:
            values[3 * channel:3 * channel + 3] = [float(x) * width, float(y) * height, 1.0]
    return values


def keypoints_document(poses: list[Pose], height: int, width: int, hands: bool, face: bool) -> dict[str, Any]:
    """The OpenPose JSON document of ``poses`` for an input of (height, width) pixels (module docstring)."""
    people = []
    for pose in poses:
        body: list[float] = []
        for point, score in zip(pose.body, pose.scores):
            body += [0.0, 0.0, 0.0] if point is None else [float(point[0]) * width, float(point[1]) * height, float(score)]
        person: dict[str, Any] = {"pose_keypoints_2d": body}
        if hands:
            person["hand_left_keypoints_2d"] = _hand_values(pose.left_hand, width, height)
            person["hand_right_keypoints_2d"] = _hand_values(pose.right_hand, width, height)
        if face:
            person["face_keypoints_2d"] = _face_values(pose, width, height)
        people.append(person)
    assert all(len(p["pose_keypoints_2d"]) == 3 * PARTS for p in people)
    return {"people": people, "canvas_width": int(width), "canvas_height": int(height)}
