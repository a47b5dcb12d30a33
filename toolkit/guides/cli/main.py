"""The ``guides`` command: a lazy click group, so ``guides --help`` imports no torch and no plugin.

Annotator commands (canny, lineart, ..., and installed plugins) are built from the registry when invoked;
``guides --help`` lists built-in annotators by their summary (their modules are light: no torch) and
plugins by their package's summary, without importing them. The other commands live in their own modules
under ``guides.cli`` and are imported only when invoked.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import GuidesError, InternalError
from ..registry import REGISTRY

#: Commands that are not single-image annotators: name -> ("module:attribute", one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("guides.cli.annotate:run", "Several annotators in one pass: OUT/<annotator>/<path>."),
    "composite": ("guides.cli.annotate:composite", "Inpainting target: keep the image where the mask is black."),
    "inpaint-target": ("guides.cli.inpaint:inpaint_target", "Subject mask and inpainting target in one step (SAM)."),
    "dataset": ("guides.cli.dataset:dataset", "Export photos + guides + captions as a ControlNet training set."),
    "models": ("guides.cli.models:models", "List, download, verify and locate checkpoints."),
    "generate": ("guides.cli.diffusion:generate", "Generate an image from guides with ControlNet (SD 1.5)."),
    "reproduce": ("guides.cli.diffusion:reproduce", "Reproduce the reference ControlNet images, with a report."),
    "compare": ("guides.cli.diffusion:compare", "PSNR and SSIM of two images."),
}


class GuidesGroup(click.Group):
    """Resolves subcommands lazily from the registry and ``EXTRA_COMMANDS``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(REGISTRY) + [name for name in EXTRA_COMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in REGISTRY:
            from .annotate import annotator_command

            return annotator_command(REGISTRY[cmd_name])  # a plugin that cannot load: PluginError, one line
        if cmd_name in EXTRA_COMMANDS and self._available(cmd_name):
            module_name, _, attribute = EXTRA_COMMANDS[cmd_name][0].partition(":")
            return getattr(importlib.import_module(module_name), attribute)
        return None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec.help_summary()) for name, spec in REGISTRY.items()]
        rows += [(name, EXTRA_COMMANDS[name][1]) for name in EXTRA_COMMANDS if self._available(name)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    @staticmethod
    def _available(name: str) -> bool:
        module_name = EXTRA_COMMANDS[name][0].partition(":")[0]
        return importlib.util.find_spec(module_name) is not None


@click.group(cls=GuidesGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="guides")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug with tracebacks).")
def cli(verbose: int) -> None:
    """Prepare ControlNet guide images: one photo, whole folders, or the full reproduction.

    \b
    Examples:
      guides canny photo.png                  # writes photo.canny.png beside it
      guides depth photos/ -o guides/depth    # a folder, mirrored under guides/depth
      guides run canny,lineart photos/ -o out # out/canny/..., out/lineart/...

    \b
    Exit codes: 0 done, 1 some files failed (one "failed:" line each), 2 usage error
    or missing model, 3 internal error (a bug: run with -vv and report it), 130 interrupted.
    """
    # ``-v`` is read by ``main`` before click resolves the command (so -vv covers resolution too).


#: Exit code of an internal error (a bug, not bad input), documented in ``guides --help``.
INTERNAL_ERROR_EXIT = 3


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: user errors become one line and an exit code, never a traceback.

    Logging is configured from ``-v`` before click resolves the command, so ``-vv`` shows the traceback of an
    internal error wherever it happens (command resolution and option parsing included).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        args = ["--help"]  # a bare ``guides`` is a request for help: print it on stdout, exit 0
    verbosity = _leading_verbosity(args)
    _configure_logging(verbosity)
    _quiet_opencv()
    _tune_allocator_if_asked()
    try:
        code = cli.main(args=args, prog_name="guides", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except click.exceptions.NoArgsIsHelpError as request:  # ``guides models``: a request for help, as bare ``guides``
        click.echo(request.format_message())
        sys.exit(0)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
    except GuidesError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # noqa: BLE001 - a bug: say so in one line, traceback with -vv
        if verbosity >= 2:
            traceback.print_exc(file=sys.stderr)
        if isinstance(error, InternalError):
            message = f"{error}"
        else:
            message = f"{type(error).__name__}: {error}"
        click.echo(f"internal error: {message} (a bug; run with -vv for the traceback)", err=True)
        sys.exit(INTERNAL_ERROR_EXIT)
    sys.exit(code if isinstance(code, int) else 0)


def _leading_verbosity(args: list[str]) -> int:
    """The ``-v`` count among the options before the command name (``guides -vv canny ...``)."""
    count = 0
    for arg in args:
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
        elif not arg.startswith("-"):
            break
    return count


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def _tune_allocator_if_asked() -> None:
    """``GUIDES_MALLOC_TUNING=1``: the process-wide glibc setting that speeds up SAM on the CPU (opt-in;
    see ``guides.system.tune_allocator``)."""
    from ..system import tune_allocator, tuning_requested

    if tuning_requested():
        tune_allocator()


def _quiet_opencv() -> None:
    """OpenCV's decoders print warnings for corrupt files; we report those files ourselves."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging module
        pass
