"""OpenPose annotator: parity with controlnet_aux's ``OpenposeDetector`` (people, keypoints, guide), the
keypoints document, declarations, loading, errors, CLI and API.

Random networks find no people, so parity is shown two ways:

* synthetic maps: stand-in networks (``SyntheticBody``, ``SyntheticHand``, ``SyntheticFace``) whose outputs
  are heatmaps and part-affinity fields of two people with both arms and a face, drawn on the network's
  output grid from the input's size alone; the reference's detector and ours run them through their own
  post-processing (peaks, limb matching, people, hand and face boxes, crops, hand and face peaks) and
  drawing, and must agree: same people and parts, keypoints within 0.5 px, guide within 1 level;
* real networks, random weights in the public files' formats (keys without the block prefix for the body
  and hand, ``FaceNet``'s plain state dict), the body's last layers scaled so its maps have many peaks and
  strong fields: the same candidates, people and guide from the real network end to end.

The networks themselves are compared with the reference modules in tests/nets/test_openpose.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import guides
from guides.annotators.openpose import OpenposeAnnotator, OpenposeOptions
from guides.annotators.openpose_keypoints import LIMB_CHANNELS, LIMBS
from guides.errors import DeviceError, InputError, UsageError, WeightsError
from guides.nets.openpose import OpenposeNetworks
from guides.registry import get
from tests.annotators.bad_folder_runs import run_bad_folder
from tests.annotators.parity import agreement
from tests.cli_testing import invoke

GUIDE_SHARE = 0.999
KEYPOINT_TOLERANCE = 0.5


def load(**options) -> OpenposeAnnotator:
    """The annotator through the registry (its class contract checked), with these options."""
    spec = get("openpose")
    return spec.load(**options)  # type: ignore[return-value]

# ------------------------------------------------------------------------------ synthetic networks

#: Two people, parts in the body network's input pixels (184 rows) as (x, y); COCO-18 order:
#: nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right hip/knee/ankle, left
#: hip/knee/ankle, right eye, left eye, right ear, left ear.
PEOPLE = (
    ((50, 30), (50, 48), (36, 50), (28, 72), (22, 94), (64, 50), (72, 72), (78, 94), (42, 100), (40, 130),
     (39, 162), (58, 100), (60, 130), (61, 162), (46, 26), (54, 26), (41, 28), (59, 28)),
    ((130, 34), (130, 52), (116, 54), (108, 76), (102, 98), (144, 54), (152, 76), (158, 98), (122, 104),
     (120, 134), (119, 166), (138, 104), (140, 134), (141, 166), (126, 30), (134, 30), (121, 32), (139, 32)),
)


def _blob(shape: tuple[int, int], centre_x: float, centre_y: float, sigma: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float64), torch.arange(shape[1], dtype=torch.float64),
                            indexing="ij")
    return torch.exp(-((xs - centre_x) ** 2 + (ys - centre_y) ** 2) / (2 * sigma ** 2))


def _grid(value: float) -> float:
    """A network-input pixel coordinate on the 1/8 output grid (pixel centres)."""
    return (value + 0.5) / 8 - 0.5


class SyntheticBody(torch.nn.Module):
    """The body network's outputs (pafs (B, 38, h/8, w/8), heatmaps (B, 19, h/8, w/8)) for ``PEOPLE``."""

    def __init__(self, people: tuple = PEOPLE) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the reference finds its device from a parameter
        self.people = people

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (x.shape[2] // 8, x.shape[3] // 8)
        heat = torch.zeros(19, *shape, dtype=torch.float64)
        pafs = torch.zeros(38, *shape, dtype=torch.float64)
        ys, xs = torch.meshgrid(torch.arange(shape[0], dtype=torch.float64),
                                torch.arange(shape[1], dtype=torch.float64), indexing="ij")
        for person in self.people:
            for part, (px, py) in enumerate(person):
                heat[part] = torch.maximum(heat[part], 0.9 * _blob(shape, _grid(px), _grid(py), 0.7))
            for (a, b), (cx, cy) in zip(LIMBS, LIMB_CHANNELS):
                (ax, ay), (bx, by) = person[a], person[b]
                ax, ay, bx, by = _grid(ax), _grid(ay), _grid(bx), _grid(by)
                length = math.hypot(bx - ax, by - ay)
                ux, uy = (bx - ax) / length, (by - ay) / length
                t = ((xs - ax) * ux + (ys - ay) * uy).clamp(0, length)
                distance = torch.hypot(xs - (ax + t * ux), ys - (ay + t * uy))
                weight = torch.exp(-distance ** 2 / (2 * 0.6 ** 2))
                pafs[cx] += ux * weight
                pafs[cy] += uy * weight
        heat[18] = (1 - heat[:18].amax(0)).clamp(0, 1)
        batch = x.shape[0]
        return (pafs.float()[None].expand(batch, -1, -1, -1).contiguous(),
                heat.float()[None].expand(batch, -1, -1, -1).contiguous())


#: Hand keypoints in a crop, as fractions of its side: wrist, then four joints of each finger fanning up.
HAND_POINTS = tuple([(0.5, 0.85)] + [(0.5 + 0.09 * (finger - 2) * (1 + joint * 0.35), 0.72 - joint * 0.13)
                                     for finger in range(5) for joint in range(4)])
#: Face landmarks in a crop, as fractions of its side: 70 points on two rings.
FACE_POINTS = tuple((0.5 + radius * math.cos(angle), 0.55 + radius * 0.8 * math.sin(angle))
                    for radius, count in ((0.3, 40), (0.15, 30))
                    for angle in np.linspace(0, 2 * math.pi, count, endpoint=False))


class SyntheticKeypoints(torch.nn.Module):
    """A hand (22 maps) or face (71 maps) network's outputs: a blob at each point (fractions of the crop),
    the last map a smooth background whose maximum is unique."""

    def __init__(self, points: tuple[tuple[float, float], ...], sigma: float) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.points = points
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[2] // 8, x.shape[3] // 8)
        maps = [0.8 * _blob(shape, fx * shape[1] - 0.5, fy * shape[0] - 0.5, self.sigma * shape[0])
                for fx, fy in self.points]
        maps.append(0.3 + 0.5 * _blob(shape, shape[1] * 0.93, shape[0] * 0.07, shape[0] * 0.5))
        return torch.stack(maps).float()[None].expand(x.shape[0], -1, -1, -1).contiguous()


def synthetic_networks() -> OpenposeNetworks:
    return OpenposeNetworks(SyntheticBody(), SyntheticKeypoints(HAND_POINTS, 0.03), SyntheticKeypoints(FACE_POINTS, 0.012))


def reference_detector(networks: OpenposeNetworks):
    """controlnet_aux's ``OpenposeDetector`` around these networks (its loaders bypassed)."""
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face
    from controlnet_aux.open_pose.hand import Hand

    body, hand, face = Body.__new__(Body), Hand.__new__(Hand), Face.__new__(Face)
    body.model, hand.model, face.model = networks.body, networks.hand, ReferenceFaceOutputs(networks.face)
    return OpenposeDetector(body, hand, face)


class ReferenceFaceOutputs(torch.nn.Module):
    """The reference's ``FaceNet`` returns the six stages' maps and uses the last: a list around ours."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.network(x)]


def synthetic_annotator(**options) -> OpenposeAnnotator:
    return OpenposeAnnotator(OpenposeOptions(device="cpu", **options), model=synthetic_networks())


def reference_guide(detector, image: np.ndarray, resolution: int, hands: bool, face: bool) -> np.ndarray:
    """The reference at detect = image resolution = ours, resized to the input size (INTER_LINEAR)."""
    out = detector(image, detect_resolution=resolution, image_resolution=resolution, include_hand=hands,
                   include_face=face, output_type="np")
    return cv2.resize(out, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)


def reference_points(points, width: int, height: int) -> np.ndarray:
    """Reference keypoints (normalised; None or negative = absent) in input pixels, absent as 0, 0."""
    return np.array([[0.0, 0.0] if p is None or p.x < 0 or p.y < 0 else [p.x * width, p.y * height] for p in points])


def document_points(values: list[float]) -> np.ndarray:
    return np.array(values).reshape(-1, 3)[:, :2]


def assert_same_people(detector, image: np.ndarray, resolution: int, document: dict, hands: bool, face: bool) -> int:
    """Our document's people are the reference's (same order, same parts present, within 0.5 px in input
    pixels); returns how many have both hands and a face."""
    from controlnet_aux.util import resize_image as reference_resize

    height, width = image.shape[:2]
    poses = detector.detect_poses(reference_resize(image, resolution), hands, face)
    assert len(document["people"]) == len(poses)
    complete = 0
    for pose, person in zip(poses, document["people"]):
        expected = reference_points(pose.body.keypoints, width, height)
        got = document_points(person["pose_keypoints_2d"])
        assert ((expected == 0).all(1) == (got == 0).all(1)).all(), "same parts present"
        assert np.abs(expected - got).max() <= KEYPOINT_TOLERANCE
        if hands:
            for key, hand in (("hand_left_keypoints_2d", pose.left_hand), ("hand_right_keypoints_2d", pose.right_hand)):
                assert (person[key] is None) == (hand is None)
                if hand is not None:
                    assert np.abs(document_points(person[key]) - reference_points(hand, width, height)).max() <= KEYPOINT_TOLERANCE
        if face:
            assert (person["face_keypoints_2d"] is None) == (pose.face is None)
            if pose.face is not None:  # every landmark map is present here: the first 70 are landmarks 0-69
                assert len(pose.face) == 71
                expected_face = reference_points(pose.face[:70], width, height)
                assert np.abs(document_points(person["face_keypoints_2d"]) - expected_face).max() <= KEYPOINT_TOLERANCE
        complete += pose.left_hand is not None and pose.right_hand is not None and pose.face is not None
    return complete


def test_synthetic_people_hands_and_face_match_reference(make_photo) -> None:
    """Two people, both hands and a face each: the reference's people, keypoints and guide."""
    image = make_photo(3, 512, 512)
    ours = synthetic_annotator(hands=True, face=True)
    guide, document = ours.annotate_with_sidecar(image)
    detector = reference_detector(ours.model)
    expected = reference_guide(detector, image, 512, hands=True, face=True)
    share, worst = agreement(guide, expected)
    assert guide.shape == (512, 512, 3) and guide.dtype == np.uint8
    assert share >= GUIDE_SHARE, f"{share:.5f} within 1 level (max {worst})"
    assert assert_same_people(detector, image, 512, document, hands=True, face=True) >= 2
    assert (guide.reshape(-1, 3) == (0, 0, 255)).all(1).sum() > 500, "hand keypoints drawn (blue discs)"
    assert (guide.reshape(-1, 3) == 255).all(1).sum() > 500, "face landmarks drawn (white discs)"
    assert np.array_equal(ours.finish(ours.prepare(image), ours.predict([ours.prepare(image)])[0]), guide)


def test_synthetic_nonsquare_input_is_resized_back(make_photo) -> None:
    """A 600 x 750 photo (working size 512 x 640): guide and keypoints at the input size, the reference's
    at its working size resized (guide) and scaled (keypoints); face without hands."""
    image = make_photo(4, 600, 750)
    ours = synthetic_annotator(face=True)
    guide, document = ours.annotate_with_sidecar(image)
    detector = reference_detector(ours.model)
    share, worst = agreement(guide, reference_guide(detector, image, 512, hands=False, face=True))
    assert guide.shape == (600, 750, 3) and share >= GUIDE_SHARE, f"{share:.5f} (max {worst})"
    assert (document["canvas_width"], document["canvas_height"]) == (750, 600)
    assert_same_people(detector, image, 512, document, hands=False, face=True)
    assert all(set(person) == {"pose_keypoints_2d", "face_keypoints_2d"} for person in document["people"])


def test_document_format(make_photo) -> None:
    image = make_photo(5, 256, 256)
    guide, document = synthetic_annotator(resolution=256, hands=True).annotate_with_sidecar(image)
    assert json.loads(json.dumps(document)) == document
    assert set(document) == {"people", "canvas_width", "canvas_height"} and len(document["people"]) == 2
    for person in document["people"]:
        assert set(person) == {"pose_keypoints_2d", "hand_left_keypoints_2d", "hand_right_keypoints_2d"}
        body = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
        assert ((body[:, 2] > 0.1) & (body[:, 2] <= 1)).all(), "confidences: the parts' heatmap peaks"
        assert (body[:, :2] > 0).all() and (body[:, 0] < 256).all() and (body[:, 1] < 256).all()
        for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"):
            hand = np.array(person[key]).reshape(21, 3)
            assert set(hand[:, 2]) <= {0.0, 1.0} and (hand[:, 2] == 1).sum() >= 15
            assert (hand[hand[:, 2] == 0] == 0).all(), "a missing point is 0, 0, 0"
    left_wrist = np.array(document["people"][0]["pose_keypoints_2d"]).reshape(18, 3)[7, :2]
    left_hand = np.array(document["people"][0]["hand_left_keypoints_2d"]).reshape(21, 3)[0, :2]
    assert np.abs(left_wrist - left_hand).max() < 40, "the left hand is at the left wrist (parts 5-7)"
    plain = synthetic_annotator(resolution=256)
    plain_guide, plain_document = plain.annotate_with_sidecar(image)
    assert all(set(person) == {"pose_keypoints_2d"} for person in plain_document["people"])
    assert not np.array_equal(plain_guide, guide), "hands drawn only with --hands"


def test_batches_equal_single_images(make_photo) -> None:
    images = [make_photo(40, 64, 96), make_photo(41, 130, 70), make_photo(42, 66, 99)]
    batched = synthetic_annotator(resolution=64, batch_size=2)
    single = synthetic_annotator(resolution=64)
    for got, image in zip(batched.annotate_batch(images), images, strict=True):
        assert np.array_equal(got, single.annotate(image)) and got.shape == (*image.shape[:2], 3)


def test_narrow_and_tiny_images() -> None:
    """At --resolution 0 a 700 x 3 strip would be 0 pixels wide at the body scale: one line; a 1 x 1
    image works (184 x 184 at that scale) and gives a 1 x 1 guide."""
    ours = synthetic_annotator(resolution=0)
    with pytest.raises(InputError) as raised:
        ours.prepare(np.zeros((700, 3, 3), np.uint8))
    assert str(raised.value) == ("3x700 image: working size 3x700 is too narrow for the body network "
                                 "(it becomes 0x184 at its scale 184/height)")
    assert ours.annotate(np.zeros((1, 1, 3), np.uint8)).shape == (1, 1, 3)


# -------------------------------------------------------------------- real networks, random weights


def _scaled_reference_body(seed: int = 0) -> torch.nn.Module:
    """controlnet_aux's body network, random weights, its final heatmap layer calibrated on a photo: each
    live channel centred and scaled to a spread of 0.3 (a plain random network's maps are a near-constant
    bias with bumps of 1e-3, all under the 0.1 threshold), so the maps have hundreds of distinct peaks."""
    from controlnet_aux.open_pose.model import bodypose_model

    from tests.conftest import synthetic_photo

    torch.manual_seed(seed)
    model = bodypose_model().eval()
    last = model.model6_2.Mconv7_stage6_L2
    seen: dict[str, torch.Tensor] = {}
    hook = last.register_forward_hook(lambda module, args, output: seen.setdefault("maps", output.detach().clone()))
    photo = cv2.resize(synthetic_photo(99, 184, 184), (184, 184))
    with torch.no_grad():
        model(torch.from_numpy(photo.astype(np.float32).transpose(2, 0, 1)[None].copy()) / 256 - 0.5)
        hook.remove()
        maps = seen["maps"][0]
        mean, spread = maps.mean(dim=(1, 2)), maps.std(dim=(1, 2))
        scale = torch.where(spread > 1e-6, 0.3 / spread.clamp(min=1e-6), torch.zeros_like(spread))
        last.weight.mul_(scale[:, None, None, None])
        last.bias.sub_(mean).mul_(scale)
    return model


@pytest.fixture(scope="module")
def reference_nets() -> dict[str, torch.nn.Module]:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import handpose_model

    torch.manual_seed(1)
    return {"body": _scaled_reference_body(), "hand": handpose_model().eval(), "face": FaceNet().eval()}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, reference_nets) -> Path:
    """The three files as the hub holds them: body and hand keys without their block name, facenet.pth
    plain."""
    folder = tmp_path_factory.mktemp("openpose-models")
    for kind, filename in (("body", "body_pose_model.pth"), ("hand", "hand_pose_model.pth"), ("face", "facenet.pth")):
        state = reference_nets[kind].state_dict()
        if kind != "face":
            state = {key.split(".", 1)[1]: value for key, value in state.items()}
        torch.save(state, folder / filename)
    return folder


def test_real_network_candidates_and_guide_match_reference(models_dir: Path, reference_nets, make_photo) -> None:
    """The loaded body network end to end. Our post-processing of the reference network's own maps gives
    the reference's part candidates exactly (positions and scores); our network's maps (channels-last:
    float rounding, 4e-7) give the same candidates but for one-pixel moves where neighbouring blurred values
    nearly tie (flat stretches at the image border, where the resizes replicate edge pixels: a few of
    hundreds); the people (none: random fields join no limbs) and the guide are the reference's."""
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body

    from guides.annotators import openpose_keypoints as kp
    from guides.nets.openpose import body_network
    from guides.weights.load import load_checkpoint_into

    image = make_photo(8, 512, 512)
    network = load_checkpoint_into(body_network, models_dir / "body_pose_model.pth", container="state_dict")
    ours = OpenposeAnnotator(OpenposeOptions(device="cpu"), model=OpenposeNetworks(network))
    body = Body.__new__(Body)
    body.model = reference_nets["body"]
    candidates, subset = body(np.ascontiguousarray(image[:, :, ::-1]))
    assert len(candidates) > 100, "the calibrated heatmaps have many peaks"

    item = ours.prepare(image)
    with torch.no_grad():
        x = torch.from_numpy(item.body_input.astype(np.float32).transpose(2, 0, 1)[None].copy()) / 256 - 0.5
        _, reference_heatmaps = reference_nets["body"](x)
    exact = np.concatenate(kp.find_peaks(kp.full_size_maps(reference_heatmaps[0].numpy(), *item.pad, (512, 512),
                                                           channels=list(range(18)))))
    assert np.array_equal(exact, candidates[:, :3]), "the reference's candidates from the reference's maps"

    output = ours.predict([item])[0]
    found = np.concatenate(kp.find_peaks(kp.full_size_maps(output.heatmaps, *item.pad, (512, 512),
                                                           channels=list(range(18)))))
    ours_set = {(int(x), int(y)) for x, y in found[:, :2]}
    theirs = {(int(x), int(y)) for x, y in candidates[:, :2]}
    assert len(ours_set & theirs) >= 0.97 * len(theirs), f"{len(ours_set ^ theirs)} of {len(theirs)} differ"
    assert all(min(abs(x - a) + abs(y - b) for a, b in theirs) <= 2 for x, y in ours_set - theirs)
    guide, document = ours.finish_with_sidecar(item, output)
    assert len(document["people"]) == len(subset)
    expected = reference_guide(OpenposeDetector(body), image, 512, hands=False, face=False)
    assert agreement(guide, expected)[0] >= GUIDE_SHARE


def test_declarations() -> None:
    body, hand, face = OpenposeAnnotator.checkpoints
    assert [c.filename for c in (body, hand, face)] == ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"]
    assert all(c.container == "state_dict" and c.key_filters == () and c.pinned and c.sha256 for c in (body, hand, face))
    assert OpenposeAnnotator.checkpoint_names(OpenposeOptions()) == ("openpose-body",)
    assert OpenposeAnnotator.checkpoint_names(OpenposeOptions(hands=True, face=True)) == (
        "openpose-body", "openpose-hand", "openpose-face")
    (controlnet,) = OpenposeAnnotator.controlnets
    assert (controlnet.repo, controlnet.kind) == ("lllyasviel/control_v11p_sd15_openpose", "openpose")
    assert [(m.model, m.condition) for m in OpenposeAnnotator.union_modes] == [("xinsir", "openpose"), ("instantx", "pose")]
    assert OpenposeAnnotator.sidecar is not None and OpenposeAnnotator.sidecar.option == "--keypoints-out"
    assert OpenposeOptions().resolution == 512 and not OpenposeOptions().hands and not OpenposeOptions().face


def test_loads_every_selected_file(models_dir: Path, tmp_path: Path) -> None:
    full = load(models_dir=str(models_dir), device="cpu", hands=True, face=True)
    assert [path.name for path in full.loaded_files] == ["body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"]
    assert full.model.hand is not None and full.model.face is not None
    explicit = load(checkpoint=str(models_dir / "body_pose_model.pth"), models_dir=str(models_dir),
                                    device="cpu", face=True)
    assert [path.name for path in explicit.loaded_files] == ["body_pose_model.pth", "facenet.pth"]
    only_body = tmp_path / "only-body"
    only_body.mkdir()
    (only_body / "body_pose_model.pth").symlink_to(models_dir / "body_pose_model.pth")
    with pytest.raises(WeightsError) as raised:
        load(models_dir=str(only_body), device="cpu", hands=True, download=False)
    assert "hand_pose_model.pth" in str(raised.value)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"resolution": -1}, UsageError, "resolution must be 0 or more"),
        ({"precision": "fp16"}, DeviceError, "use --precision bf16 or fp32"),
        ({"hands": True}, UsageError, "openpose: --hands needs its network, which this model does not hold"),
    ],
)
def test_bad_options_are_refused(options: dict, error: type, message: str) -> None:
    with pytest.raises(error) as raised:
        OpenposeAnnotator(OpenposeOptions(device="cpu", **options), model=OpenposeNetworks(SyntheticBody()))
    assert message in str(raised.value)
    with pytest.raises(UsageError, match=r"unknown option\(s\) thickness"):
        get("openpose").options(thickness=3)


def test_folder_with_bad_files_fails_those_files_only(models_dir: Path, tmp_path: Path, make_photo) -> None:
    """A corrupt file and a 3 x 700 strip (working size 512 x 119488: refused before any resizing) fail
    with one line each; a 1 x 1 image and a fine one are written (one batch of two), the fine one equal to
    the Python API's guide."""
    out, strip = run_bad_folder("openpose", tmp_path, make_photo, "--models-dir", str(models_dir), "--device", "cpu",
                                "--batch-size", "2")
    assert strip == (
        f"failed: {tmp_path / 'in' / 'strip.png'}: 700x3 image: working size 119488x512 at --resolution 512 has "
        "61,177,856 pixels, over the openpose limit of 16,777,216 (use a smaller --resolution or raise "
        "--max-working-pixels)"
    ), strip
    fine = make_photo(7, 40, 40)
    written = np.asarray(Image.open(out / "fine.png").convert("RGB"))
    api = guides.load("openpose", models_dir=str(models_dir), device="cpu")
    assert np.array_equal(written, api.annotate(fine))
