"""Fixtures of the engine tests: the photo tree with bad files, the fake second annotator and the one
local Ray runtime of the session, shared with the export tests (defined in tests/dataset/conftest.py)."""

from __future__ import annotations

from tests.dataset.conftest import invert_class, photo_tree, ray_session, tree_reader  # noqa: F401
