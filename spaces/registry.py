"""A registry by name: one per extension point (student family, pruning method, importance, quantization scheme).

Light on purpose (no torch, no ONNX Runtime): the schema asks a registry which names are allowed, so an experiment
file validates before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from evaluators.errors import ConfigError, not_allowed

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by their `name`, in the order they were registered (the order error messages list them in)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, entry: T) -> T:
        """Add an entry under its `name`; returns it, so it also works as a class decorator."""
        name = getattr(entry, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.what} needs a non-empty string `name`, got {name!r} on {entry!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.what} named {name!r} is already registered; choose another name")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (a test that registered one cleans up after itself)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry of that name; an unknown name is a ConfigError naming the registered ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"{self.what}: {not_allowed(name, self._entries)}") from None

    def check(self, name: object) -> str:
        """The name itself if registered, else ValueError with the allowed names (for schema validators)."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(not_allowed(name, self._entries))
        return name

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)
