"""Click options derived from an annotator's ``Options`` dataclass (``guides.options``): the one place the
command line learns an option's flag, type, default, choices, range and help.

Rules: a field ``some_name`` becomes ``--some-name`` (metadata ``flag`` overrides); ``bool`` becomes a
flag (``--name`` when the command line's default is False, ``--name/--no-name`` when it is True);
``tuple[X, ...]`` is repeatable; ``choices`` become a ``click.Choice``; ``min``/``max`` a range; a field
with ``parse`` takes text that ``parse`` turns into the value (click reports a bad one against its flag).
The values click hands over are checked again when the options are built: the Python API and the command
line refuse the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from ..options import OptionInfo, option_infos

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class ParsedType(click.ParamType):
    """A command-line value turned into an option's value by its ``parse`` function."""

    def __init__(self, parse: Callable[[Any], Any], metavar: str | None) -> None:
        self.parse = parse
        self.name = metavar or "TEXT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except (ValueError, TypeError) as error:
            self.fail(str(error), param, ctx)


def click_type(info: OptionInfo) -> click.ParamType | None:
    """The click type of one option (None for flags)."""
    if info.parse is not None:
        return ParsedType(info.parse, info.metavar)
    if info.choices is not None:
        return click.Choice([str(choice) for choice in info.choices])
    if info.path is not None:
        return click.Path(file_okay=info.path == "file", dir_okay=info.path == "dir", path_type=str)
    if info.kind is int:
        return click.IntRange(_bound(info.min), _bound(info.max)) if (info.min, info.max) != (None, None) else click.INT
    if info.kind is float:
        if (info.min, info.max) != (None, None):
            return click.FloatRange(info.min, info.max)
        return click.FLOAT
    return click.STRING


def _bound(value: float | None) -> int | None:
    return None if value is None else int(value)


def click_option(info: OptionInfo) -> Decorator:
    """The click option of one ``OptionInfo``."""
    help_text = info.help
    if info.default_text is not None:
        help_text = f"{help_text} [default: {info.default_text}]"
    if info.kind is bool and not info.multiple and info.parse is None:
        flag = info.flag if not info.cli_default else f"{info.flag}/--no-{info.flag[2:]}"
        return click.option(flag, info.name, is_flag=True, default=bool(info.cli_default), show_default=bool(info.cli_default),
                            help=help_text)
    default = info.cli_default
    if info.multiple:
        return click.option(info.flag, info.name, type=click_type(info), multiple=True, default=tuple(default or ()),
                            help=help_text, metavar=info.metavar)
    show_default = default is not None and info.default_text is None
    return click.option(info.flag, info.name, type=click_type(info), default=default, show_default=show_default,
                        envvar=info.envvar, help=help_text, metavar=info.metavar)


def click_options(options_type: type, names: Iterable[str] | None = None) -> list[Decorator]:
    """Click options for the command-line fields of ``options_type`` (only ``names`` when given), in
    declaration order."""
    wanted = None if names is None else set(names)
    return [click_option(info) for info in option_infos(options_type)
            if info.cli and (wanted is None or info.name in wanted)]


def apply(function: Callable[..., Any], decorators: Iterable[Decorator]) -> Callable[..., Any]:
    """``function`` with ``decorators`` applied so their options show in the order given."""
    for decorator in reversed(list(decorators)):
        function = decorator(function)
    return function
