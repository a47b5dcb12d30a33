"""The Ray engine writes byte-identical outputs to the local engine's and reports failures the same way.

One local Ray runtime (2 CPUs) serves the whole module (the ``ray_session`` fixture, tests/dataset/conftest.py);
each Ray Data run costs a few seconds of start-up, so the tests share runs where they can.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
from guides.engines import plan_jobs, run_jobs
from guides.errors import UsageError, WeightsError
from guides.registry import get
from tests.cli_testing import invoke


def _canny():
    return get("canny").load()




def test_ray_outputs_and_failures_equal_the_local_engine(ray_session, photo_tree: Path, tmp_path: Path, invert_class, tree_reader) -> None:
    from guides.engines.ray import run_jobs_ray

    stages = ["canny", "invert"]
    local_jobs, local_planned = plan_jobs([photo_tree, tmp_path / "missing.png"], stages, tmp_path / "local", per_stage_folders=True)
    local = run_jobs(local_jobs, {"canny": _canny(), "invert": invert_class()}, workers=2, progress=False, failures=local_planned)
    ray_jobs, ray_planned = plan_jobs([photo_tree, tmp_path / "missing.png"], stages, tmp_path / "ray", per_stage_folders=True)
    ray = run_jobs_ray(ray_jobs, {"canny": _canny, "invert": invert_class}, progress=False, failures=ray_planned)

    local_tree, ray_tree = tree_reader(tmp_path / "local"), tree_reader(tmp_path / "ray")
    assert sorted(ray_tree) == sorted(local_tree) == [
        f"{stage}/{name}" for stage in stages for name in ("a.png", "b.png", "sub/c.png", "sub/deep er/ünï d.png", "sub/e.png")
    ]
    assert ray_tree == local_tree, "outputs differ between the engines"
    assert (ray.written, ray.skipped) == (local.written, local.skipped) == (5, 0)
    lines = [failure.line() for failure in ray.failed]
    assert sorted(lines) == sorted(failure.line() for failure in local.failed), (lines, [f.line() for f in local.failed])
    assert lines == [  # planning failures first, then in job order
        f"{tmp_path / 'missing.png'}: no such file or folder",
        f"{photo_tree / 'empty.png'}: empty file (0 bytes)",
        f"{photo_tree / 'z.png'}: unlucky pixel",
        f"{photo_tree / 'sub' / 'garbage.jpg'}: not an image, or an unsupported image format",
        lines[4],
    ]
    assert lines[4].startswith(f"{photo_tree / 'sub' / 'truncated.png'}: corrupt or truncated image")

    # Resume: everything exists -> skipped without starting a pipeline; a missing or broken guide -> redone.
    again = run_jobs_ray(ray_jobs, {"canny": _canny, "invert": invert_class}, progress=False)
    assert (again.written, again.skipped, len(again.failed)) == (0, 5, 4)
    (tmp_path / "ray" / "invert" / "sub" / "c.png").unlink()
    (tmp_path / "ray" / "canny" / "sub" / "e.png").write_bytes(b"")  # zero bytes: not done
    stale = local_tree["invert/a.png"]  # a complete PNG, though not this guide: kept without overwrite
    (tmp_path / "ray" / "canny" / "a.png").write_bytes(stale)
    redo = run_jobs_ray(ray_jobs, {"canny": _canny, "invert": invert_class}, progress=False)
    assert (redo.written, redo.skipped) == (2, 3)
    assert (tmp_path / "ray" / "canny" / "a.png").read_bytes() == stale, "an existing guide was rewritten without overwrite"
    assert (tmp_path / "ray" / "invert" / "sub" / "c.png").read_bytes() == local_tree["invert/sub/c.png"]
    assert (tmp_path / "ray" / "canny" / "sub" / "e.png").read_bytes() == local_tree["canny/sub/e.png"]


def test_guides_run_engine_ray_matches_engine_local(ray_session, photo_tree: Path, tmp_path: Path, tree_reader) -> None:
    results = {}
    for engine in ("local", "ray"):
        results[engine] = invoke("run", "canny", str(photo_tree), "-o", str(tmp_path / engine), "-q", "--json", "--engine", engine)
    for engine, result in results.items():
        assert result.exit_code == 1, (engine, result.output)
    local, ray = (json.loads(results[e].stdout) for e in ("local", "ray"))
    del local["seconds"], ray["seconds"]
    assert ray == local and ray["written"] == 6 and ray["failed"] == 3
    failed = [line for line in results["ray"].stderr.splitlines() if line.startswith("failed: ")]
    assert failed == [line for line in results["local"].stderr.splitlines() if line.startswith("failed: ")]
    assert tree_reader(tmp_path / "ray") == tree_reader(tmp_path / "local")


def test_a_loader_error_stops_the_run_like_locally(ray_session, photo_tree: Path, tmp_path: Path) -> None:
    from guides.engines.ray import run_jobs_ray

    def missing_checkpoint():
        raise WeightsError("lineart: checkpoint sk_model.pth not found; run guides models download lineart")

    jobs, _ = plan_jobs([photo_tree / "a.png"], ["lineart"], tmp_path / "out", per_stage_folders=True)
    with pytest.raises(WeightsError, match="checkpoint sk_model.pth not found") as caught:
        run_jobs_ray(jobs, {"lineart": missing_checkpoint}, progress=False)
    assert caught.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_ray_options_without_ray_and_with_the_local_engine(monkeypatch, tmp_path: Path) -> None:
    from guides.engines.ray import import_ray

    result = invoke("run", "canny", str(tmp_path), "--ray-address", "ray://x:10001")
    assert result.exit_code == 2 and "--ray-address and --num-gpus-per-worker need --engine ray" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r'pip install "controlnet-guides\[ray\]"'):
        import_ray()


def test_guides_dataset_engine_ray_writes_the_same_shards(ray_session, photo_tree: Path, tmp_path: Path, tree_reader) -> None:
    importlib.import_module("pyarrow")  # in the test extra: a missing one fails
    from guides.dataset.export import export_dataset, registry_entries

    local = export_dataset([photo_tree], tmp_path / "local", registry_entries(["canny"]), resolution=64, prompt="p")
    result = invoke("dataset", str(photo_tree), "-a", "canny", "-o", str(tmp_path / "ray"), "--resolution", "64",
                    "--prompt", "p", "--engine", "ray", "-q", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert (report["rows"], report["failed"]) == (local.rows, len(local.summary.failed)) == (6, 3)
    assert sorted(f["path"] for f in report["failures"]) == sorted(f.path for f in local.summary.failed)
    name = "canny/train-00000-of-00001.parquet"
    assert tree_reader(tmp_path / "ray")[name] == tree_reader(tmp_path / "local")[name], "shards differ between the engines"


def test_a_bug_in_an_annotator_stops_the_ray_run_naming_the_file(ray_session, photo_tree: Path, tmp_path: Path) -> None:
    """As locally: a bug (not bad input) is an InternalError naming the file and the annotator, not a failed line."""
    from guides.engines.ray import run_jobs_ray
    from guides.errors import InternalError

    class Buggy:
        batch_size = 2

        def batch_key(self, image):
            return image.shape

        def annotate_batch(self, images):
            if any(int(image[0, 0, 0]) == 13 for image in images):  # z.png, as in conftest.UNLUCKY
                raise ZeroDivisionError("a bug in an annotator")
            return [image[:, :, 0] for image in images]

    jobs, _ = plan_jobs([photo_tree / "z.png", photo_tree / "a.png"], ["buggy"], tmp_path / "out")
    with pytest.raises(InternalError) as caught:
        run_jobs_ray(jobs, {"buggy": Buggy}, progress=False)
    assert (caught.value.path, caught.value.stage) == (str(photo_tree / "z.png"), "buggy")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert str(caught.value) == f"buggy on {photo_tree / 'z.png'}: ZeroDivisionError: a bug in an annotator"


def test_a_network_line_annotator_and_lineart_standard_run_alike_on_both_engines(
        ray_session, photo_tree: Path, tmp_path: Path, tree_reader) -> None:
    """Issue 14's annotators go through the engines like the others: teed (a network, from a models folder)
    and lineart-standard in one ``guides run``, the same guides and failures locally and on Ray."""
    import torch
    from controlnet_aux.teed.ted import TED

    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(1)
    torch.save(TED().state_dict(), models / "5_model.pth")
    results = {}
    for engine in ("local", "ray"):
        results[engine] = invoke("run", "teed,lineart-standard", str(photo_tree), "-o", str(tmp_path / engine),
                                 "--models-dir", str(models), "--device", "cpu", "--resolution", "64", "-q", "--json",
                                 "--engine", engine)
    local, ray = (json.loads(results[e].stdout) for e in ("local", "ray"))
    assert results["local"].exit_code == results["ray"].exit_code == 1, results["local"].output
    del local["seconds"], ray["seconds"]
    assert ray == local and ray["written"] == 6, ray  # images, each with both guides
    written = tree_reader(tmp_path / "ray")
    assert written == tree_reader(tmp_path / "local")
    assert {name.split("/")[0] for name in written} == {"teed", "lineart-standard"}


def test_sidecar_documents_are_written_alike_by_both_engines(ray_session, tmp_path: Path, make_photo, tree_reader) -> None:
    """A stage with a sidecar (``guides.engines.sidecars``): the same guides and JSON documents from Ray."""
    from PIL import Image

    from guides.engines.ray import run_jobs_ray
    from guides.engines.sidecars import with_sidecar
    from tests.engines import fakes, test_sidecars
    from tests.engines.test_sidecars import CountingHalves

    for module in (fakes, test_sidecars):  # test helpers are not importable in Ray's workers: ship them by value
        ray_session.cloudpickle.register_pickle_by_value(module)

    for index in range(3):
        Image.fromarray(make_photo(index, 12 + index, 10)).save(tmp_path / f"{index}.png")
    inputs = [tmp_path / f"{index}.png" for index in range(3)]
    results = {}
    for engine in ("local", "ray"):
        jobs, _ = plan_jobs(inputs, ["halves"], tmp_path / engine, per_stage_folders=True, sidecars={"halves": None})
        if engine == "local":
            results[engine] = run_jobs(jobs, {"halves": with_sidecar(CountingHalves())}, workers=2, progress=False)
        else:
            results[engine] = run_jobs_ray(jobs, {"halves": lambda: with_sidecar(CountingHalves())}, progress=False)
    assert results["ray"].written == results["local"].written == 3
    local, ray = tree_reader(tmp_path / "local"), tree_reader(tmp_path / "ray")
    assert sorted(ray) == sorted(local) == sorted(f"halves/{i}.{suffix}" for i in range(3) for suffix in ("json", "png"))
    assert ray == local
