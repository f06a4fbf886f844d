"""The one registry helper: names to things, with the lookup, the ``--help`` listing and the ``error:`` line for an
unknown name (timm's ``create_model`` pattern). Every registry of the toolkit (granularities, pruners, init
strategies, within-unit selectors, allocation rules, boundary estimators, models, data sets) is a ``Registry``."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from utils.core.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """An ordered ``name -> T`` table; ``kind`` names what it holds in messages (e.g. ``"pruner"``); ``aliases``
    map other spellings to registered names (e.g. the original repository's model names)."""

    def __init__(self, kind: str, entries: dict[str, T] | None = None, aliases: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = dict(entries or {})
        self._aliases = dict(aliases or {})

    def add(self, name: str, value: T) -> T:
        """Register ``value`` under ``name`` (a second entry of one name is a programming error)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = value
        return value

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``."""
        return lambda value: self.add(name, value)

    def canonical(self, name: str, flag: str | None = None) -> str:
        """The registered name of ``name`` (an alias resolved); an unknown name is a ``UsageError`` that lists the
        valid ones (``flag``: the command-line flag that gave it, named in the message)."""
        canonical = self._aliases.get(name, name)
        if canonical not in self._entries:
            given = f"{flag} {name}" if flag else f"'{name}'"
            raise UsageError(f"unknown {self.kind} {given}; choose one of: {', '.join(self._entries)}")
        return canonical

    def get(self, name: str, flag: str | None = None) -> T:
        """The entry called ``name`` (or an alias of it); an unknown name is a ``UsageError`` (see ``canonical``)."""
        return self._entries[self.canonical(name, flag)]

    def __getitem__(self, name: str) -> T:
        """``registry[name]``: the same as ``get(name)``."""
        return self.get(name)

    def names(self) -> list[str]:
        """Registered names, in registration order (``choices=`` of a flag)."""
        return list(self._entries)

    def help(self, sep: str = " | ") -> str:
        """The names joined for a ``--help`` text."""
        return sep.join(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
