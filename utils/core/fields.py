"""Settings fields that carry their own flag: a settings dataclass states each setting once (its default, its
value type, its help and the original repository's spelling of its flag), and ``utils.cli.settings_flags`` builds
the command-line flags from it and the dataclass back from the parsed flags (open_lth's ``Hparams`` pattern).

    @dataclass(frozen=True)
    class ScoringSettings:
        ssim_threshold: float = setting(0.3, "units with SSIM <= this are searched", parse=finite_float)

A field without ``setting`` metadata has no flag (it is set in code, e.g. a nested settings object).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

FLAG_KEY = "flag"  # where a field's ``Flag`` sits in its metadata
REQUIRED = dataclasses.MISSING  # the default of a setting every stage states itself (e.g. finetune epochs)


@dataclass(frozen=True)
class Flag:
    """How one settings field appears on the command line.

    ``names``: its flag spellings, the first one canonical (default ``--{field}``); the parsed value sits under
    the canonical name without dashes. ``parse``: the value type (``utils.core.values``), None for a string or a
    switch. ``negated``: a True-by-default boolean switched off by the flag (``--no_skip`` sets ``skip`` False).
    ``switch``: a False-by-default boolean switched on by the flag (argparse ``store_true``). ``resumable``: the
    flag may change when a run is resumed (where and how fast it runs, how long: not what it computes)."""

    help: str
    names: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    choices: Iterable[str] | None = None  # listed when the flag is made: a registry's later entries count
    metavar: str | None = None
    nargs: str | None = None
    negated: bool = False
    switch: bool = False
    resumable: bool = False

    def spellings(self, field_name: str) -> tuple[str, ...]:
        """The flag's names, canonical first (``--{field_name}`` when none are given)."""
        return self.names or (f"--{field_name}",)

    def dest(self, field_name: str) -> str:
        """The attribute of the parsed namespace that holds the flag's value."""
        return self.spellings(field_name)[0].lstrip("-")


def setting(default: Any, help: str, *, names: Sequence[str] = (), parse: Callable[[str], Any] | None = None,
            choices: Iterable[str] | None = None, metavar: str | None = None, nargs: str | None = None,
            negated: bool = False, switch: bool = False, resumable: bool = False) -> Any:
    """A dataclass field with ``default`` (``REQUIRED``: none, the stage states it) whose flag is described by the
    other arguments (see ``Flag``)."""
    flag = Flag(help, tuple(names), parse, choices, metavar, nargs, negated,
                switch, resumable)
    if (negated or switch) and default is not (not switch):
        raise ValueError(f"a {'negated' if negated else 'switch'} flag needs the default {not switch}")
    if default is REQUIRED:
        return dataclasses.field(metadata={FLAG_KEY: flag})
    return dataclasses.field(default=default, metadata={FLAG_KEY: flag})


def flags_of(cls: type) -> dict[str, Flag]:
    """``{field name: Flag}`` of the fields of dataclass ``cls`` that have a flag, in field order."""
    return {f.name: f.metadata[FLAG_KEY] for f in dataclasses.fields(cls) if FLAG_KEY in f.metadata}


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls`` (``REQUIRED`` when it has none)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def help_of(cls: type, name: str) -> str:
    """The help sentence of field ``name``'s flag (for a stage that adds to it)."""
    return flags_of(cls)[name].help


def resumable_flags(*classes: type) -> set[str]:
    """The parsed names of the flags of ``classes`` that a resumed run may change (``Flag.resumable``)."""
    return {flag.dest(name) for cls in classes for name, flag in flags_of(cls).items() if flag.resumable}
