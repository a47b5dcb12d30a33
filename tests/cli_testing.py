"""Run ``guides`` in-process for tests (``from tests.cli_testing import invoke``), through the console-script entry point (``main``).

``main`` is what turns errors into one-line messages and exit codes, so tests call it rather than the
bare click group: ``invoke("canny", "photo.png").exit_code``.
"""

from __future__ import annotations

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
