"""Learned annotators record the checkpoint file they loaded, and ``download=False`` never asks the hub."""

from __future__ import annotations

import hashlib

import pytest
import torch

from guides.annotators.base import ModelOptions
from guides.dataset.card import describe_model_files
from guides.errors import WeightsError
from guides.registry import get


@pytest.fixture(scope="module")
def lineart_weights(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A random lineart generator saved as ``sk_model.pth`` is (a plain state dict), as bytes."""
    from guides.nets.informative_drawings import lineart_generator

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lineart") / "sk_model.pth"
    torch.save(lineart_generator().state_dict(), path)
    return path.read_bytes()


def test_download_defaults_to_the_hubs_convention_in_the_python_api():
    assert ModelOptions().download is True
    assert get("lineart").options().download is True


@pytest.mark.parametrize(("coarse", "name"), [(False, "sk_model.pth"), (True, "sk_model2.pth")])
def test_loaded_files_is_the_file_loaded_and_the_card_records_its_sha256(tmp_path, lineart_weights, coarse, name):
    (tmp_path / name).write_bytes(lineart_weights)
    annotator = get("lineart").load(models_dir=str(tmp_path), device="cpu", coarse=coarse, resolution=64)
    assert annotator.loaded_files == (tmp_path / name,)
    assert describe_model_files("lineart", annotator) == [
        {"file": str(tmp_path / name), "size": len(lineart_weights), "sha256": hashlib.sha256(lineart_weights).hexdigest()}
    ]


def test_an_explicit_checkpoint_is_the_file_recorded(tmp_path, lineart_weights):
    explicit = tmp_path / "my_lineart.pth"
    explicit.write_bytes(lineart_weights)
    annotator = get("lineart").load(checkpoint=str(explicit), device="cpu", resolution=64)
    assert annotator.loaded_files == (explicit,)


def test_download_false_fails_at_once_without_asking_the_hub(fake_hub, lineart_weights):
    fake_hub.add("lllyasviel/Annotators", "sk_model.pth", lineart_weights)
    with pytest.raises(WeightsError) as caught:
        get("lineart").load(device="cpu", download=False)
    message = str(caught.value)
    assert "`guides models download lineart`" in message and "--download" in message, message
    assert "downloading was not asked for" in message and caught.value.exit_code == 2
    assert fake_hub.requests == []


def test_download_true_fetches_the_pinned_commit_and_records_the_cached_file(fake_hub, lineart_weights, monkeypatch, use_entry):
    entry = use_entry("lineart", size=len(lineart_weights))
    fake_hub.add(entry.repo, entry.filename, lineart_weights)
    annotator = get("lineart").load(device="cpu", resolution=64)
    (path,) = annotator.loaded_files
    assert path.read_bytes() == lineart_weights and f"snapshots/{entry.revision}/" in path.as_posix()
    assert fake_hub.downloads() == [f"/{entry.repo}/resolve/{entry.revision}/sk_model.pth"]
