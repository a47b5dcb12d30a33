"""README.md's annotator reference is generated from the declarations: stale docs fail here."""

from __future__ import annotations

from pathlib import Path

from guides.annotator_reference import BEGIN, END, render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_reference_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "README.md lost the annotator reference markers"
    current = text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"
    assert current == render(), (
        "README.md's annotator reference is stale: run `python -m guides.annotator_reference README.md`"
    )


def test_reference_lists_every_built_in_option_and_model() -> None:
    from guides.options import option_infos
    from guides.registry import BUILT_IN, get

    section = render()
    for name in BUILT_IN:
        cls = get(name).annotator_class()
        assert f"### `guides {name}`" in section and cls.summary in section
        for info in option_infos(cls.Options):
            if info.cli and info.name not in {"device", "precision", "batch_size", "models_dir", "checkpoint", "download"}:
                assert info.flag in section, f"{name}: {info.flag} missing from the reference"
        for checkpoint in cls.checkpoints:
            assert checkpoint.folder_name in section
        for controlnet in cls.controlnets:
            assert controlnet.repo in section
