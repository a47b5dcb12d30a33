"""Union-model modes as data: indices from the model cards' tables, declarations checked when made,
option-dependent conditions (teed: thick line at 512, thin line at 1280)."""

from __future__ import annotations

import pytest

from guides.registry import get
from guides.weights.union_models import INSTANTX, UNION_MODELS, XINSIR, UnionMode, union_mode


def test_the_model_cards_indices() -> None:
    assert [XINSIR.mode(c) for c in ("openpose", "depth", "thick line", "thin line", "normal", "segment", "tile",
                                     "repaint")] == list(range(8))
    assert [INSTANTX.mode(c) for c in ("canny", "tile", "depth", "blur", "pose", "gray", "low quality")] == list(range(7))
    assert list(UNION_MODELS) == ["xinsir", "instantx"]


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown union model 'sd3'"):
        UnionMode("sd3", "canny")
    with pytest.raises(ValueError, match="instantx union model has no condition 'normal'"):
        UnionMode("instantx", "normal")


def test_teed_serves_thick_or_thin_line_by_resolution() -> None:
    teed = get("teed").annotator_class()
    modes = teed.union_modes
    assert union_mode(modes, "xinsir", teed.Options(resolution=512)).index == 2
    assert union_mode(modes, "xinsir", teed.Options(resolution=1280)).index == 3
    assert union_mode(modes, "xinsir", teed.Options(resolution=768)) is None
    assert union_mode(modes, "instantx", teed.Options()) is None


@pytest.mark.parametrize(("name", "xinsir", "instantx"), [
    ("canny", 3, 0), ("depth", 1, 2), ("normals", 4, None), ("sam", 5, None), ("hed", 2, None), ("mlsd", 3, None),
])
def test_existing_annotators_declare_their_conditions(name: str, xinsir: int | None, instantx: int | None) -> None:
    cls = get(name).annotator_class()
    for model, expected in (("xinsir", xinsir), ("instantx", instantx)):
        mode = union_mode(cls.union_modes, model, cls.Options())
        assert (None if mode is None else mode.index) == expected, (name, model)
