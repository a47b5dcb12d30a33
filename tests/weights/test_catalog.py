"""guides.weights.catalog: the names, files and facts the rest of guides relies on."""

from __future__ import annotations

import re

import pytest

from guides.errors import WeightsError
from guides.weights.catalog import CHECKPOINTS, DIFFUSERS_REPOS, get_checkpoint, get_diffusers_repo

EXPECTED = {
    "lineart": ("lllyasviel/Annotators", "sk_model.pth", "state_dict"),
    "lineart-coarse": ("lllyasviel/Annotators", "sk_model2.pth", "state_dict"),
    "normals": ("lllyasviel/Annotators", "scannet.pt", "model_dict"),
    "depth": ("lllyasviel/Annotators", "ZoeD_M12_N.pt", "model_dict"),
    "sam-vit-h": ("ybelkada/segment-anything", "checkpoints/sam_vit_h_4b8939.pth", "state_dict"),
    "sam-vit-l": ("ybelkada/segment-anything", "checkpoints/sam_vit_l_0b3195.pth", "state_dict"),
    "sam-vit-b": ("ybelkada/segment-anything", "checkpoints/sam_vit_b_01ec64.pth", "state_dict"),
}


def test_checkpoint_names_files_and_containers():
    found = {name: (c.repo, c.filename, c.container) for name, c in CHECKPOINTS.items()}
    assert found == EXPECTED


def test_every_checkpoint_records_licence_use_and_size():
    for entry in CHECKPOINTS.values():
        assert entry.licence and entry.used_by and entry.size_hint > 1_000_000, entry
        assert (entry.size is None) != (entry.approx_size is None), entry


def test_sam_file_names_carry_the_md5_prefix_and_full_sha256_is_recorded():
    for name in ("sam-vit-h", "sam-vit-l", "sam-vit-b"):
        entry = CHECKPOINTS[name]
        suffix = re.search(r"_([0-9a-f]{6})\.pth$", entry.filename).group(1)
        assert entry.md5_prefix == suffix
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256 or ""), entry.sha256
        assert entry.size is not None
        assert entry.flat_names == (entry.filename, entry.basename)


def test_only_normals_may_carry_module_prefixes():
    assert [n for n, c in CHECKPOINTS.items() if c.may_have_module_prefix] == ["normals"]


def test_unknown_checkpoint_lists_the_known_ones():
    with pytest.raises(WeightsError, match="unknown checkpoint 'zoe'.*depth"):
        get_checkpoint("zoe")


def test_diffusers_repos_of_the_controlnet_stage():
    repos = {r.repo for r in DIFFUSERS_REPOS.values()}
    assert repos == {
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "lllyasviel/control_v11p_sd15_canny",
        "lllyasviel/control_v11f1p_sd15_depth",
        "lllyasviel/control_v11p_sd15_lineart",
        "lllyasviel/control_v11p_sd15_normalbae",
        "mfidabel/controlnet-segment-anything",
    }
    guides = {r.guide for r in DIFFUSERS_REPOS.values() if r.role == "controlnet"}
    assert guides == {"canny", "depth", "lineart", "normals", "sam"}
    assert get_diffusers_repo("lllyasviel/control_v11p_sd15_canny").name == "controlnet-canny"
    assert get_diffusers_repo("sd15").role == "base"
    assert get_diffusers_repo("someone/else") is None


def test_models_readme_lists_every_checkpoint_with_its_recorded_facts():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "models" / "README.md").read_text()
    for entry in CHECKPOINTS.values():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{entry.name}` |")), None)
        assert row is not None, f"models/README.md has no row for {entry.name}"
        assert entry.basename in row and (entry.repo in row), row
        if entry.size is not None:
            assert f"{entry.size:,}" in row, (entry.size, row)
        if entry.sha256 is not None:
            assert entry.sha256 in row, row
        assert (f"`{entry.revision}`" in row) if entry.pinned else ("main (not pinned)" in row), row
    for repo in DIFFUSERS_REPOS.values():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{repo.name}` |")), None)
        assert row is not None and repo.repo in row, repo.name
        assert (f"`{repo.revision}`" in row) if repo.pinned else ("main (not pinned)" in row), row


def test_revisions_are_full_commits_or_main_and_annotator_files_are_pinned():
    """A revision is a 40-hex commit (reproducible) or ``main``; never a short or made-up form."""
    for entry in [*CHECKPOINTS.values(), *DIFFUSERS_REPOS.values()]:
        assert entry.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", entry.revision), entry
        assert entry.pinned == (entry.revision != "main")
    pinned = {name for name, entry in CHECKPOINTS.items() if entry.pinned}
    assert pinned == {"lineart", "lineart-coarse", "normals", "sam-vit-h", "sam-vit-b"}
    assert {name for name, repo in DIFFUSERS_REPOS.items() if not repo.pinned} == {"controlnet-sam"}


def test_key_filters_recorded_per_checkpoint():
    filters = {name: entry.key_filters for name, entry in CHECKPOINTS.items() if entry.key_filters}
    assert filters == {"normals": ("strip_module_prefix",), "depth": ("drop_computed_buffers",)}
    from guides.weights.load import KEY_FILTERS

    assert all(f in KEY_FILTERS for fs in filters.values() for f in fs)
