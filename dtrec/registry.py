"""A table of named entries kept in registration order: the data readers' and the baselines' registries."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; `what` names an entry in errors, `unknown(name, known names)` is the sentence for a miss."""

    def __init__(self, what: str, unknown: Callable[[str, list[str]], str]) -> None:
        self.what = what
        self._unknown = unknown
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name` (ValueError when the name is taken)."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Forget `name` (a no-op when absent): for entries registered for a while, as tests do."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered as `name`; ValueError naming the known ones otherwise."""
        if name not in self._entries:
            raise ValueError(self._unknown(name, list(self._entries)))
        return self._entries[name]

    def entries(self) -> list[T]:
        """Every entry, in registration order."""
        return list(self._entries.values())
