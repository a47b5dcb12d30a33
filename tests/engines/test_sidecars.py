"""Sidecar documents (``guides.engines.sidecars``): the JSON a staged annotator makes with its guide is the
second output of its stage: planned beside the guide or under a folder, written atomically by both
engines, checked for completeness on resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guides.annotators.base import Sidecar
from guides.engines import output_is_complete, plan_jobs, run_jobs, stages_to_run
from guides.engines.sidecars import SidecarStage, with_sidecar
from tests.engines.fakes import StagedHalves


class CountingHalves(StagedHalves):
    """StagedHalves whose sidecar is the sum of its guide and its size (one computation for both)."""

    name = "halves"
    sidecar = Sidecar("sums", "the sum of the guide")

    def finish_with_sidecar(self, item: np.ndarray, output: np.ndarray) -> tuple[np.ndarray, dict]:
        guide = self.finish(item, output)
        return guide, {"sum": int(guide.sum()), "canvas_width": guide.shape[1], "canvas_height": guide.shape[0]}


def _photos(folder: Path, make_photo, count: int) -> list[Path]:
    (folder / "sub").mkdir(parents=True)
    paths = []
    for index in range(count):
        path = folder / ("sub" if index % 2 else "") / f"{index}.png"
        Image.fromarray(make_photo(index, 10 + index, 12)).save(path)
        paths.append(path)
    return paths


def test_sidecars_mirror_the_inputs_under_their_folder(tmp_path: Path, make_photo) -> None:
    photos = _photos(tmp_path / "in", make_photo, 4)
    jobs, failures = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out", sidecars={"halves": tmp_path / "json"})
    assert failures == []
    assert [job.outputs["halves"] for job in jobs] == [
        (tmp_path / "out" / "0.png", tmp_path / "json" / "0.json"),
        (tmp_path / "out" / "2.png", tmp_path / "json" / "2.json"),
        (tmp_path / "out" / "sub" / "1.png", tmp_path / "json" / "sub" / "1.json"),
        (tmp_path / "out" / "sub" / "3.png", tmp_path / "json" / "sub" / "3.json"),
    ]
    annotator = CountingHalves(batch_size=2)
    summary = run_jobs(jobs, {"halves": with_sidecar(annotator)}, workers=2, progress=False)
    assert summary.written == 4 and summary.failed == []
    for job, photo in zip(jobs, sorted(photos, key=lambda p: (p.parent != tmp_path / "in", p.name))):
        guide_path, document_path = job.outputs["halves"]
        expected = annotator.annotate(np.asarray(Image.open(photo)))
        assert np.array_equal(np.asarray(Image.open(guide_path)), expected)
        assert json.loads(document_path.read_text()) == {
            "sum": int(expected.sum()), "canvas_width": expected.shape[1], "canvas_height": expected.shape[0]}
        assert document_path.read_bytes().endswith(b"}\n")


def test_sidecars_beside_the_guides_and_for_a_single_file(tmp_path: Path, make_photo) -> None:
    (photo,) = _photos(tmp_path / "in", make_photo, 1)
    beside, _ = plan_jobs([photo], ["halves"], None, sidecars={"halves": None})
    assert beside[0].outputs["halves"] == (photo.with_name("0.halves.png"), photo.with_name("0.halves.json"))
    single, _ = plan_jobs([photo], ["halves"], tmp_path / "guide.png", sidecars={"halves": tmp_path / "kp"})
    assert single[0].outputs["halves"] == (tmp_path / "guide.png", tmp_path / "kp" / "0.json")
    per_stage, _ = plan_jobs([photo], ["halves"], tmp_path / "o", per_stage_folders=True, sidecars={"halves": None})
    assert per_stage[0].outputs["halves"] == (tmp_path / "o" / "halves" / "0.png", tmp_path / "o" / "halves" / "0.json")


def test_a_missing_or_broken_sidecar_reruns_its_job(tmp_path: Path, make_photo) -> None:
    _photos(tmp_path / "in", make_photo, 2)
    jobs, _ = plan_jobs([tmp_path / "in"], ["halves"], tmp_path / "out", sidecars={"halves": tmp_path / "json"})
    run_jobs(jobs, {"halves": with_sidecar(CountingHalves())}, workers=1, progress=False)
    assert [stages_to_run(job) for job in jobs] == [(), ()]
    first, second = (job.outputs["halves"][1] for job in jobs)
    first.unlink()
    second.write_text('{"sum": 1')  # a truncated document (written by something else: ours are atomic)
    assert not output_is_complete(first) and not output_is_complete(second)
    assert output_is_complete(jobs[0].outputs["halves"][0])
    summary = run_jobs(jobs, {"halves": with_sidecar(CountingHalves())}, workers=1, progress=False)
    assert summary.written == 2 and summary.skipped == 0
    assert all(output_is_complete(path) for job in jobs for path in job.outputs["halves"])
    again = run_jobs(jobs, {"halves": with_sidecar(CountingHalves())}, workers=1, progress=False)
    assert again.skipped == 2 and again.written == 0


def test_json_completeness_rules(tmp_path: Path) -> None:
    for name, data, complete in (("ok.json", b'{"people": []}\n', True), ("list.json", b"[1]", False),
                                 ("empty.json", b"", False), ("bad.json", b"\xff\xfe", False)):
        (tmp_path / name).write_bytes(data)
        assert output_is_complete(tmp_path / name) is complete, name
    assert not output_is_complete(tmp_path / "missing.json")


def test_sidecar_stage_is_the_annotator_with_documents() -> None:
    annotator = CountingHalves(batch_size=3)
    stage = with_sidecar(annotator)
    assert isinstance(stage, SidecarStage) and type(stage).is_staged()
    assert stage.batch_size == 3 and stage.name == "halves"
    image = np.full((4, 6, 3), 40, np.uint8)
    guide, document = stage.annotate(image)
    assert np.array_equal(guide, annotator.annotate(image)) and document["sum"] == int(guide.sum())
    assert annotator.annotate_with_sidecar(image)[1] == document
    with pytest.raises(TypeError, match="declares no sidecar"):
        with_sidecar(StagedHalves())
