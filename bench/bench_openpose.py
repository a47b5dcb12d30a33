"""OpenPose (issue: openpose annotator): time per image, ours against controlnet_aux 0.0.10's
``OpenposeDetector`` with the same (random) weights, interleaved in this process, best of ``--rounds``
after a warm-up; ratio ours / reference (target <= 0.8).

* body only: the real body network (random weights, calibrated as in tests/annotators/test_openpose.py,
  saved and loaded in the public ``body_pose_model.pth`` format) on a 512x512 photo (``refs/cutecat_init.png``
  when GUIDES_REFS is set, else a generated one);
* hands + face: random weights find no people, so the body network runs for real and its output is
  replaced by the test's synthetic maps of ``--people`` people (both arms and a face each); the real hand
  network (random weights, ``hand_pose_model.pth`` format) then runs on every hand crop at its four scales
  (184 to 736 px) and the real face network (``facenet.pth`` format) on every face crop, on both sides.

Both sides get identical weights (separate copies: ours runs its convolutions on NNPACK in fp32). The figures
depend on the CPU's load: on the shared 2-core development machine they are noisy.

Usage: ``python bench/bench_openpose.py [--rounds 2] [--people 1] [--skip-hands]``
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def photo() -> np.ndarray:
    refs = os.environ.get("GUIDES_REFS")
    if refs and (Path(refs) / "cutecat_init.png").is_file():
        import guides

        return guides.to_rgb_array(Path(refs) / "cutecat_init.png")
    from tests.conftest import synthetic_photo

    return synthetic_photo(1, 512, 512)


class PeopleOnRealBody:
    """The real body network's work, the synthetic maps' people (see the module docstring)."""

    def __new__(cls, real, synthetic):
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.real, self.synthetic = real, synthetic

            def forward(self, x):
                self.real(x)
                return self.synthetic(x)

        return Module()


def timed(function, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--people", type=int, default=1, help="synthetic people for the hands+face run (1 or 2)")
    parser.add_argument("--skip-hands", action="store_true")
    args = parser.parse_args()
    import torch
    from controlnet_aux.open_pose import OpenposeDetector
    from controlnet_aux.open_pose.body import Body
    from controlnet_aux.open_pose.face import Face, FaceNet
    from controlnet_aux.open_pose.hand import Hand
    from controlnet_aux.open_pose.model import handpose_model

    from guides.annotators.openpose import OpenposeAnnotator, OpenposeOptions
    from guides.nets.openpose import OpenposeNetworks, body_network, face_network, hand_network
    from guides.weights.load import load_checkpoint_into
    from tests.annotators.test_openpose import PEOPLE, SyntheticBody, _scaled_reference_body

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    image = photo()
    torch.manual_seed(1)
    reference = {"body": _scaled_reference_body(), "hand": handpose_model().eval(), "face": FaceNet().eval()}
    with tempfile.TemporaryDirectory() as folder:
        files = {}
        for kind, name in (("body", "body_pose_model.pth"), ("hand", "hand_pose_model.pth"), ("face", "facenet.pth")):
            state = reference[kind].state_dict()
            if kind != "face":
                state = {key.split(".", 1)[1]: value for key, value in state.items()}
            files[kind] = Path(folder) / name
            torch.save(state, files[kind])
        ours_nets = {kind: load_checkpoint_into(build, files[kind], container="state_dict")
                     for kind, build in (("body", body_network), ("hand", hand_network), ("face", face_network))}

    def reference_detector(body_model, hand_model=None, face_model=None):
        body, hand, face = Body.__new__(Body), Hand.__new__(Hand), Face.__new__(Face)
        body.model, hand.model, face.model = body_model, hand_model, face_model
        return OpenposeDetector(body, hand, face)

    # body only
    ours = OpenposeAnnotator(OpenposeOptions(device="cpu"), model=OpenposeNetworks(ours_nets["body"]))
    theirs = reference_detector(reference["body"])
    call = {"detect_resolution": 512, "image_resolution": 512, "output_type": "np"}
    ours.annotate(image), theirs(image, **call)
    our_s = timed(lambda: ours.annotate(image), args.rounds)
    their_s = timed(lambda: theirs(image, **call), args.rounds)
    print(f"body only:   ours {our_s:.2f} s, reference {their_s:.2f} s, ratio {our_s / their_s:.2f}")

    if args.skip_hands:
        return
    people = PEOPLE[:args.people]
    synthetic_body = SyntheticBody(people)
    ours = OpenposeAnnotator(
        OpenposeOptions(device="cpu", hands=True, face=True),
        model=OpenposeNetworks(PeopleOnRealBody(copy.deepcopy(ours_nets["body"]), synthetic_body),
                               ours_nets["hand"], ours_nets["face"]),
    )
    theirs = reference_detector(PeopleOnRealBody(reference["body"], SyntheticBody(people)), reference["hand"],
                                reference["face"])
    call = {**call, "include_hand": True, "include_face": True}
    _, document = ours.annotate_with_sidecar(image)
    hands = sum(person[key] is not None for person in document["people"]
                for key in ("hand_left_keypoints_2d", "hand_right_keypoints_2d"))
    faces = sum(person["face_keypoints_2d"] is not None for person in document["people"])
    our_s = timed(lambda: ours.annotate(image), 1)
    their_s = timed(lambda: theirs(image, **call), 1)
    print(f"hands+face ({len(document['people'])} people, {hands} hands, {faces} faces): ours {our_s:.2f} s, "
          f"reference {their_s:.2f} s, ratio {our_s / their_s:.2f}")


if __name__ == "__main__":
    main()
