"""Planning: naming, mirroring, clashes, what folder walks take as inputs, unreadable inputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from guides.engines import plan_jobs
from guides.errors import UsageError
from tests.engines.fakes import save_photo as _save


def test_naming_without_output_and_own_outputs_not_walked(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    (tmp_path / "a.canny.png").write_bytes(b"old guide")
    jobs, failures = plan_jobs([tmp_path], ["canny"], own_outputs=["canny", "depth"])
    assert failures == []
    assert [(j.source.name, j.outputs["canny"][0].name) for j in jobs] == [("a.png", "a.canny.png")]


def test_mirroring_per_stage_folders_and_single_file_output(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "x" / "b c.jpg", 1, make_photo)
    _save(tmp_path / "loose.png", 2, make_photo)
    jobs, _ = plan_jobs([tmp_path / "in", tmp_path / "loose.png"], ["canny", "depth"], tmp_path / "out", per_stage_folders=True)
    outputs = sorted(str(p.relative_to(tmp_path)) for j in jobs for ps in j.outputs.values() for p in ps)
    assert outputs == ["out/canny/loose.png", "out/canny/x/b c.png", "out/depth/loose.png", "out/depth/x/b c.png"]
    jobs, _ = plan_jobs([tmp_path / "loose.png"], ["canny"], tmp_path / "named.png")
    assert jobs[0].outputs["canny"] == (tmp_path / "named.png",)


def test_clashes_and_overwriting_inputs_are_refused(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "p.png", 1, make_photo)
    _save(tmp_path / "in" / "p.jpg", 2, make_photo)
    jobs, failures = plan_jobs([tmp_path / "in"], ["canny"], tmp_path / "out")
    assert len(jobs) == 1 and len(failures) == 1
    assert "is also the output of" in failures[0].reason
    jobs, failures = plan_jobs([tmp_path / "in" / "p.png"], ["canny"], tmp_path / "in" / "p.png")
    assert jobs == [] and "would overwrite an input" in failures[0].reason
    jobs, failures = plan_jobs([tmp_path / "missing"], ["canny"])
    assert failures[0].reason == "no such file or folder"


def test_guides_of_any_annotator_and_output_folders_are_not_walked(tmp_path: Path, make_photo) -> None:
    photos = tmp_path / "photos"
    for name in ("a.png", "a.depth.png", "a.canny.png", "a.target.png", "a.composite.png", "a.mask.png",
                 "out/x.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "sam/w.png"):
        _save(photos / name, 1, make_photo)

    def walked(*args, **kwargs) -> list[str]:
        jobs, failures = plan_jobs([photos], *args, **kwargs)
        assert failures == []
        return sorted(str(j.source.relative_to(photos)) for j in jobs)

    assert walked(["canny"]) == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "out/x.png", "sam/w.png"]
    assert walked(["canny"], photos / "out") == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "sam/w.png"]
    # per annotator folders: OUT/<any annotator>/ is left out, also with -o equal to the input folder
    assert walked(["lineart"], photos / "o2", per_stage_folders=True) == ["a.png", "o2/keep.png", "out/x.png", "sam/w.png"]
    assert walked(["canny"], photos, per_stage_folders=True) == ["a.png", "o2/canny/y.png", "o2/depth/z.png", "o2/keep.png", "out/x.png"]
    jobs, _ = plan_jobs([photos / "a.depth.png"], ["canny"])  # named explicitly: still read
    assert [j.outputs["canny"][0].name for j in jobs] == ["a.depth.canny.png"]
    with pytest.raises(UsageError, match="is the input folder"):
        plan_jobs([photos], ["canny"], photos)


def test_the_same_input_twice_is_planned_once(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "in" / "a.png", 1, make_photo)
    _save(tmp_path / "in" / "sub" / "b.png", 2, make_photo)
    jobs, failures = plan_jobs([tmp_path / "in" / "a.png", tmp_path / "in", str(tmp_path / "in" / "." / "a.png")],
                               ["canny"], tmp_path / "out")
    assert failures == []
    assert [(j.source.name, j.outputs["canny"][0].relative_to(tmp_path)) for j in jobs] == [
        ("a.png", Path("out/a.png")), ("b.png", Path("out/sub/b.png")),
    ]


def test_an_output_folder_that_is_a_file_is_one_usage_error(tmp_path: Path, make_photo) -> None:
    _save(tmp_path / "a.png", 1, make_photo)
    _save(tmp_path / "b.png", 2, make_photo)
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"-o .*file: .*file is a file, not a folder$"):
        plan_jobs([tmp_path / "a.png", tmp_path / "b.png"], ["canny"], tmp_path / "file")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "depth").write_bytes(b"x")
    with pytest.raises(UsageError, match="depth is a file, not a folder"):
        plan_jobs([tmp_path / "a.png"], ["canny", "depth"], tmp_path / "o", per_stage_folders=True)
    jobs, _ = plan_jobs([tmp_path / "a.png"], ["canny"], tmp_path / "b.png")  # one input, .png -o: a file
    assert jobs == [] or jobs[0].outputs["canny"] == (tmp_path / "b.png",)


def test_unreadable_folders_and_paths_are_failures(tmp_path: Path, make_photo) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    probe.chmod(0)
    if os.access(probe, os.R_OK):
        pytest.skip("this user reads files without read permission (root); tests/cli/test_cli.py drops that right")
    _save(tmp_path / "in" / "locked" / "a.png", 1, make_photo)
    _save(tmp_path / "in" / "b.png", 2, make_photo)
    (tmp_path / "in" / "locked").chmod(0)
    try:
        jobs, failures = plan_jobs([tmp_path / "in", tmp_path / "in" / "locked" / "a.png"], ["canny"], tmp_path / "out")
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert [j.source.name for j in jobs] == ["b.png"]
    assert [(f.path, f.reason) for f in failures] == [
        (str(tmp_path / "in" / "locked"), "cannot read folder: Permission denied"),
        (str(tmp_path / "in" / "locked" / "a.png"), "cannot read: permission denied"),
    ]
