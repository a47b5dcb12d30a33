"""guides.weights.resolve: explicit > flat models folder > hub cache > download, and every failure message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from guides.errors import WeightsError
from guides.weights import resolve_checkpoint, resolve_diffusers_repo
from guides.weights.resolve import download_checkpoint, hub_cache_dir, locate_checkpoint

PAYLOAD = b"not really weights, but bytes to move around" * 100



def plant_in_hub_cache(home: Path, repo: str, filename: str, data: bytes, commit: str = "c" * 40) -> Path:
    """A file laid out the way huggingface_hub lays out its cache (blobs, snapshots, refs/main)."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    pointer = storage / "snapshots" / commit / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.symlink_to(blob)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return pointer


# ----------------------------------------------------------------------------------- search order


def test_explicit_file_wins(tmp_path, monkeypatch, isolated_env):
    explicit = tmp_path / "mine.pth"
    explicit.write_bytes(b"x")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ZoeD_M12_N.pt").write_bytes(b"y")
    assert resolve_checkpoint("depth", explicit=explicit, models_dir=folder) == explicit


def test_explicit_missing_file_is_an_error_not_a_fallback(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "ZoeD_M12_N.pt").write_bytes(b"y")
    with pytest.raises(WeightsError, match="nope.pt: checkpoint file not found"):
        resolve_checkpoint("depth", explicit=tmp_path / "nope.pt", models_dir=folder)


def test_flat_models_folder_by_hub_file_name(tmp_path):
    (tmp_path / "sk_model2.pth").write_bytes(b"z")
    assert resolve_checkpoint("lineart-coarse", models_dir=tmp_path) == tmp_path / "sk_model2.pth"


@pytest.mark.parametrize("relative", ["checkpoints/sam_vit_h_4b8939.pth", "sam_vit_h_4b8939.pth"])
def test_flat_models_folder_accepts_sam_with_or_without_its_hub_subfolder(tmp_path, relative):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"sam")  # wrong size on purpose: files in a models folder are used as they are
    assert resolve_checkpoint("sam-vit-h", models_dir=tmp_path) == path


def test_guides_models_dir_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "scannet.pt").write_bytes(b"n")
    monkeypatch.setenv("GUIDES_MODELS_DIR", str(tmp_path))
    assert resolve_checkpoint("normals") == tmp_path / "scannet.pt"


@pytest.mark.parametrize("via_env", [False, True])
def test_a_models_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch, via_env):
    missing = tmp_path / "modles"
    if via_env:
        monkeypatch.setenv("GUIDES_MODELS_DIR", str(missing))
    with pytest.raises(WeightsError, match="models folder not found") as caught:
        resolve_checkpoint("depth", models_dir=None if via_env else missing)
    assert str(missing) in str(caught.value)
    assert ("GUIDES_MODELS_DIR" if via_env else "--models-dir") in str(caught.value)
    with pytest.raises(WeightsError, match="models folder not found"):
        resolve_diffusers_repo("sd15", models_dir=None if via_env else missing)


def test_models_dir_argument_overrides_the_environment(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    for folder in (env_dir, arg_dir):
        folder.mkdir()
        (folder / "sk_model.pth").write_bytes(folder.name.encode())
    monkeypatch.setenv("GUIDES_MODELS_DIR", str(env_dir))
    assert resolve_checkpoint("lineart", models_dir=arg_dir) == arg_dir / "sk_model.pth"


def test_hub_cache_is_used_offline(isolated_env, monkeypatch, use_entry):
    use_entry("lineart", size=len(PAYLOAD))
    planted = plant_in_hub_cache(isolated_env, "lllyasviel/Annotators", "sk_model.pth", PAYLOAD)
    found = resolve_checkpoint("lineart")
    assert found == planted and found.read_bytes() == PAYLOAD
    assert locate_checkpoint("lineart").where == "hub-cache"


def test_models_folder_comes_before_the_hub_cache(tmp_path, isolated_env):
    plant_in_hub_cache(isolated_env, "lllyasviel/Annotators", "sk_model.pth", PAYLOAD)
    (tmp_path / "sk_model.pth").write_bytes(b"local")
    assert resolve_checkpoint("lineart", models_dir=tmp_path) == tmp_path / "sk_model.pth"


def test_hub_cache_file_of_the_wrong_size_is_refused(isolated_env):
    plant_in_hub_cache(isolated_env, "lllyasviel/Annotators", "sk_model.pth", PAYLOAD)  # real size differs
    with pytest.raises(WeightsError, match=r"expected 17173511; run `guides models download lineart`"):
        resolve_checkpoint("lineart")


def test_hf_home_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "direct"))
    assert hub_cache_dir() == tmp_path / "direct"


# ------------------------------------------------------------------------------------- offline


def test_missing_offline_message_names_file_repo_command_and_models_dir(tmp_path):
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("depth", models_dir=tmp_path)
    message = str(caught.value)
    for part in ("ZoeD_M12_N.pt", "lllyasviel/Annotators", "`guides models download depth`", "--models-dir",
                 "GUIDES_MODELS_DIR", "HF_HUB_OFFLINE", str(tmp_path)):
        assert part in message, message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_download_false_never_touches_the_network(fake_hub):
    fake_hub.add("lllyasviel/Annotators", "sk_model.pth", PAYLOAD)
    with pytest.raises(WeightsError, match="guides models download lineart"):
        resolve_checkpoint("lineart", download=False)
    assert fake_hub.requests == []


def test_unreachable_hub_is_the_same_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # online, but HF_ENDPOINT points at a closed port
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    import huggingface_hub.utils._http as hub_http

    waits: list[float] = []
    monkeypatch.setattr(hub_http.time, "sleep", waits.append)  # the client's retry backoff, 23 s in all
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("lineart")
    message = str(caught.value)
    assert "download failed" in message and "guides models download lineart" in message, message
    assert sum(waits) < 2, f"the client backed off {sum(waits):.1f} s before failing (retries must be bounded)"


# ------------------------------------------------------------------------------------ downloads


def test_download_through_the_hub_client_then_found_in_the_cache_offline(fake_hub, monkeypatch, use_entry):
    entry = use_entry("sam-vit-b", size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                      md5_prefix=hashlib.md5(PAYLOAD).hexdigest()[:6])
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    path = resolve_checkpoint("sam-vit-b")
    assert path.read_bytes() == PAYLOAD
    assert hub_cache_dir() in path.parents
    assert entry.pinned  # the download asks for the catalog's commit, not the moving main branch
    assert fake_hub.downloads() == [f"/{entry.repo}/resolve/{entry.revision}/{entry.filename}"]
    assert f"snapshots/{entry.revision}/" in path.as_posix()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint("sam-vit-b") == path
    assert len(fake_hub.downloads()) == 1


def test_download_into_a_flat_folder_is_then_found_there(fake_hub, monkeypatch, tmp_path, use_entry):
    entry = use_entry("depth", size=len(PAYLOAD))
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    folder = tmp_path / "models"
    path = download_checkpoint("depth", to=folder)
    assert path == folder / "ZoeD_M12_N.pt" and path.read_bytes() == PAYLOAD
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_checkpoint("depth", models_dir=folder) == path


def test_sha256_mismatch_refuses_and_deletes_the_download(fake_hub, monkeypatch, use_entry):
    entry = use_entry("sam-vit-b", size=len(PAYLOAD), sha256="0" * 64, md5_prefix=None)
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("sam-vit-b")
    message = str(caught.value)
    assert "refused and deleted" in message and hashlib.sha256(PAYLOAD).hexdigest() in message, message
    leftovers = [p for p in hub_cache_dir().rglob("*") if p.is_file() and p.stat().st_size == len(PAYLOAD)]
    assert leftovers == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="not available"):
        resolve_checkpoint("sam-vit-b")


def test_md5_prefix_of_the_file_name_is_checked(fake_hub, monkeypatch, use_entry):
    entry = use_entry("sam-vit-l", size=None, sha256=None, md5_prefix="ffffff")
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    with pytest.raises(WeightsError, match="does not start with ffffff"):
        resolve_checkpoint("sam-vit-l")


def test_size_mismatch_refuses_the_download(fake_hub, monkeypatch, use_entry):
    entry = use_entry("lineart", size=len(PAYLOAD) + 1)
    fake_hub.add(entry.repo, entry.filename, PAYLOAD)
    with pytest.raises(WeightsError, match=rf"size {len(PAYLOAD)} bytes, expected {len(PAYLOAD) + 1}"):
        resolve_checkpoint("lineart")


def test_file_missing_on_the_hub(fake_hub):
    with pytest.raises(WeightsError) as caught:
        resolve_checkpoint("normals")
    assert "download failed" in str(caught.value) and "scannet.pt" in str(caught.value)


# ------------------------------------------------------------------------------- diffusers repos


def diffusers_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_diffusers_repo_given_as_a_folder(tmp_path):
    folder = diffusers_folder(tmp_path / "my_controlnet")
    assert resolve_diffusers_repo(folder) == folder


def test_diffusers_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="not a diffusers model folder"):
        resolve_diffusers_repo(tmp_path / "empty")


def test_diffusers_repo_in_the_models_folder_by_repo_name(tmp_path):
    folder = diffusers_folder(tmp_path / "control_v11p_sd15_canny")
    assert resolve_diffusers_repo("lllyasviel/control_v11p_sd15_canny", models_dir=tmp_path) == folder
    assert resolve_diffusers_repo("controlnet-canny", models_dir=tmp_path) == folder


def test_diffusers_repo_in_the_hub_cache(isolated_env):
    pointer = plant_in_hub_cache(isolated_env, "lllyasviel/control_v11f1p_sd15_depth", "config.json", b"{}")
    assert resolve_diffusers_repo("controlnet-depth") == pointer.parent


def test_missing_diffusers_repo_says_how_to_get_it(tmp_path):
    with pytest.raises(WeightsError) as caught:
        resolve_diffusers_repo("stable-diffusion-v1-5/stable-diffusion-v1-5", models_dir=tmp_path)
    message = str(caught.value)
    for part in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "guides models download sd15", "--models-dir"):
        assert part in message, message


def test_not_a_repo_id_nor_a_folder(tmp_path):
    with pytest.raises(WeightsError, match="no such folder"):
        resolve_diffusers_repo(tmp_path / "missing")


def test_diffusers_repo_download_through_the_hub_client(fake_hub):
    repo = "lllyasviel/control_v11p_sd15_lineart"
    fake_hub.add(repo, "config.json", b'{"_class_name": "ControlNetModel"}')
    fake_hub.add(repo, "diffusion_pytorch_model.safetensors", PAYLOAD)
    fake_hub.add(repo, "diffusion_pytorch_model.bin", b"pickle we do not want")
    folder = resolve_diffusers_repo("controlnet-lineart", download=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == PAYLOAD
