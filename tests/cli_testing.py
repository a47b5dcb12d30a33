"""Run ``guides`` for tests: in-process (``from tests.cli_testing import invoke``), through the console-script
entry point (``main``), and as a user runs it, in a subprocess with a user's environment (``user_environment``,
``ProcessResult``).

``main`` is what turns errors into one-line messages and exit codes, so tests call it rather than the
bare click group: ``invoke("canny", "photo.png").exit_code``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import click
from click.testing import CliRunner, Result

from guides.cli.main import main


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.pass_context
def _console(ctx: click.Context) -> None:
    main(list(ctx.args))


def invoke(*args: str) -> Result:
    """``guides ARGS`` in click's CliRunner; ``result.stdout``/``result.stderr`` are separate."""
    return CliRunner().invoke(_console, list(args), catch_exceptions=False)


#: What a user's shell would not have: the test run's own interpreter and tool settings.
DROPPED_VARIABLES = {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONINSPECT"}
DROPPED_PREFIXES = ("PYTEST_", "HF_", "HUGGINGFACE_", "GUIDES_", "RAY_", "COV_CORE_")


def user_environment(**extra: str) -> dict[str, str]:
    """This process's environment without what the tests set (see ``DROPPED_*``), plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in DROPPED_VARIABLES and not key.startswith(DROPPED_PREFIXES)
    }
    env.update(extra)
    return env


@dataclass(frozen=True)
class ProcessResult:
    """What a subprocess run of ``guides`` gave."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (f"$ {' '.join(self.args)}\nexit code {self.returncode}\n--- stdout (end)\n{self.stdout[-3000:]}"
                f"\n--- stderr (end)\n{self.stderr[-3000:]}")

    def lines_naming(self, text: str) -> list[str]:
        """The lines of stderr that contain ``text``."""
        return [line for line in self.stderr.splitlines() if text in line]
