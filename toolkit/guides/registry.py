"""Name -> annotator. The CLI, the batch engines, the Python API and the ControlNet stage all go through here.

Two sources, read without importing any annotator module:

* the built-in annotators, one line each in ``BUILT_IN`` (``name: "package.module:ClassName"``);
* third-party plugins: the entry points of group ``guides.annotators`` of the installed distributions
  (``name = "package.module:ClassName"`` in their ``entry_points.txt``).

A module is imported when its annotator is used (``AnnotatorSpec.annotator_class``), so ``guides --help``
imports no plugin and no torch. A plugin whose name clashes with a built-in annotator (or with an earlier
plugin) gets one warning line naming its package and is left out; one that fails to import, or whose class
breaks the contract (``guides.annotators.base``), is a ``PluginError`` naming its package when it is used,
and a warning line (then skipped) where all annotators are listed (``loadable_classes``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .annotators.base import Annotator, AnnotatorOptions
from .errors import UsageError
from .options import option_infos, options_from

log = logging.getLogger(__name__)

#: The entry-point group plugins register their annotators under.
ENTRY_POINT_GROUP = "guides.annotators"

#: The built-in annotators, in the order of ``guides --help``: one line each.
BUILT_IN: Mapping[str, str] = MappingProxyType({
    "canny": "guides.annotators.canny:CannyAnnotator",
    "depth": "guides.annotators.depth:DepthAnnotator",
    "lineart": "guides.annotators.lineart:LineartAnnotator",
    "normals": "guides.annotators.normals:NormalsAnnotator",
    "sam": "guides.annotators.sam:SamAnnotator",
    "mask": "guides.annotators.mask:MaskAnnotator",
    "hed": "guides.annotators.hed:HedAnnotator",
    "pidinet": "guides.annotators.pidinet:PidinetAnnotator",
    "teed": "guides.annotators.teed:TeedAnnotator",
    "anyline": "guides.annotators.anyline:AnylineAnnotator",
    "mlsd": "guides.annotators.mlsd:MlsdAnnotator",
    "lineart-anime": "guides.annotators.lineart_anime:LineartAnimeAnnotator",
    "lineart-standard": "guides.annotators.lineart_standard:LineartStandardAnnotator",
    "openpose": "guides.annotators.openpose:OpenposeAnnotator",
    "depth-anything": "guides.annotators.depth_anything:DepthAnythingAnnotator",
    "blur": "guides.annotators.blur:BlurAnnotator",
    "tile": "guides.annotators.tile:TileAnnotator",
    "gray": "guides.annotators.gray:GrayAnnotator",
    "low-quality": "guides.annotators.low_quality:LowQualityAnnotator",
    "shuffle": "guides.annotators.shuffle:ShuffleAnnotator",
    "color": "guides.annotators.color:ColorAnnotator",
    "binary": "guides.annotators.binary:BinaryAnnotator",
})


class PluginError(UsageError):
    """A plugin annotator that cannot be used (import failure, broken contract): one line naming its package."""


@dataclasses.dataclass(frozen=True)
class AnnotatorSpec:
    """What the registry knows about an annotator without importing it."""

    name: str
    target: str
    """``"package.module:ClassName"`` of the ``Annotator`` subclass."""
    package: str | None = None
    """The distribution of a plugin (``None``: built in)."""
    package_summary: str = ""
    """The plugin distribution's one-line summary (its metadata), shown by ``guides --help`` without importing it."""

    @property
    def builtin(self) -> bool:
        return self.package is None

    @property
    def origin(self) -> str:
        """``built in`` or ``plugin from package NAME`` (for messages)."""
        return "built in" if self.package is None else f"plugin from package {self.package}"

    def annotator_class(self) -> type[Annotator]:
        """The annotator class, imported now and checked against the contract (``check_annotator_class``)."""
        return _load_class(self.name, self.target, self.package)

    @property
    def summary(self) -> str:
        """The class's one-line summary (imports the module)."""
        return self.annotator_class().summary

    def help_summary(self) -> str:
        """The row of ``guides --help``, without importing any annotator module: a built-in's ``summary`` as
        written in its module's source (``declared_summary``), a plugin's from its package metadata."""
        if self.builtin:
            return declared_summary(self.target) or self.summary
        text = self.package_summary or "third-party annotator"
        return f"{text} [plugin: {self.package}]"

    def options(self, **values: Any) -> AnnotatorOptions:
        """Build this annotator's options, refusing unknown names and bad values with a clear message."""
        return options_from(self.annotator_class().Options, values, self.name)

    def load(self, **values: Any) -> Annotator:
        """Build (and load the model of) this annotator, ready to be called on many images."""
        return self.annotator_class()(self.options(**values))


@functools.lru_cache(maxsize=None)
def declared_summary(target: str) -> str | None:
    """The ``summary = "..."`` string literal of class ``target`` (``"package.module:ClassName"``) read from its
    module's source, without importing the module (and its OpenCV, NumPy...): what keeps ``guides --help``
    fast. None when the module's source cannot be read or the summary is not a plain literal there (the
    caller then imports the class)."""
    module_name, _, class_name = target.partition(":")
    try:
        spec = importlib.util.find_spec(module_name)
        source = Path(spec.origin).read_text(encoding="utf-8") if spec is not None and spec.origin else None
    except (ImportError, OSError, ValueError):
        return None
    if source is None:
        return None
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for statement in node.body:
                targets = (statement.targets if isinstance(statement, ast.Assign)
                           else [statement.target] if isinstance(statement, ast.AnnAssign) else [])
                value = getattr(statement, "value", None)
                if (any(isinstance(t, ast.Name) and t.id == "summary" for t in targets)
                        and isinstance(value, ast.Constant) and isinstance(value.value, str)):
                    return value.value
    return None


def _load_class(name: str, target: str, package: str | None) -> type[Annotator]:
    loaded = _import_class(name, target, package)
    if isinstance(loaded, PluginError):
        raise loaded
    return loaded


@functools.lru_cache(maxsize=None)
def _import_class(name: str, target: str, package: str | None) -> type[Annotator] | PluginError:
    """The class, or the PluginError of a plugin that cannot be used (kept, so it is reported once)."""
    try:
        return _import_checked(name, target, package)
    except PluginError as error:
        return error


def _import_checked(name: str, target: str, package: str | None) -> type[Annotator]:
    module_name, _, class_name = target.partition(":")
    if package is None:
        cls = getattr(importlib.import_module(module_name), class_name)
        check_annotator_class(cls, name)
        return cls
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as error:  # noqa: BLE001 - any failure of third-party code is that plugin's failure
        raise PluginError(f"annotator {name!r} (plugin from package {package}) cannot be imported from {target}: "
                          f"{type(error).__name__}: {_first_line(error)}") from None
    try:
        check_annotator_class(cls, name)
    except TypeError as error:
        raise PluginError(f"annotator {name!r} (plugin from package {package}): {error}") from None
    return cls


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_annotator_class(cls: Any, name: str) -> None:
    """A TypeError naming what ``cls`` lacks to be annotator ``name`` (see ``guides.annotators.base``)."""
    if not (isinstance(cls, type) and issubclass(cls, Annotator)):
        raise TypeError(f"{cls!r} is not a subclass of guides.Annotator")
    declared = getattr(cls, "name", None)
    if declared != name:
        raise TypeError(f"{cls.__qualname__}.name is {declared!r}, registered as {name!r}")
    summary = getattr(cls, "summary", None)
    if not (isinstance(summary, str) and summary.strip() and "\n" not in summary.strip()):
        raise TypeError(f"{cls.__qualname__}.summary must be one line of text")
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, AnnotatorOptions) and dataclasses.is_dataclass(options)):
        raise TypeError(f"{cls.__qualname__}.Options must be a dataclass subclassing guides.AnnotatorOptions")
    option_infos(options)  # every option expressible on the command line (TypeError otherwise)
    if not cls.implements_annotate():
        raise TypeError(f"{cls.__qualname__} implements neither annotate(image) nor prepare/predict/finish")
    if getattr(cls, "sidecar", None) is not None and not (
            cls.is_staged() and cls.finish_with_sidecar is not Annotator.finish_with_sidecar):
        raise TypeError(f"{cls.__qualname__} declares a sidecar: it must implement prepare/predict/finish "
                        "and finish_with_sidecar")


@functools.lru_cache(maxsize=1)
def load_registry() -> Mapping[str, AnnotatorSpec]:
    """Every annotator: the built-ins, then the plugins found in the installed distributions' entry points.

    Read once per process (the installed distributions do not change under a running command); a plugin
    that clashes with a name already taken gets one warning line and is left out.
    """
    entries = {name: AnnotatorSpec(name, target) for name, target in BUILT_IN.items()}
    for entry in _plugin_entries():
        taken = entries.get(entry.name)
        if taken is not None:
            log.warning("annotator %r of package %s is skipped: the name is taken (%s)", entry.name, entry.package,
                        taken.origin)
            continue
        entries[entry.name] = entry
    return MappingProxyType(entries)


def _plugin_entries() -> Iterator[AnnotatorSpec]:
    if not _may_declare_plugins():
        return
    from importlib.metadata import entry_points

    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name):
        distribution = getattr(point, "dist", None)
        package = distribution.metadata["Name"] if distribution is not None else "unknown package"
        summary = (distribution.metadata.get("Summary") or "") if distribution is not None else ""
        if ":" not in point.value:
            log.warning("annotator %r of package %s is skipped: entry point %r is not \"module:ClassName\"",
                        point.name, package, point.value)
            continue
        yield AnnotatorSpec(point.name, point.value, package=package, package_summary=summary.strip())


def _may_declare_plugins() -> bool:
    """False only when no installed distribution can declare a plugin: no ``entry_points.txt`` of a
    ``*.dist-info`` or ``*.egg-info`` folder on ``sys.path`` mentions the group, no ``sys.path`` entry is an
    archive, and no import hook other than the standard path finder could list distributions.

    A cheap pre-check (a few milliseconds) before ``importlib.metadata``, whose import and full scan cost
    about 35 ms of every command's start-up; when in doubt it says True and the full scan runs.
    """
    import sys
    from importlib.machinery import PathFinder

    if any(finder is not PathFinder and hasattr(finder, "find_distributions") for finder in sys.meta_path):
        return True
    marker = ENTRY_POINT_GROUP.encode()
    for entry in sys.path:
        folder = Path(entry or ".")
        if not folder.is_dir():
            if folder.exists():  # an archive (zip, egg): only importlib.metadata reads its metadata
                return True
            continue
        for pattern in ("*.dist-info/entry_points.txt", "*.egg-info/entry_points.txt"):
            for declared in folder.glob(pattern):
                try:
                    if marker in declared.read_bytes():
                        return True
                except OSError:
                    return True
    return False


class _Registry(Mapping[str, AnnotatorSpec]):
    """``load_registry()`` as a read-only mapping, read when first used."""

    def __getitem__(self, name: str) -> AnnotatorSpec:
        return load_registry()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(load_registry())

    def __len__(self) -> int:
        return len(load_registry())

    def __repr__(self) -> str:
        return f"REGISTRY({list(self)})"


#: Name -> ``AnnotatorSpec`` of every annotator (built-ins, then plugins), in help order.
REGISTRY: Mapping[str, AnnotatorSpec] = _Registry()


def available() -> list[str]:
    """Names of every registered annotator, in registry order."""
    return list(REGISTRY)


def get(name: str) -> AnnotatorSpec:
    """The spec of annotator ``name``; a ``UsageError`` naming the known ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown annotator {name!r}; available: {', '.join(REGISTRY)}") from None


def loadable_classes(registry: Mapping[str, AnnotatorSpec] = REGISTRY) -> Iterator[type[Annotator]]:
    """The classes of every annotator in ``registry``; a plugin that cannot be used gets one warning line
    naming its package and is skipped (where all annotators are listed: ``guides models``, the docs)."""
    for spec in registry.values():
        try:
            yield spec.annotator_class()
        except PluginError as error:
            _warn_once(f"{error}; skipped")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning("%s", message)
