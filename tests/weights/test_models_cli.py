"""``guides models list/download/verify/path`` through click's CliRunner: output, messages, exit codes."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from guides.cli.models import models
from guides.weights import catalog

PAYLOAD = b"bytes standing in for a checkpoint" * 50


def run(*args: str):
    return CliRunner().invoke(models, list(args), catch_exceptions=False)



def test_list_shows_every_checkpoint_with_where_it_is(tmp_path):
    (tmp_path / "sk_model.pth").write_bytes(b"x")
    result = run("list", "--models-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for name in catalog.CHECKPOINTS:
        assert any(line.startswith(name + " ") for line in lines), (name, result.stdout)
    lineart = next(line for line in lines if line.startswith("lineart "))
    assert str(tmp_path / "sk_model.pth") in lineart and "(models-dir)" in lineart and "17.2 MB" in lineart
    depth = next(line for line in lines if line.startswith("depth "))
    assert depth.endswith("missing") and "ZoeD_M12_N.pt" in depth and "1.4 GB" in depth
    assert any(line.startswith("controlnet-canny ") and line.endswith("missing") for line in lines)
    # the revision a download fetches: a pinned commit, or main marked as not pinned
    assert "REVISION" in lines[0] and f" {catalog.ANNOTATORS_COMMIT[:12]} " in lineart and "(not pinned)" not in lineart
    assert " main (not pinned) " in depth
    for entry in [*catalog.CHECKPOINTS.values(), *catalog.DIFFUSERS_REPOS.values()]:
        line = next(line for line in lines if line.startswith(entry.name + " "))
        assert (entry.revision[:12] in line) if entry.pinned else ("main (not pinned)" in line), line


def test_path_prints_the_resolved_file(tmp_path, monkeypatch):
    (tmp_path / "sam_vit_l_0b3195.pth").write_bytes(b"x")
    monkeypatch.setenv("GUIDES_MODELS_DIR", str(tmp_path))
    result = run("path", "sam-vit-l")
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "sam_vit_l_0b3195.pth")


def test_path_of_a_missing_checkpoint_is_one_line_and_exit_2():
    result = run("path", "depth")
    assert result.exit_code == 2
    assert result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("error: checkpoint 'depth'") and "\n" not in message, message
    for part in ("ZoeD_M12_N.pt", "lllyasviel/Annotators", "guides models download depth", "--models-dir"):
        assert part in message, message
    assert "Traceback" not in result.output


def test_path_of_a_missing_diffusers_model():
    result = run("path", "sd15")
    assert result.exit_code == 2 and "guides models download sd15" in result.stderr


def test_unknown_name_is_a_usage_error():
    result = run("path", "zoe")
    assert result.exit_code == 2 and "unknown model name(s): zoe" in result.stderr


def test_download_without_names_is_a_usage_error():
    result = run("download")
    assert result.exit_code == 2 and "--all" in result.stderr


def test_download_into_the_hub_cache_then_already_present(fake_hub, monkeypatch, use_entry):
    entry = use_entry("lineart", size=len(PAYLOAD))
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    result = run("download", "lineart")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip().split(": ", 1)[1])
    assert path.read_bytes() == PAYLOAD
    again = run("download", "lineart")
    assert again.exit_code == 0 and "already present" in again.stdout
    assert len(fake_hub.downloads()) == 1


def test_download_to_a_flat_folder_and_partial_failure_exit_code(fake_hub, monkeypatch, tmp_path, use_entry):
    entry = use_entry("depth", size=len(PAYLOAD))
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)  # scannet.pt is not on this hub
    result = run("download", "depth", "normals", "--to", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert (tmp_path / "ZoeD_M12_N.pt").read_bytes() == PAYLOAD
    assert "error: normals:" in result.stderr and "scannet.pt" in result.stderr


def test_download_offline_fails_with_the_alternatives():
    result = run("download", "sam-vit-h")
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE" in result.stderr and "--models-dir" in result.stderr


def test_download_refuses_a_checksum_mismatch(fake_hub, monkeypatch, use_entry):
    entry = use_entry("sam-vit-b", size=None, sha256="f" * 64, md5_prefix=None)
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    result = run("download", "sam-vit-b")
    assert result.exit_code == 2 and "refused and deleted" in result.stderr, result.output


def test_verify_ok_mismatch_and_missing(tmp_path, monkeypatch, use_entry):
    good = tmp_path / "sam_vit_b_01ec64.pth"
    good.write_bytes(PAYLOAD)
    use_entry("sam-vit-b", size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(),
              md5_prefix=hashlib.md5(PAYLOAD).hexdigest()[:6])
    result = run("verify", "sam-vit-b", "--models-dir", str(tmp_path))
    assert result.exit_code == 0 and "sam-vit-b: ok (size, sha256)" in result.stdout, result.output

    use_entry("sam-vit-b", size=len(PAYLOAD), sha256="0" * 64, md5_prefix=None)
    result = run("verify", "--models-dir", str(tmp_path))
    assert result.exit_code == 1, result.output
    assert f"sam-vit-b: MISMATCH {good}: sha256 {hashlib.sha256(PAYLOAD).hexdigest()}" in result.stdout
    assert "depth: missing" in result.stdout


def test_verify_checks_archive_crcs_of_files_without_a_recorded_checksum(tmp_path):
    path = tmp_path / "scannet.pt"
    torch.save({"model": {"w": torch.arange(1000, dtype=torch.float32)}}, path)
    result = run("verify", "normals", "--models-dir", str(tmp_path))
    assert result.exit_code == 0 and "normals: ok (archive CRC only)" in result.stdout, result.output
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data[member.header_offset + 200] ^= 0xFF  # flip bits inside the tensor bytes
    path.write_bytes(bytes(data))
    result = run("verify", "normals", "--models-dir", str(tmp_path))
    assert result.exit_code == 1 and "damaged archive member" in result.stdout, result.output


def test_models_group_is_reachable_from_the_guides_command(tmp_path):
    from guides.cli.main import cli

    (tmp_path / "sk_model2.pth").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["models", "path", "lineart-coarse", "--models-dir", str(tmp_path)])
    assert result.exit_code == 0 and result.stdout.strip() == str(tmp_path / "sk_model2.pth"), result.output


# ------------------------------------------------------------------------------------------ plugins

from guides.annotators.base import Annotator, AnnotatorOptions  # noqa: E402
from guides.weights.declarations import MB, Checkpoint, ControlNet  # noqa: E402


class PluginEdges(Annotator):
    """A third-party annotator declaring a checkpoint and a ControlNet, as a plugin package would."""

    name = "plugin-edges"
    summary = "Edges from a plugin."
    Options = AnnotatorOptions
    checkpoints = (Checkpoint(name="plugin-edges", repo="someone/edges", filename="edges.pth", container="state_dict",
                              licence="MIT (someone/edges)", size=2_000_000),)
    controlnets = (ControlNet(repo="someone/controlnet-edges", licence="MIT", approx_size=1_450 * MB),)

    def annotate(self, image):  # type: ignore[no-untyped-def]
        return image[:, :, 0]


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Two installed plugins: one that declares a checkpoint, one whose module cannot be imported."""
    from guides import registry

    specs = [registry.AnnotatorSpec("plugin-edges", f"{__name__}:PluginEdges", package="edges-plugin"),
             registry.AnnotatorSpec("broken", "guides_no_such_plugin_module:Thing", package="broken-plugin-for-models")]
    monkeypatch.setattr(registry, "_plugin_entries", lambda: iter(specs))
    registry.load_registry.cache_clear()
    yield
    registry.load_registry.cache_clear()


def test_plugins_checkpoints_are_listed_downloaded_by_name_and_a_broken_plugin_is_skipped_once(
        plugins, tmp_path, caplog):
    (tmp_path / "edges.pth").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        result = run("list", "--models-dir", str(tmp_path))
        unknown = run("path", "nothing-such")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    edges = next(line for line in lines if line.startswith("plugin-edges "))
    assert "edges.pth" in edges and str(tmp_path / "edges.pth") in edges and "(models-dir)" in edges, edges
    assert any(line.startswith("controlnet-plugin-edges ") and "someone/controlnet-edges" in line for line in lines)
    assert any(line.startswith("lineart ") for line in lines)  # the built-ins are still there
    assert "plugin-edges" in unknown.stderr  # known names include the plugin's
    warnings = [r.getMessage() for r in caplog.records if "broken-plugin-for-models" in r.getMessage()]
    assert len(warnings) == 1 and "skipped" in warnings[0], warnings
    assert "plugin-edges" in catalog.CHECKPOINTS and catalog.get_checkpoint("plugin-edges").used_by == "plugin-edges"
