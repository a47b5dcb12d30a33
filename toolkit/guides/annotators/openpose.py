"""Pose guides with OpenPose (``body_pose_model.pth``; ``--hands``: ``hand_pose_model.pth``; ``--face``:
``facenet.pth``): ControlNet's openpose skeletons on black, and the keypoints as an OpenPose JSON document
(the ``keypoints`` sidecar).

Pipeline (controlnet_aux 0.0.10's ``OpenposeDetector`` with detect resolution = image resolution = ours):

1. working image = ``resize_image(image, resolution)`` (short side to N, sides multiples of 64;
   ``--resolution 0`` keeps the input size), in BGR order as the reference feeds its networks;
2. ``prepare``: the body network's input, the working image at 184 / height (one scale, the reference's),
   padded to multiples of 8 with 128; an image so narrow that its width becomes 0 at that scale fails with
   one line (the reference crashes in OpenCV);
3. ``predict`` (device): the body network on the batch, ``uint8 / 256 - 0.5``; with ``--hands`` or
   ``--face`` the people are assembled right there (``openpose_keypoints``: the crops depend on them), and
   the hand network runs on every hand crop of the batch at each of the four scales (one call per scale:
   all crops of a scale have the same size) and the face network on every face crop (384 x 384);
4. ``finish_with_sidecar`` (worker threads): the people (when ``predict`` did not assemble them), the
   hand keypoints and face landmarks from their maps, the drawing at the working size
   (``openpose_drawing``), resized to the input size with ``cv2.INTER_LINEAR``, and the document in
   input pixels from the same keypoints. ``finish`` returns the guide alone.

Why draw at the working size and then resize: that is the reference's guide exactly (it draws at the
detect size, then resizes to the image resolution's size with INTER_LINEAR; here the second size is the
input's), so the parity is the reference run at detect = image resolution = ours, then ``cv2.resize`` to
the input size with ``INTER_LINEAR``. Drawing at the input size directly would move discs and limb
ellipses by the integer truncations of the two sizes: not the reference's pixels.

Exactness: the post-processing reproduces the reference's arithmetic (its OpenCV resizes channel by
channel, scipy's Gaussian blur bit for bit, its float32 / float64 keypoint normalisation), so with equal
network outputs the keypoints and the guide are the reference's exactly; the networks themselves agree to
float rounding (channels-last convolutions). The work it skips is work the result does not depend on: the
background heatmap, the blur far from any part, the affinity fields of limbs without candidates.

Precision: fp32 (default), bf16 (CPU or GPU) and fp16 (GPU); fp16 on the CPU is refused (no fast
half-precision convolutions there); use bf16. ``--checkpoint`` names the body network's file; the hand and
face files are found by name (``--models-dir``, the hub cache or ``--download``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, UsageError
from ..imaging import resize_to
from ..options import option
from ..weights.declarations import ANNOTATORS_COMMIT, ANNOTATORS_REPO, MB, Checkpoint, ControlNet
from ..weights.union_models import UnionMode
from . import openpose_keypoints as kp
from .base import ModelOptions, Sidecar
from .learned import LearnedAnnotator, working_image
from .openpose_drawing import Pose, draw_poses, keypoints_document

log = logging.getLogger(__name__)

BODY, HAND, FACE = "openpose-body", "openpose-hand", "openpose-face"
LICENCE = "CMU OpenPose academic / non-commercial licence (as ControlNet ships it)"


@dataclasses.dataclass(frozen=True)
class OpenposeOptions(ModelOptions):
    hands: bool = option(False, "Also find and draw hands (21 keypoints each; loads hand_pose_model.pth).")
    """Hand keypoints from boxes at each wrist (the reference's ``include_hand``)."""
    face: bool = option(False, "Also find and draw face landmarks (70; loads facenet.pth).")
    """Face landmarks from a box around the nose, eyes and ears (the reference's ``include_face``)."""


@dataclasses.dataclass(frozen=True)
class PoseItem:
    """A prepared image: the working image (RGB), the input's size, and the body network's input."""

    pixels: np.ndarray
    input_size: tuple[int, int]
    body_input: np.ndarray
    """The working image in BGR at the body scale, padded to multiples of 8 (uint8)."""
    pad: tuple[int, int]
    """(down, right) padding of ``body_input``."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.pixels.shape


@dataclasses.dataclass
class PoseOutput:
    """The networks' results for one image: the body maps, and with hands/face the people and the maps of
    their crops (filled by ``predict``)."""

    pafs: np.ndarray
    heatmaps: np.ndarray
    people: list[kp.Person] | None = None
    hands: list[list[tuple[kp.HandBox, list[np.ndarray]]]] = dataclasses.field(default_factory=list)
    faces: list[tuple[kp.FaceBox, np.ndarray] | None] = dataclasses.field(default_factory=list)


def _crop_size(x: int, y: int, side: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) of ``image[y:y+side, x:x+side]`` (a box can reach past the image's edge)."""
    return min(y + side, height) - y, min(x + side, width) - x


class OpenposeAnnotator(LearnedAnnotator):
    """OpenPose body (and hand, face) keypoints drawn as ControlNet's openpose guide."""

    name = "openpose"
    summary = "Pose skeletons (OpenPose body; --hands, --face), and the keypoints as OpenPose JSON."
    #: 16.8 Mpx: the full-size maps (18 heatmaps, up to 38 affinity fields, float32) are about 0.25 GB per Mpx.
    default_max_working_pixels = 1 << 24
    Options = OpenposeOptions
    options: OpenposeOptions
    sidecar = Sidecar("keypoints", "OpenPose JSON: people with pose/hand/face keypoints [x, y, c] in input pixels.")
    checkpoints = (
        # stated: a public model download manifest fetches the three files from lllyasviel/Annotators at
        # 982e7edaec38759d914a963c48c4726685de7d96 with these byte sizes and sha256 digests.
        Checkpoint(
            name=BODY, repo=ANNOTATORS_REPO, filename="body_pose_model.pth", revision=ANNOTATORS_COMMIT,
            container="state_dict", licence=LICENCE, used_by="openpose", size=209_267_595,
            sha256="25a948c16078b0f08e236bda51a385d855ef4c153598947c28c0d47ed94bb746",
            description="OpenPose body network (COCO 18 parts, part-affinity fields)",
        ),
        Checkpoint(
            name=HAND, repo=ANNOTATORS_REPO, filename="hand_pose_model.pth", revision=ANNOTATORS_COMMIT,
            container="state_dict", licence=LICENCE, used_by="openpose --hands", size=147_341_049,
            sha256="b76b00d1750901abd07b9f9d8c98cc3385b8fe834a26d4b4f0aad439e75fc600",
            description="OpenPose hand network (21 keypoints)", when=(("hands", True),),
        ),
        Checkpoint(
            name=FACE, repo=ANNOTATORS_REPO, filename="facenet.pth", revision=ANNOTATORS_COMMIT,
            container="state_dict", licence=LICENCE, used_by="openpose --face", size=153_718_792,
            sha256="8beb52e548624ffcc4aed12af7aee7dcbfaeea420c75609fee999fe7add79d43",
            description="OpenPose face network (70 landmarks)", when=(("face", True),),
        ),
    )
    controlnets = (
        ControlNet(
            repo="lllyasviel/control_v11p_sd15_openpose",
            # No public source found naming a commit of this repository: the moving branch.
            revision="main",
            licence="OpenRAIL (ControlNet v1.1)",
            approx_size=1_450 * MB,
            kind="openpose",
        ),
    )
    union_modes = (UnionMode("xinsir", "openpose"), UnionMode("instantx", "pose"))

    # ------------------------------------------------------------------------------------ loading

    def checkpoint_file(self, name: str) -> Path:
        """As ``LearnedAnnotator.checkpoint_file``, with ``--checkpoint`` applying to the body file only;
        ``loaded_files`` lists every file resolved so far (body, hand, face)."""
        path = self._checkpoints.get(name)
        if path is None:
            from ..weights.resolve import resolve_checkpoint

            explicit = self.options.checkpoint if name == BODY else None
            path = Path(resolve_checkpoint(name, explicit=explicit, models_dir=self.options.models_dir,
                                           download=self.options.download))
            self._checkpoints[name] = path
        self.loaded_files = tuple(self._checkpoints.values())
        return path

    def load(self) -> Any:
        """The selected files, each loaded strictly into its network (CPU, fp32)."""
        from ..nets.openpose import OpenposeNetworks, body_network, face_network, hand_network
        from ..weights.load import load_checkpoint_into

        builders = {BODY: body_network, HAND: hand_network, FACE: face_network}
        declared = {checkpoint.name: checkpoint for checkpoint in type(self).checkpoints}
        networks = {}
        for name in type(self).checkpoint_names(self.options):
            path = self.checkpoint_file(name)
            log.info("%s: loading %s", self.name, path)
            networks[name] = load_checkpoint_into(builders[name], path, container=declared[name].container,
                                                  key_filters=declared[name].key_filters)
        return OpenposeNetworks(networks[BODY], networks.get(HAND), networks.get(FACE))

    def to_device(self, model: Any) -> Any:
        from ..nets.nnpack_convolution import runs_on_nnpack
        from ..nets.openpose import to_channels_last

        for flag, network in (("hands", model.hand), ("face", model.face)):
            if getattr(self.options, flag) and network is None:
                raise UsageError(f"openpose: --{flag} needs its network, which this model does not hold")
        model = model.to(self.device, self.dtype).eval()
        if runs_on_nnpack(self.device, self.dtype):
            return model  # NCHW, as NNPACK reads it
        return to_channels_last(model) if self.device.type in ("cpu", "cuda") else model

    # ---------------------------------------------------------------------------- the engine stages

    def prepare(self, image: np.ndarray) -> PoseItem:
        """The working image and the body network's input (refused when too large or too narrow)."""
        pixels = working_image(self.name, image, self.options, self.default_max_working_pixels)
        height, width = pixels.shape[:2]
        scaled = kp.body_input_size(height, width)
        if min(scaled) < 1:
            raise InputError(
                None,
                f"{image.shape[1]}x{image.shape[0]} image: working size {width}x{height} is too narrow for the "
                f"body network (it becomes {scaled[1]}x{scaled[0]} at its scale {kp.BOX_SIZE // 2}/height)",
            )
        body, down, right = kp.body_input(np.ascontiguousarray(pixels[:, :, ::-1]))
        return PoseItem(pixels, (int(image.shape[0]), int(image.shape[1])), body, (down, right))

    def _run(self, network: Any, inputs: np.ndarray) -> Any:
        """``network`` on uint8 BGR images (N, H, W, 3) as ``uint8 / 256 - 0.5``, in chunks of the batch size."""
        import torch

        outputs = []
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(inputs[start:start + self.batch_size])).to(self.device)
                # (N, H, W, 3) -> (N, 3, H, W) is channels-last in memory: no copy before the network
                x = (batch.permute(0, 3, 1, 2).float() / 256 - 0.5).to(self.dtype)
                result = network(x)
                result = result if isinstance(result, tuple) else (result,)
                for tensor in result:
                    self.check_finite(tensor)
                outputs.append(tuple(tensor.float().cpu().numpy() for tensor in result))
        return tuple(np.concatenate(parts) for parts in zip(*outputs))

    def predict(self, items: list[PoseItem]) -> list[PoseOutput]:
        pafs, heatmaps = self._run(self.model.body, np.stack([item.body_input for item in items]))
        outputs = [PoseOutput(pafs[i], heatmaps[i]) for i in range(len(items))]
        if self.options.hands or self.options.face:
            self._detect_parts(items, outputs)
        return outputs

    def _detect_parts(self, items: list[PoseItem], outputs: list[PoseOutput]) -> None:
        """People, then the hand and face networks on all their crops in the batch (one call per hand
        scale: the crops of a scale share a size)."""
        hand_crops: list[list[np.ndarray]] = [[] for _ in kp.HAND_SCALES]
        hand_slots: list[tuple[PoseOutput, int, kp.HandBox]] = []
        face_crops: list[np.ndarray] = []
        face_slots: list[tuple[PoseOutput, int, kp.FaceBox]] = []
        for item, output in zip(items, outputs):
            height, width = item.pixels.shape[:2]
            output.people = kp.find_people(output.pafs, output.heatmaps, *item.pad, (height, width))
            output.hands = [[] for _ in output.people]
            output.faces = [None] * len(output.people)
            bgr = np.ascontiguousarray(item.pixels[:, :, ::-1])
            for index, person in enumerate(output.people):
                if self.options.hands:
                    for box in kp.hand_boxes(person, height, width):
                        for scale, crop in enumerate(kp.hand_inputs(bgr, box)):
                            hand_crops[scale].append(crop)
                        hand_slots.append((output, index, box))
                if self.options.face:
                    face = kp.face_box(person, height, width)
                    if face is not None:
                        face_crops.append(kp.face_input(bgr, face))
                        face_slots.append((output, index, face))
        if hand_slots:
            per_scale = [self._run(self.model.hand, np.stack(crops))[0] for crops in hand_crops]
            for n, (output, index, box) in enumerate(hand_slots):
                output.hands[index].append((box, [maps[n] for maps in per_scale]))
        if face_slots:
            (maps,) = self._run(self.model.face, np.stack(face_crops))
            for n, (output, index, box) in enumerate(face_slots):
                output.faces[index] = (box, maps[n])

    def poses(self, item: PoseItem, output: PoseOutput) -> list[Pose]:
        """The people of one image with their hands and face, normalised as the reference keeps them."""
        import torch

        height, width = item.pixels.shape[:2]
        people = output.people
        if people is None:
            people = kp.find_people(output.pafs, output.heatmaps, *item.pad, (height, width))
        poses = []
        for index, person in enumerate(people):
            body = tuple(None if part is None else (part[0] / float(width), part[1] / float(height))
                         for part in person.parts)
            scores = tuple(0.0 if part is None else part[2] for part in person.parts)
            hands: dict[bool, np.ndarray] = {}
            for box, maps in (output.hands[index] if output.hands else []):
                points = kp.hand_peaks(maps, _crop_size(box.x, box.y, box.side, height, width))
                hands[box.is_left] = kp.normalised(points, box.x, box.y, width, height)
            face = channels = None
            if output.faces and output.faces[index] is not None:
                box, maps = output.faces[index]
                crop = _crop_size(box.x, box.y, box.side, height, width)
                found, points = kp.face_peaks(torch.from_numpy(maps), crop)
                if len(found):
                    face, channels = kp.normalised(points, box.x, box.y, width, height), found
            poses.append(Pose(body, scores, hands.get(True), hands.get(False), face, channels))
        return poses

    def finish_with_sidecar(self, item: PoseItem, output: PoseOutput) -> tuple[np.ndarray, dict[str, Any]]:
        poses = self.poses(item, output)
        height, width = item.pixels.shape[:2]
        canvas = draw_poses(poses, height, width, hands=self.options.hands, face=self.options.face)
        guide = resize_to(canvas, (item.input_size[1], item.input_size[0]))
        document = keypoints_document(poses, *item.input_size, hands=self.options.hands, face=self.options.face)
        return guide, document

    def finish(self, item: PoseItem, output: PoseOutput) -> np.ndarray:
        return self.finish_with_sidecar(item, output)[0]
