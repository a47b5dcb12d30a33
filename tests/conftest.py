"""Shared fixtures. ``refs`` is the reference data folder named by GUIDES_REFS (skip when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def refs() -> Path:
    """The folder of reference inputs and guides (``../shared/refs`` in CI)."""
    value = os.environ.get("GUIDES_REFS")
    if not value:
        pytest.skip("GUIDES_REFS is not set: reference images unavailable (CI sets it to ../shared/refs)")
    path = Path(value)
    if not (path / "cutecat_init.png").is_file():
        pytest.skip(f"GUIDES_REFS={value} does not hold cutecat_init.png: reference images unavailable")
    return path
