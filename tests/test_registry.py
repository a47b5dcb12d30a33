"""The registry: built-in rows of ``guides --help`` read without importing any annotator module."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from guides.registry import BUILT_IN, REGISTRY, declared_summary


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_declared_summary_is_the_class_summary(name: str) -> None:
    spec = REGISTRY[name]
    assert declared_summary(spec.target) == spec.annotator_class().summary


def test_help_rows_import_no_annotator_module() -> None:
    script = textwrap.dedent("""
        import sys
        from guides.registry import BUILT_IN, REGISTRY
        rows = [REGISTRY[name].help_summary() for name in BUILT_IN]
        assert all(rows), rows
        imported = sorted(m for m in sys.modules if m.startswith("guides.annotators.") and m != "guides.annotators.base")
        print(imported, "torch" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] False", result.stdout + result.stderr


def test_declared_summary_of_an_unreadable_target_is_none() -> None:
    assert declared_summary("guides.no_such_module:Nothing") is None
    assert declared_summary("guides.annotators.base:Annotator") is None  # declared, not a literal there
