"""A registry by name: one per extension point (student family, pruning method, importance, quantization scheme,
target, sampler, pick policy).

Light on purpose (no torch, no ONNX Runtime): the schema asks a registry which names are allowed, so an experiment
file validates before anything heavy loads. It lives in the lowest package so that every layer's registry is this one.

Entries from outside this repository register when their module is imported. Modules named in the environment
variable SLIMSWEEP_EXTENSIONS (comma-separated) or declared under the `slimsweep.extensions` entry-point group of an
installed package are imported before the first lookup, in the driver and in every Ray worker alike; a command that
reads no experiment file (`bench`, `compare`, `agent`) imports none (skip_extensions).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from importlib.metadata import EntryPoint, distributions
from pathlib import Path
from typing import Generic, TypeVar

from evaluators.errors import ConfigError, not_allowed

T = TypeVar("T")

EXTENSIONS_VARIABLE = "SLIMSWEEP_EXTENSIONS"
EXTENSIONS_GROUP = "slimsweep.extensions"
# The folder a sweep was launched from, when a plugin task's module lives there (search/raystart.py makes it
# importable in Ray workers): a place for the plugin's module, never for installed packages' entry points.
LAUNCH_FOLDER_VARIABLE = "SLIMSWEEP_LAUNCH_FOLDER"

_state = "pending"  # pending -> loading -> loaded, or skipped (only the built-in entries in this process)
_failure: str | None = None  # why an extension failed to load: every later lookup says it again


class ExtensionError(ConfigError):
    """An extension failed to import or register: named, with what it raised, in one line."""


def load_extensions() -> None:
    """Import the extension modules and entry points (once per process); their import registers their entries. One
    that fails is an ExtensionError naming it, raised again at every later lookup (a registry without it would
    answer 'unknown name' for its entries instead)."""
    global _state, _failure
    if _failure is not None:
        raise ExtensionError(_failure)
    if _state in {"loading", "loaded"}:
        return
    _state = "loading"  # first: an extension's own lookups during its import must not recurse
    try:
        for name in [n.strip() for n in os.environ.get(EXTENSIONS_VARIABLE, "").split(",") if n.strip()]:
            _import_module(name)
        for point in installed_entry_points():
            _load_point(point)
    except ExtensionError as exc:
        _failure = str(exc)
        raise
    finally:
        _state = "loaded"


def skip_extensions() -> None:
    """Use only the built-in entries in this process (a command that reads no experiment file): lookups import no
    extension. An explicit load_extensions() still loads them."""
    global _state
    if _state == "pending":
        _state = "skipped"


def _loaded_for_lookup() -> None:
    if _state == "pending" or _failure is not None:
        load_extensions()


def installed_entry_points() -> list[EntryPoint]:
    """The `slimsweep.extensions` entry points of installed packages: distributions found on sys.path, except in the
    current folder and the launch folder, where a stray `*.dist-info` is not a package anyone installed."""
    launch = {_real(p) for p in (_current_folder(), os.environ.get(LAUNCH_FOLDER_VARIABLE, "")) if p}
    path = [p for p in sys.path if _real(p or os.curdir) not in launch]
    seen: set[str] = set()
    points: list[EntryPoint] = []
    for dist in distributions(path=path):
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name in seen:  # the first on the path wins, as importlib.metadata.entry_points() has it
            continue
        seen.add(name)
        points.extend(point for point in dist.entry_points if point.group == EXTENSIONS_GROUP)
    return points


def _current_folder() -> str:
    try:
        return os.getcwd()
    except OSError:  # the folder was deleted under the process: nothing there to leave out
        return ""


def _real(path: str) -> str:
    return os.path.realpath(path) if path else ""


def _import_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - the extension's own code: named and told in one line, never a traceback
        missing = getattr(exc, "name", None)  # a ModuleNotFoundError for the module itself (or its package)
        if isinstance(exc, ModuleNotFoundError) and missing and (name + ".").startswith(missing + "."):
            raise ExtensionError(
                f"{EXTENSIONS_VARIABLE}: cannot import extension module {name!r}: {exc}; "
                f"put its folder on PYTHONPATH or remove it from {EXTENSIONS_VARIABLE}"
            ) from None
        raise ExtensionError(
            f"{EXTENSIONS_VARIABLE}: extension module {name!r} failed to import: {_said(exc)}; "
            f"fix it or remove it from {EXTENSIONS_VARIABLE}"
        ) from None


def _load_point(point: EntryPoint) -> None:
    package = point.dist.name if point.dist is not None else "?"
    try:
        point.load()
    except Exception as exc:  # noqa: BLE001 - as above
        raise ExtensionError(
            f"extension {point.name!r} ({point.value}, entry point {EXTENSIONS_GROUP} of the installed package "
            f"{package!r}) failed to load: {_said(exc)}; fix it or uninstall {package}"
        ) from None


def _said(exc: BaseException) -> str:
    """What an exception says, in one line, with the extension's line that raised it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    machinery = (os.path.dirname(importlib.__file__), __file__)  # the import's own frames, not the extension's
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(("<", *machinery))]
    where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {lines[0] if lines else '(no message)'}{where}"


class Registry(Generic[T]):
    """Entries by their `name`, in the order they were registered (the order error messages list them in)."""

    def __init__(self, what: str, key: str = "name") -> None:
        self.what, self.key = what, key  # key: the class attribute an entry is registered under
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add an entry under its `name`; returns it, so it also works as a class decorator."""
        name = getattr(entry, self.key, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.what} needs a non-empty string `{self.key}`, got {name!r} on {entry!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.what} named {name!r} is already registered; choose another name")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a test that registered one cleans up after itself)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry of that name; an unknown name is a ConfigError naming the registered ones."""
        _loaded_for_lookup()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.what}: {not_allowed(name, self._entries)}") from None

    def check(self, name: object) -> str:
        """The name itself if registered, else ValueError with the allowed names (for schema validators)."""
        _loaded_for_lookup()
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(not_allowed(name, self._entries))
        return name

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        _loaded_for_lookup()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        _loaded_for_lookup()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        _loaded_for_lookup()
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
