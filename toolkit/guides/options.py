"""Annotator options declared once, as data: a dataclass field per option, its help, choices and range in
the field's metadata.

An annotator's ``Options`` dataclass is the one place its options are described. Validation runs once,
when the options are built (``AnnotatorOptions.__post_init__`` calls ``check_options``), so the Python API,
the CLI, ``guides run`` and ``guides dataset --set`` refuse the same values with the same message; the CLI
(``guides.cli.options``) derives each command's click options from the same fields. This module imports
neither click nor torch.

    @dataclasses.dataclass(frozen=True)
    class CannyOptions(AnnotatorOptions):
        low: int = option(100, "Lower hysteresis threshold.", min=0, max=10_000)

A plain ``dataclasses.field(default=..., metadata={"help": ...})`` works too (what plugins may write): the
type comes from the annotation (``bool``, ``int``, ``float``, ``str``, ``X | None``, ``tuple[X, ...]``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .errors import UsageError

#: Metadata keys ``option`` writes and ``OptionInfo`` reads; anything else in a field's metadata is refused.
METADATA_KEYS = frozenset({
    "help", "choices", "min", "max", "label", "flag", "parse", "metavar", "envvar", "cli", "cli_default",
    "default_text", "path",
})

_SCALARS = (bool, int, float, str)


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    label: str | None = None,
    flag: str | None = None,
    parse: Callable[[Any], Any] | None = None,
    metavar: str | None = None,
    envvar: str | None = None,
    cli: bool = True,
    cli_default: Any = dataclasses.MISSING,
    default_text: str | None = None,
    path: str | None = None,
) -> Any:
    """A dataclass field for one option.

    ``help``: the option's help text. ``choices``/``min``/``max``: the values allowed (checked on build).
    ``label``: the name in error messages (default: the field name). ``flag``: the CLI flag (default:
    ``--field-name``). ``parse``: turns a text (or any accepted form) into the value; for a ``tuple[X, ...]``
    field it is applied to each element, and a ``ValueError``/``TypeError`` is a UsageError. ``metavar``,
    ``envvar``, ``default_text`` and ``path`` (``"file"`` or ``"dir"``) shape the CLI option; ``cli=False``
    keeps the option off the command line; ``cli_default`` is the command line's default where it differs
    from the Python API's.
    """
    metadata: dict[str, Any] = {"help": help}
    for key, value in (("choices", None if choices is None else tuple(choices)), ("min", min), ("max", max),
                       ("label", label), ("flag", flag), ("parse", parse), ("metavar", metavar), ("envvar", envvar),
                       ("default_text", default_text), ("path", path)):
        if value is not None:
            metadata[key] = value
    if not cli:
        metadata["cli"] = False
    if cli_default is not dataclasses.MISSING:
        metadata["cli_default"] = cli_default
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as the CLI, the docs and validation see it (derived from a dataclass field)."""

    name: str
    kind: type
    """``bool``, ``int``, ``float`` or ``str`` (the element type of a ``tuple[X, ...]`` field); ``object`` when
    only ``parse`` knows the type."""
    default: Any
    help: str
    optional: bool = False
    """``X | None``: None is allowed."""
    multiple: bool = False
    """``tuple[X, ...]``: repeatable on the command line."""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    label: str = ""
    flag: str = ""
    parse: Callable[[Any], Any] | None = None
    metavar: str | None = None
    envvar: str | None = None
    cli: bool = True
    cli_default: Any = None
    default_text: str | None = None
    path: str | None = None

    def check(self, value: Any) -> Any:
        """``value`` checked (and parsed, with ``parse``); a UsageError with the message users see."""
        if value is None:
            if self.optional or self.default is None:
                return None
            raise UsageError(f"{self.label} must be given (None is not allowed)")
        if self.multiple:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                value = (value,)
            return tuple(self._check_one(element) for element in value)
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        if self.parse is not None:
            try:
                value = self.parse(value)
            except (ValueError, TypeError) as error:
                raise UsageError(f"{self.label}: {error}") from None
        elif self.kind is bool:
            if not isinstance(value, (bool, _numpy_bool())):
                raise UsageError(f"{self.label} must be true or false, got {value!r}")
            value = bool(value)
        elif self.kind is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise UsageError(f"{self.label} must be a whole number, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise UsageError(f"{self.label} must be a finite number, got {value!r}")
            value = float(value)
        elif self.kind is str and not isinstance(value, str):
            raise UsageError(f"{self.label} must be a text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"unknown {self.label} {value!r}; use one of {', '.join(map(str, self.choices))}")
        if self.min is not None and self.max is not None and not self.min <= value <= self.max:
            raise UsageError(f"{self.label} must be between {self.min:g} and {self.max:g}, got {value!r}")
        if self.min is not None and value < self.min:
            raise UsageError(f"{self.label} must be {self.min:g} or more, got {value!r}")
        if self.max is not None and value > self.max:
            raise UsageError(f"{self.label} must be {self.max:g} or less, got {value!r}")
        return value


def _numpy_bool() -> type:
    import numpy as np

    return np.bool_


def option_infos(options_type: type) -> tuple[OptionInfo, ...]:
    """Every field of the dataclass ``options_type`` as an ``OptionInfo``, in declaration order.

    A TypeError names a field the CLI cannot express (no default, an unsupported type without ``parse``,
    unknown metadata keys): a declaration error, found when the annotator is registered or used.
    """
    if not dataclasses.is_dataclass(options_type):
        raise TypeError(f"{options_type.__qualname__} is not a dataclass")
    try:
        hints = typing.get_type_hints(options_type)
    except Exception as error:  # noqa: BLE001 - an unresolvable annotation is the declaration's fault
        raise TypeError(f"{options_type.__qualname__}: cannot resolve the field types ({error})") from None
    infos = []
    for field in dataclasses.fields(options_type):
        if not field.init:
            continue
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeError(f"{options_type.__qualname__}.{field.name} has no default (every option needs one)")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        metadata = dict(field.metadata)
        unknown = sorted(set(metadata) - METADATA_KEYS)
        if unknown:
            raise TypeError(f"{options_type.__qualname__}.{field.name}: unknown option metadata {', '.join(unknown)}")
        kind, optional, multiple = _kind(hints[field.name])
        if kind is object and "parse" not in metadata:
            raise TypeError(f"{options_type.__qualname__}.{field.name}: type {hints[field.name]!r} needs a parse function")
        infos.append(OptionInfo(
            name=field.name, kind=kind, default=default, help=metadata.get("help", ""), optional=optional,
            multiple=multiple, choices=metadata.get("choices"), min=metadata.get("min"), max=metadata.get("max"),
            label=metadata.get("label", field.name), flag=metadata.get("flag", "--" + field.name.replace("_", "-")),
            parse=metadata.get("parse"), metavar=metadata.get("metavar"), envvar=metadata.get("envvar"),
            cli=metadata.get("cli", True), cli_default=metadata.get("cli_default", default),
            default_text=metadata.get("default_text"), path=metadata.get("path"),
        ))
    return tuple(infos)


def _kind(annotation: Any) -> tuple[type, bool, bool]:
    """(element type, optional, multiple) of a field annotation."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            return object, optional, False
        annotation = members[0]
        origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            element = args[0]
            return (element if element in _SCALARS else object), optional, True
        return object, optional, False
    if annotation in _SCALARS:
        return annotation, optional, False
    return object, optional, False


def check_options(options: Any) -> None:
    """Check (and normalise, with ``parse``) every field of a frozen options dataclass in place."""
    for info in option_infos(type(options)):
        value = info.check(getattr(options, info.name))
        object.__setattr__(options, info.name, value)


def options_from(options_type: type, values: dict[str, Any], owner: str) -> Any:
    """``options_type(**values)``, refusing unknown names with the message users see."""
    known = [info.name for info in option_infos(options_type)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"{owner}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return options_type(**values)
