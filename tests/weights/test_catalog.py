"""guides.weights.catalog: derived from the annotators' declarations, and the recorded facts of the public
files those declarations name (the facts are checked here against what is known of each file, keyed by the
file, not by the annotator that loads it)."""

from __future__ import annotations

import dataclasses
import re
import sys

import pytest

from guides.errors import WeightsError
from guides.registry import REGISTRY, loadable_classes
from guides.weights.catalog import (
    ANNOTATORS_COMMIT,
    BASE_MODELS,
    CHECKPOINTS,
    DIFFUSERS_REPOS,
    SAM_COMMIT,
    get_checkpoint,
    get_diffusers_repo,
)
from guides.weights.load import KEY_FILTERS

ANNOTATORS = "lllyasviel/Annotators"
SAM = "ybelkada/segment-anything"

#: What is known of each public checkpoint file: (hub repo, file) -> the facts its declaration must record.
#: Sizes and digests from public download manifests and Meta's release files; the commits stated in
#: public sources (cited next to the declarations).
KNOWN_FILES = {
    (ANNOTATORS, "sk_model.pth"): dict(container="state_dict", size=17_173_511, revision=ANNOTATORS_COMMIT),
    (ANNOTATORS, "sk_model2.pth"): dict(container="state_dict", size=17_173_511, revision=ANNOTATORS_COMMIT),
    (ANNOTATORS, "scannet.pt"): dict(container="model_dict", size=None, revision=ANNOTATORS_COMMIT,
                                     key_filters=("strip_module_prefix",)),
    (ANNOTATORS, "ZoeD_M12_N.pt"): dict(container="model_dict", size=1_443_406_099, revision="main",
                                        key_filters=("drop_computed_buffers",)),
    (SAM, "checkpoints/sam_vit_h_4b8939.pth"): dict(
        container="state_dict", size=2_564_550_879, revision=SAM_COMMIT, md5_prefix="4b8939",
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
    (SAM, "checkpoints/sam_vit_l_0b3195.pth"): dict(
        container="state_dict", size=1_249_524_607, revision="main", md5_prefix="0b3195",
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    (ANNOTATORS, "ControlNetHED.pth"): dict(
        container="state_dict", size=29_444_406, revision=ANNOTATORS_COMMIT,
        sha256="5ca93762ffd68a29fee1af9d495bf6aab80ae86f08905fb35472a083a4c7a8fa"),
    (ANNOTATORS, "table5_pidinet.pth"): dict(
        container="state_dict_entry", size=None, revision="main", key_filters=("strip_module_prefix",),
        sha256="80860ac267258b5f27486e0ef152a211d0b08120f62aeb185a050acc30da486c"),
    ("fal-ai/teed", "5_model.pth"): dict(container="state_dict", size=None,
                                         revision="5fd20d8c3641d666b3f6d1d00b977f2f83bc54d4"),
    ("TheMistoAI/MistoLine", "Anyline/MTEED.pth"): dict(
        container="state_dict", size=248_298, revision="344915650d49be75168c2c20e67bb18cb4341ae3",
        sha256="a3c2d8a8ce9422555c787160bd46362d761325a565333c0e3f6a53e0bae2abdb"),
    (ANNOTATORS, "mlsd_large_512_fp32.pth"): dict(container="state_dict", size=None, revision="main"),
    (ANNOTATORS, "netG.pth"): dict(
        container="state_dict", size=217_631_959, revision="main", key_filters=("strip_module_prefix",),
        sha256="ccabdcc3f5cf3c07cf65d58776acb21df7dfda825cdc70c9766a93fd62bfc488"),
    (SAM, "checkpoints/sam_vit_b_01ec64.pth"): dict(
        container="state_dict", size=375_042_383, revision=SAM_COMMIT, md5_prefix="01ec64",
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
}

#: The hub commits of the diffusers repositories, as stated in public sources ("main": none known).
KNOWN_REPOSITORIES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
    "lllyasviel/control_v11p_sd15_canny": "115a470d547982438f70198e353a921996e2e819",
    "lllyasviel/control_v11f1p_sd15_depth": "539f99181d33db39cf1af2e517cd8056785f0a87",
    "lllyasviel/control_v11p_sd15_lineart": "8a158f547e031c5b8fbca19ead09a74767ff4db0",
    "lllyasviel/control_v11p_sd15_normalbae": "cb7296e6587a219068e9d65864e38729cd862aa8",
    "mfidabel/controlnet-segment-anything": "main",
    "lllyasviel/control_v11p_sd15_scribble": "main",
    "lllyasviel/control_v11p_sd15_softedge": "b5bcad0c48e9b12f091968cf5eadbb89402d6bc9",
    "TheMistoAI/MistoLine": "344915650d49be75168c2c20e67bb18cb4341ae3",
    "lllyasviel/control_v11p_sd15_mlsd": "main",
    "lllyasviel/control_v11p_sd15s2_lineart_anime": "main",
    "lllyasviel/control_v11p_sd15_openpose": "main",
    "lllyasviel/control_v11f1e_sd15_tile": "main",
    "lllyasviel/control_v11e_sd15_shuffle": "main",
}


def builtin_classes() -> list[type]:
    return list(loadable_classes({name: spec for name, spec in REGISTRY.items() if spec.builtin}))


def test_the_catalog_is_the_declarations_of_the_registered_annotators():
    declared: dict[str, object] = {}
    for cls in loadable_classes(REGISTRY):
        for checkpoint in cls.checkpoints:
            declared.setdefault(checkpoint.name, dataclasses.replace(checkpoint, used_by=checkpoint.used_by or cls.name))
    assert dict(CHECKPOINTS) == declared
    repositories = {repo.name: repo for repo in BASE_MODELS}
    kinds: dict[str, tuple] = {}
    for cls in loadable_classes(REGISTRY):
        for controlnet in cls.controlnets:
            kind = controlnet.kind or cls.name
            first, annotators = kinds.get(kind, (controlnet, ()))
            kinds[kind] = (first, annotators if cls.name in annotators else (*annotators, cls.name))
    for kind, (controlnet, annotators) in kinds.items():
        repositories[controlnet.name or f"controlnet-{kind}"] = controlnet.repository(kind, annotators)
    assert dict(DIFFUSERS_REPOS) == repositories


def test_checkpoint_names_are_unique_and_every_annotators_selection_is_declared():
    """One name is one file (and one file one name); what ``checkpoint_names(Options())`` picks is declared,
    and every declared file is picked by the option values of its ``when``."""
    by_name: dict[str, tuple[str, str]] = {}
    for cls in loadable_classes(REGISTRY):
        names = [checkpoint.name for checkpoint in cls.checkpoints]
        assert len(names) == len(set(names)), (cls.name, names)
        for checkpoint in cls.checkpoints:
            place = (checkpoint.repo, checkpoint.filename)
            assert by_name.setdefault(checkpoint.name, place) == place, (cls.name, checkpoint.name)
            fields = {field.name for field in dataclasses.fields(cls.Options)}
            assert {option for option, _ in checkpoint.when} <= fields, (cls.name, checkpoint.name, checkpoint.when)
            assert checkpoint.name in cls.checkpoint_names(cls.Options(**dict(checkpoint.when))), (cls.name, checkpoint)
        selected = cls.checkpoint_names(cls.Options())
        assert all(name in CHECKPOINTS for name in selected), (cls.name, selected)
        if cls.checkpoints:
            assert selected, f"{cls.name}: its default options select none of its checkpoints"
    assert len(set(by_name.values())) == len(by_name), by_name


def test_the_known_files_are_declared_with_their_recorded_facts():
    declared = {(c.repo, c.filename): c for c in CHECKPOINTS.values()}
    for place, facts in KNOWN_FILES.items():
        entry = declared.get(place)
        assert entry is not None, f"no annotator declares {place}"
        expected = {"sha256": None, "md5_prefix": None, "key_filters": (), **facts}
        assert {key: getattr(entry, key) for key in expected} == expected, entry


def test_every_checkpoint_records_licence_use_and_size():
    for entry in CHECKPOINTS.values():
        assert entry.licence and entry.used_by and entry.size_hint > 200_000, entry  # TEED's: about 250 kB
        assert (entry.size is None) != (entry.approx_size is None), entry
        assert all(name in KEY_FILTERS for name in entry.key_filters), entry


def test_file_names_carrying_an_md5_prefix_record_it_and_the_full_sha256():
    for entry in CHECKPOINTS.values():
        suffix = re.search(r"_([0-9a-f]{6})\.pth$", entry.filename)
        if suffix is None:
            assert entry.md5_prefix is None, entry
            continue
        assert entry.md5_prefix == suffix.group(1)
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256 or ""), entry.sha256
        assert entry.size is not None
    sam = [entry for entry in CHECKPOINTS.values() if entry.repo == SAM]
    assert len(sam) == 3 and all(entry.md5_prefix for entry in sam)
    for entry in sam:
        assert entry.flat_names == (entry.filename, entry.basename)


def test_unknown_checkpoint_lists_the_known_ones():
    with pytest.raises(WeightsError, match="unknown checkpoint 'zoe'.*depth"):
        get_checkpoint("zoe")


def test_diffusers_repos_are_the_base_model_and_each_declared_controlnet():
    from guides.diffusion.settings import control_kinds

    for cls in loadable_classes(REGISTRY):
        for index, controlnet in enumerate(cls.controlnets):
            kind = controlnet.kind or cls.name
            entry = get_diffusers_repo(controlnet.name or f"controlnet-{kind}")
            assert entry is not None and entry.role == "controlnet" and entry.guide == kind, (cls.name, entry)
            assert cls.name in entry.annotators and entry.base == controlnet.base, (cls.name, entry)
            assert (entry.repo, entry.revision, entry.scale, entry.licence) == (
                controlnet.repo, controlnet.revision, controlnet.scale, controlnet.licence)
            if index == 0:
                assert get_diffusers_repo(controlnet.repo) == entry
    guides = [r.guide for r in DIFFUSERS_REPOS.values() if r.role == "controlnet" and r.base == "sd15"]
    assert list(dict.fromkeys(guides)) == list(control_kinds())
    assert [r.name for r in DIFFUSERS_REPOS.values() if r.role == "base"] == ["sd15"]
    assert get_diffusers_repo("sd15").role == "base"
    assert get_diffusers_repo("someone/else") is None


def test_the_known_repositories_are_declared_at_their_stated_commits():
    builtin = {repo.repo: repo for repo in DIFFUSERS_REPOS.values() if repo.role == "base" or
               {cls.name for cls in builtin_classes()}.intersection(repo.annotators)}
    assert {repo: entry.revision for repo, entry in builtin.items()} == KNOWN_REPOSITORIES
    for entry in builtin.values():
        assert entry.licence and entry.approx_size > 1_000_000_000 and entry.allow_patterns, entry


def test_revisions_are_full_commits_or_main():
    """A revision is a 40-hex commit (reproducible) or ``main``; never a short or made-up form."""
    for entry in [*CHECKPOINTS.values(), *DIFFUSERS_REPOS.values()]:
        assert entry.revision == "main" or re.fullmatch(r"[0-9a-f]{40}", entry.revision), entry
        assert entry.pinned == (entry.revision != "main")


# --------------------------------------------------------------------- ControlNet kinds shared by annotators

from guides.annotators.base import Annotator, AnnotatorOptions  # noqa: E402
from guides.options import option  # noqa: E402
from guides.weights.declarations import MB, ControlNet  # noqa: E402

_SOFT = ControlNet(repo="someone/soft", licence="MIT", approx_size=MB, kind="soft-kind")
_SCRIBBLE = ControlNet(repo="someone/scribble", licence="MIT", approx_size=MB, kind="scribble-kind",
                       when=(("scribble", True),))


@dataclasses.dataclass(frozen=True)
class _ScribbleOptions(AnnotatorOptions):
    scribble: bool = option(False, "Scribble.")


class _SoftA(Annotator):
    name = "soft-a"
    summary = "A."
    Options = _ScribbleOptions
    controlnets = (_SCRIBBLE, _SOFT)

    def annotate(self, image):  # type: ignore[no-untyped-def]
        return image[:, :, 0]


class _SoftB(_SoftA):
    name = "soft-b"
    summary = "B."
    controlnets = (_SOFT,)


class _SoftClash(_SoftA):
    name = "soft-clash"
    summary = "C."
    controlnets = (dataclasses.replace(_SOFT, repo="someone/other"),)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``plugins(*class_names)``: those classes of this module registered as plugins for the test."""
    from guides import registry

    def install(*names: str) -> None:
        specs = [registry.AnnotatorSpec(getattr(sys.modules[__name__], name).name, f"{__name__}:{name}", package="p")
                 for name in names]
        monkeypatch.setattr(registry, "_plugin_entries", lambda: iter(specs))
        registry.load_registry.cache_clear()

    yield install
    registry.load_registry.cache_clear()


def test_one_kind_declared_by_several_annotators_is_one_controlnet(plugins) -> None:  # type: ignore[no-untyped-def]
    from guides.diffusion.settings import control_kinds, controlnet, kind_annotator
    from guides.weights.catalog import declared_controlnets, guide_controlnet

    plugins("_SoftA", "_SoftB")
    declared = declared_controlnets()
    assert declared["soft-kind"] == (_SOFT, ("soft-a", "soft-b"))
    assert declared["scribble-kind"] == (_SCRIBBLE, ("soft-a",))
    assert control_kinds()[-2:] == ("scribble-kind", "soft-kind")
    assert controlnet("soft-kind") == _SOFT and kind_annotator("soft-kind") == "soft-a"
    entry = get_diffusers_repo("controlnet-soft-kind")
    assert entry is not None and entry.annotators == ("soft-a", "soft-b") and entry.used_by == "generate"
    # the option values select the ControlNet a guide is meant for: the first whose `when` matches
    assert guide_controlnet(_SoftA, _ScribbleOptions()) == _SOFT
    assert guide_controlnet(_SoftA, _ScribbleOptions(scribble=True)) == _SCRIBBLE
    assert guide_controlnet(_SoftB, _ScribbleOptions(scribble=True)) == _SOFT


def test_one_kind_with_different_facts_is_a_declaration_error(plugins) -> None:  # type: ignore[no-untyped-def]
    from guides.weights.catalog import declared_controlnets

    plugins("_SoftA", "_SoftClash")
    with pytest.raises(TypeError, match="ControlNet kind 'soft-kind' is declared with different facts by soft-a "
                                        r"\(someone/soft\) and soft-clash \(someone/other\)"):
        declared_controlnets()


def test_sdxl_controlnets_are_recorded_but_not_generate_kinds() -> None:
    from guides.diffusion.settings import control_kinds

    sdxl = [repo for repo in DIFFUSERS_REPOS.values() if repo.role == "controlnet" and repo.base != "sd15"]
    assert [repo.repo for repo in sdxl] == ["TheMistoAI/MistoLine"]
    assert sdxl[0].guide == "anyline" and sdxl[0].guide not in control_kinds()
    assert {"softedge", "scribble", "mlsd", "lineart-anime", "openpose", "tile", "shuffle"} <= set(control_kinds())
