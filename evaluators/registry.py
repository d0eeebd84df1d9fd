"""A registry by name: one per extension point (student family, pruning method, importance, quantization scheme,
target, sampler, pick policy).

Light on purpose (no torch, no ONNX Runtime): the schema asks a registry which names are allowed, so an experiment
file validates before anything heavy loads. It lives in the lowest package so that every layer's registry is this one.

Entries from outside this repository register when their module is imported. Modules named in the environment
variable SLIMSWEEP_EXTENSIONS (comma-separated) or declared under the `slimsweep.extensions` entry-point group are
imported before the first lookup, in the driver and in every Ray worker alike.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from evaluators.errors import ConfigError, not_allowed

T = TypeVar("T")

EXTENSIONS_VARIABLE = "SLIMSWEEP_EXTENSIONS"
EXTENSIONS_GROUP = "slimsweep.extensions"
_extensions_loaded = False


def load_extensions() -> None:
    """Import the extension modules (once per process); their import registers their entries."""
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True  # first: an extension's own lookups during its import must not recurse
    names = [n.strip() for n in os.environ.get(EXTENSIONS_VARIABLE, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"{EXTENSIONS_VARIABLE}: cannot import extension module {name!r}: {exc}; "
                f"put its folder on PYTHONPATH or remove it from {EXTENSIONS_VARIABLE}"
            ) from exc
    for point in entry_points(group=EXTENSIONS_GROUP):
        point.load()


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
        load_extensions()
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.what}: {not_allowed(name, self._entries)}") from None

    def check(self, name: object) -> str:
        """The name itself if registered, else ValueError with the allowed names (for schema validators)."""
        load_extensions()
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(not_allowed(name, self._entries))
        return name

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        load_extensions()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        load_extensions()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        load_extensions()
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
