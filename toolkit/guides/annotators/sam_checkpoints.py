"""The Segment Anything checkpoints ``guides sam`` and ``guides mask`` load, declared once (both classes
use ``SAM_CHECKPOINTS``): one file per backbone, selected by the ``model`` option."""

from __future__ import annotations

from ..weights.declarations import SAM_COMMIT, SAM_REPO, Checkpoint

#: Model type (the ``model`` option) -> checkpoint name.
MODEL_CHECKPOINTS = {"vit_h": "sam-vit-h", "vit_l": "sam-vit-l", "vit_b": "sam-vit-b"}
MODEL_TYPES = tuple(MODEL_CHECKPOINTS)

_LICENCE = "Apache-2.0 (facebookresearch/segment-anything)"

#: The three SAM backbones (revisions: see ``guides.weights.declarations.SAM_COMMIT`` for the sources).
SAM_CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint(
        name="sam-vit-h",
        repo=SAM_REPO,
        filename="checkpoints/sam_vit_h_4b8939.pth",
        revision=SAM_COMMIT,
        container="state_dict",
        licence=_LICENCE,
        used_by="sam, mask",
        size=2_564_550_879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        md5_prefix="4b8939",
        description="Segment Anything ViT-H",
        when=(("model", "vit_h"),),
    ),
    Checkpoint(
        name="sam-vit-l",
        repo=SAM_REPO,
        filename="checkpoints/sam_vit_l_0b3195.pth",
        # no public source names sam_vit_l_0b3195.pth at a commit: main (not pinned)
        container="state_dict",
        licence=_LICENCE,
        used_by="sam, mask",
        size=1_249_524_607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        md5_prefix="0b3195",
        description="Segment Anything ViT-L",
        when=(("model", "vit_l"),),
    ),
    Checkpoint(
        name="sam-vit-b",
        repo=SAM_REPO,
        filename="checkpoints/sam_vit_b_01ec64.pth",
        revision=SAM_COMMIT,
        container="state_dict",
        licence=_LICENCE,
        used_by="sam, mask",
        size=375_042_383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        md5_prefix="01ec64",
        description="Segment Anything ViT-B",
        when=(("model", "vit_b"),),
    ),
)

assert tuple(checkpoint.name for checkpoint in SAM_CHECKPOINTS) == tuple(MODEL_CHECKPOINTS.values())
