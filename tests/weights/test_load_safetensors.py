"""The ``safetensors`` container of the weights module: read without pickle, memory-mapped (every tensor a
view of one mapping of the file), loaded strictly into a meta-built network; damaged files are one-line
WeightsErrors; several files sharing a hub name (``model.safetensors``) in a flat models folder; the
non-commercial warning at download."""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from guides.errors import WeightsError
from guides.weights.catalog import get_checkpoint
from guides.weights.load import load_checkpoint_into, read_safetensors, read_state_dict
from guides.weights.resolve import download_checkpoint, find_in_models_dir, missing_message, resolve_checkpoint
from tests.cli_testing import invoke


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=generator),
        "f16": torch.randn(7, generator=generator).half(),
        "bf16": torch.randn(2, 3, generator=generator).bfloat16(),
        "i64": torch.arange(6).view(2, 3),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "u8": torch.arange(5, dtype=torch.uint8),  # an odd length: the next entries start unaligned
        "f64": torch.randn(3, generator=generator, dtype=torch.float64),
    }


def test_reads_what_the_safetensors_library_wrote_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    expected = load_file(str(path))
    for mmap in (True, False):
        got = read_safetensors(path, mmap=mmap)
        assert got.keys() == expected.keys()
        for key, tensor in expected.items():
            assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
            assert torch.equal(got[key], tensor), key
    assert read_state_dict(path, container="safetensors").keys() == expected.keys()


def test_tensors_are_views_of_one_memory_mapping_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.randn(64, 64), "b": torch.randn(128)}, str(path))
    got = read_safetensors(path)
    storages = {tensor.untyped_storage().data_ptr() for tensor in got.values()}
    assert len(storages) == 1, "one mapping, no copies"
    assert got["a"].untyped_storage().nbytes() == path.stat().st_size
    # private mapping: writing a loaded tensor never changes the file
    before = path.read_bytes()
    got["b"].add_(1)
    assert path.read_bytes() == before


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm(4)


def test_loaded_strictly_into_a_meta_built_network_without_copies(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = _Tiny()
    path = tmp_path / "tiny.safetensors"
    save_file(reference.state_dict(), str(path))
    model = load_checkpoint_into(_Tiny, path, container="safetensors")
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    mapped = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(mapped) == 1, "the parameters are the file's mapped tensors (assign=True), not copies"
    assert not model.training

    extra = dict(reference.state_dict(), stray=torch.zeros(1))
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError) as raised:
        load_checkpoint_into(_Tiny, tmp_path / "extra.safetensors", container="safetensors")
    assert str(raised.value) == f"{tmp_path / 'extra.safetensors'}: checkpoint does not fit the network: 1 unexpected: stray"
    missing = {k: v for k, v in reference.state_dict().items() if k != "norm.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="1 missing: norm.bias"):
        load_checkpoint_into(_Tiny, tmp_path / "missing.safetensors", container="safetensors")


def _header_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


HINT = "delete it and download it again (`guides models download NAME`)"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "checkpoint file is empty (truncated download?)"),
        (lambda p: p.write_bytes(b"\x01\x02"),
         "cannot read checkpoint, the safetensors file is truncated (2 bytes, shorter than the 8-byte header length)"),
        (lambda p: _header_file(p, {}, length=10_000),
         "cannot read checkpoint, not a valid safetensors file (header length 10,000 does not fit a file of 10 bytes)"),
        (lambda p: p.write_bytes(struct.pack("<Q", 4) + b"{{{{"),
         "cannot read checkpoint, not a valid safetensors file (header is not JSON: Expecting property name "
         "enclosed in double quotes: line 1 column 2 (char 1))"),
        (lambda p: _header_file(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
         "cannot read checkpoint, the safetensors file is truncated (the tensors need 16 bytes after the header, "
         "the file has 8)"),
        (lambda p: _header_file(p, {"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
         "cannot read checkpoint, not a valid safetensors file (entry 'w' has the unsupported dtype 'Q7')"),
        (lambda p: _header_file(p, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8),
         "cannot read checkpoint, not a valid safetensors file (entry 'b' starts at byte 2, not where the previous "
         "one ends (4))"),
        (lambda p: torch.save({"w": torch.zeros(2)}, p),
         None),  # a torch zip file is not safetensors: its first bytes give an absurd header length
    ],
    ids=["empty", "short", "header-too-long", "not-json", "truncated-data", "unknown-dtype", "overlap", "torch-zip"],
)
def test_damaged_files_are_one_line_weights_errors(tmp_path: Path, make, reason: str | None) -> None:
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(WeightsError) as raised:
        read_safetensors(path)
    message = str(raised.value)
    assert "\n" not in message
    if reason is None:
        assert message.startswith(f"{path}: cannot read checkpoint, not a valid safetensors file (header length "), message
    else:
        assert message == f"{path}: {reason}; {HINT}"


def test_wrong_size_for_the_shape_is_refused(tmp_path: Path) -> None:
    path = _header_file(tmp_path / "w.safetensors", {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                        b"\0" * 8)
    with pytest.raises(WeightsError, match=r"entry 'w': 8 bytes for shape \[3\] of F32"):
        read_safetensors(path)


# ----------------------------------------------------------------- several files named model.safetensors


def test_shared_hub_names_have_their_own_flat_names(tmp_path: Path) -> None:
    """The three -hf files are all ``model.safetensors``: in a flat folder each has its declared name (or its
    repository's folder), and a bare ``model.safetensors`` is never taken for one of them."""
    entries = [get_checkpoint(f"depth-anything-v2-{size}") for size in ("small", "base", "large")]
    assert {entry.filename for entry in entries} == {"model.safetensors"}
    assert [entry.flat_names for entry in entries] == [
        ("depth_anything_v2_vits.safetensors", "Depth-Anything-V2-Small-hf/model.safetensors"),
        ("depth_anything_v2_vitb.safetensors", "Depth-Anything-V2-Base-hf/model.safetensors"),
        ("depth_anything_v2_vitl.safetensors", "Depth-Anything-V2-Large-hf/model.safetensors"),
    ]
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert all(find_in_models_dir(entry, tmp_path) is None for entry in entries)
    (tmp_path / "depth_anything_v2_vitb.safetensors").write_bytes(b"b")
    (tmp_path / "Depth-Anything-V2-Large-hf").mkdir()
    (tmp_path / "Depth-Anything-V2-Large-hf" / "model.safetensors").write_bytes(b"l")
    small, base, large = entries
    assert find_in_models_dir(small, tmp_path) is None
    assert find_in_models_dir(base, tmp_path) == tmp_path / "depth_anything_v2_vitb.safetensors"
    assert find_in_models_dir(large, tmp_path) == tmp_path / "Depth-Anything-V2-Large-hf" / "model.safetensors"
    message = missing_message(small, tmp_path, reason="r")
    assert "put depth_anything_v2_vits.safetensors in a folder passed with --models-dir DIR" in message


def test_download_to_a_flat_folder_writes_the_declared_name_and_warns_when_non_commercial(
        fake_hub, tmp_path: Path, caplog) -> None:
    """Base (unpinned, CC-BY-NC) lands under its flat name with one warning; Small is pinned (size and
    sha256 of the public file), so the fake hub's bytes are refused and deleted, without a licence warning."""
    payload = b"weights of the base model"
    base = get_checkpoint("depth-anything-v2-base")
    small = get_checkpoint("depth-anything-v2-small")
    assert small.pinned and small.size == 99_173_660 and not base.pinned
    fake_hub.add(base.repo, base.filename, payload)
    fake_hub.add(small.repo, small.filename, b"small")
    folder = tmp_path / "models"
    with caplog.at_level(logging.WARNING, logger="guides.weights.resolve"):
        path = download_checkpoint("depth-anything-v2-base", to=folder)
        with pytest.raises(WeightsError, match="downloaded model.safetensors from depth-anything/Depth-Anything-V2-"
                                               "Small-hf was refused and deleted: size 5 bytes, expected 99173660"):
            download_checkpoint("depth-anything-v2-small", to=folder)
    assert path == folder / "depth_anything_v2_vitb.safetensors" and path.read_bytes() == payload
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".cache")) == [
        "depth_anything_v2_vitb.safetensors"]  # no staging, nothing of the refused file left
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "depth-anything-v2-base: model.safetensors is licensed CC-BY-NC-4.0 (Depth Anything V2 Base model card): "
        "non-commercial use only"
    ], warnings  # Small (Apache-2.0) downloads without one
    assert resolve_checkpoint("depth-anything-v2-base", models_dir=folder, download=False) == path


def test_models_list_shows_the_licences_and_download_prints_the_warning(fake_hub, tmp_path: Path) -> None:
    listing = invoke("models", "list")
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[0]: line for line in listing.stdout.splitlines() if line.startswith("depth-anything-v2-")}
    assert len(rows) == 6
    for name, row in rows.items():
        licence = "Apache-2.0 " if "-small" in name else "CC-BY-NC-4.0 (non-commercial) "
        assert licence in row and row.endswith("missing"), row
    entry = get_checkpoint("depth-anything-v2-large-original")
    fake_hub.add(entry.repo, entry.filename, b"large")
    result = invoke("models", "download", "depth-anything-v2-large-original", "--to", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "depth_anything_v2_vitl.pth").read_bytes() == b"large"
    assert ("depth-anything-v2-large-original: depth_anything_v2_vitl.pth is licensed CC-BY-NC-4.0 "
            "(Depth Anything V2 Large model card): non-commercial use only") in result.stderr
