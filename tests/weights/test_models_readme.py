"""models/README.md is generated from the catalog (``guides.weights.models_readme``): it must be what
``render()`` makes now, and every row must carry its checkpoint's recorded facts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from guides.registry import REGISTRY, loadable_classes
from guides.weights.catalog import CHECKPOINTS, DIFFUSERS_REPOS
from guides.weights.models_readme import COMMAND, render

README = Path(__file__).resolve().parents[2] / "models" / "README.md"


def test_models_readme_is_generated_from_the_declarations():
    current = README.read_text(encoding="utf-8")
    assert current == render(), f"models/README.md is out of date: run `{COMMAND}` (from toolkit/, or with guides installed)"


def _row(readme: str, name: str) -> str | None:
    return next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)


def test_models_readme_lists_every_builtin_checkpoint_and_repository_with_its_recorded_facts():
    readme = render()
    builtin = [cls for cls in loadable_classes({n: s for n, s in REGISTRY.items() if s.builtin})]
    names = {checkpoint.name for cls in builtin for checkpoint in cls.checkpoints}
    for name in names:
        entry = CHECKPOINTS[name]
        row = _row(readme, entry.name)
        assert row is not None, f"models/README.md has no row for {entry.name}"
        assert entry.basename in row and entry.repo in row and entry.licence in row, row
        if entry.size is not None:
            assert f"{entry.size:,}" in row, (entry.size, row)
        if entry.sha256 is not None:
            assert entry.sha256 in row, row
        if entry.md5_prefix is not None:
            assert f"`{entry.md5_prefix}`" in row, row
        assert (f"`{entry.revision}`" in row) if entry.pinned else ("main (not pinned)" in row), row
        users = [cls.name for cls in builtin if any(c.name == name for c in cls.checkpoints)]
        assert all(f"`guides {user}" in row for user in users), (users, row)
    guides = {cls.name for cls in builtin}
    for repo in DIFFUSERS_REPOS.values():
        if repo.role == "controlnet" and repo.guide not in guides:
            continue
        row = _row(readme, repo.name)
        assert row is not None and repo.repo in row and repo.licence in row, repo.name
        assert (f"`{repo.revision}`" in row) if repo.pinned else ("main (not pinned)" in row), row


def test_the_generator_prints_the_file_and_imports_no_torch(tmp_path: Path):
    code = ("import sys\nfrom guides.weights.models_readme import main\nmain()\n"
            "assert 'torch' not in sys.modules and 'huggingface_hub' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == render()
    written = tmp_path / "README.md"
    subprocess.run([sys.executable, "-m", "guides.weights.models_readme", str(written)], check=True, timeout=120)
    assert written.read_text(encoding="utf-8") == render()
