"""The annotators of an export: how to build each one, with which options (``--set NAME.OPTION=VALUE``
parsed with the options' own metadata, ``guides.options``), and what the dataset card says about it.

Shared by the export (``guides.dataset.export``), its engines and the dataset card (``guides.dataset.card``),
so that neither of those two imports the other.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..engines import Stage
from ..errors import UsageError
from ..options import OptionInfo, option_infos


@dataclasses.dataclass(frozen=True)
class AnnotatorEntry:
    """One annotator of an export: how to build it, and the settings the card and the resume check use.

    ``annotator`` and ``options``: the registered class and the options it is built with (None for a stage
    handed to the export directly); the card reads the class's declarations (summary, checkpoints,
    ControlNets)."""

    name: str
    load: Callable[[], Stage]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    annotator: type | None = None
    options: Any = None
    sidecar: str | None = None
    """The column of the annotator's sidecar document (``openpose_keypoints``); None: it makes none."""


def registry_entries(
    names: Sequence[str],
    shared: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> list[AnnotatorEntry]:
    """Entries for registered annotators, with their resizing switched off (the export resizes once).

    ``shared`` options (device, precision, batch_size, models_dir, ...) apply to every annotator that has
    them; ``overrides`` are ``"annotator.field=value"`` strings for one annotator's own options
    (``"canny.low=50"``), read as the option's declared type and checked by its declaration.
    """
    from ..registry import get

    specs = [get(name) for name in dict.fromkeys(names)]
    per_annotator: dict[str, dict[str, str]] = {spec.name: {} for spec in specs}
    for text in overrides:
        annotator, field, value = _split_override(text)
        if annotator not in per_annotator:
            raise UsageError(f"--set {text}: {annotator!r} is not one of the exported annotators ({', '.join(per_annotator)})")
        per_annotator[annotator][field] = value
    entries = []
    for spec in specs:
        cls = spec.annotator_class()
        infos = {info.name: info for info in option_infos(cls.Options)}
        values = {key: value for key, value in (shared or {}).items() if value is not None and key in infos}
        for field, raw in per_annotator[spec.name].items():
            if field not in infos:
                known = ", ".join(sorted(name for name in infos if name != "resolution"))
                raise UsageError(f"--set {spec.name}.{field}: unknown option; known: {known}")
            if field == "resolution":
                raise UsageError(f"--set {spec.name}.resolution: the export resizes every photo once; use --resolution")
            values[field] = parse_override(infos[field], raw, f"{spec.name}.{field}")
        values["resolution"] = 0
        options = spec.options(**values)
        sidecar = None if cls.sidecar is None else f"{spec.name}_{cls.sidecar.name}"
        entries.append(AnnotatorEntry(spec.name, functools.partial(_build_annotator, cls, options),
                                      dataclasses.asdict(options), annotator=cls, options=options, sidecar=sidecar))
    return entries


def _build_annotator(cls: type, options: Any) -> Stage:
    """The annotator; one that makes a sidecar document makes it too (``guides.engines.sidecars``)."""
    annotator = cls(options)
    if cls.sidecar is None:
        return annotator
    from ..engines.sidecars import with_sidecar

    return with_sidecar(annotator)


def _split_override(text: str) -> tuple[str, str, str]:
    name, sep, value = text.partition("=")
    annotator, dot, field = name.strip().partition(".")
    if not sep or not dot or not annotator or not field:
        raise UsageError(f"--set {text!r}: expected ANNOTATOR.OPTION=VALUE, e.g. canny.low=50")
    return annotator, field.replace("-", "_"), value.strip()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_override(info: OptionInfo, raw: str, label: str) -> Any:
    """The value of ``--set LABEL=RAW`` for option ``info``: read as its declared type (``bool``, ``int``,
    ``float``, text; JSON for a ``tuple[X, ...]``; the text itself where the option's ``parse`` reads it),
    then checked by the declaration, so a bad value is the options' own one-line message."""
    value = _read(info, raw, label)
    try:
        info.check(value)  # the options check it again when built; this names the --set that failed
    except UsageError as error:
        raise UsageError(f"--set {label}={raw}: {error}") from None
    return value


def _read(info: OptionInfo, raw: str, label: str) -> Any:
    if (info.optional or info.default is None) and raw.lower() in ("none", ""):
        return None
    if info.multiple or (info.kind is object and raw[:1] in ("[", "{")):
        try:
            value = _tuples(json.loads(raw))
        except ValueError:
            raise UsageError(f"--set {label}={raw}: expected JSON, e.g. [[120, 80], [200, 150]]") from None
        if info.multiple and not isinstance(value, tuple):
            value = (value,)
        return value
    if info.parse is not None or info.kind in (str, object):
        return raw
    try:
        if info.kind is bool:
            lowered = raw.lower()
            if lowered in _TRUE + _FALSE:
                return lowered in _TRUE
            raise ValueError(raw)
        return info.kind(raw)
    except ValueError:
        raise UsageError(f"--set {label}={raw}: expected a {info.kind.__name__}") from None


def _tuples(value: Any) -> Any:
    """JSON lists as (nested) tuples, the way frozen option dataclasses hold sequences."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


__all__ = ["AnnotatorEntry", "parse_override", "registry_entries"]
