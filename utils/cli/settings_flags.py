"""Flags made from settings dataclasses and settings made from parsed flags (the fields' ``setting`` metadata,
``utils.core.fields``): a setting's default, type, help and spellings are written once, in its dataclass.

    add_settings_args(group, ScoringSettings)                        # one flag per field with a flag
    add_settings_args(group, FinetuneSettings, defaults={"patience": 50})  # a stage's own default, stated here
    scoring = settings_from_args(ScoringSettings, args)

A stage that states its own default for a field passes it in ``defaults``; the flag's action records it
(``STAGE_DEFAULT``), so a test can tell a stated stage default from a drifted copy.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from utils.cli.types import flag_type
from utils.core.fields import REQUIRED, Flag, default_of, flags_of

S = TypeVar("S")

FIELD_OF = "settings_field"  # attribute set on each action made here: (dataclass, field name)
STAGE_DEFAULT = "stage_default"  # attribute set on an action whose default the stage states (``defaults``)


def add_settings_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                      defaults: Mapping[str, Any] | None = None, only: Collection[str] | None = None,
                      skip: Collection[str] = (), helps: Mapping[str, str] | None = None,
                      names: Mapping[str, tuple[str, ...]] | None = None,
                      choices: Mapping[str, Sequence[str]] | None = None, hidden: Collection[str] = (),
                      parses: Mapping[str, Callable[[str], Any]] | None = None) -> None:
    """Add the flag of every field of dataclass ``cls`` that has one (``only`` / ``skip``: a subset by field
    name). ``defaults``: the stage's own defaults (field name -> value; required for a ``REQUIRED`` field);
    ``helps``: help sentences of this stage; ``names``: this stage's spellings of a flag (the value still lands
    under the canonical name; --help shows the first spelling as its metavar); ``choices``: a narrower set of
    values at this stage; ``hidden``: fields whose flag is accepted but left out of --help; ``parses``: this
    stage's own value type of a flag (``utils.core.values``; e.g. a count that also takes 'all')."""
    defaults, helps, names, choices = dict(defaults or {}), dict(helps or {}), dict(names or {}), dict(choices or {})
    parses = dict(parses or {})
    unknown = (set(defaults) | set(helps) | set(names) | set(choices) | set(skip) | set(only or ())
               | set(hidden) | set(parses)) - set(flags_of(cls))
    if unknown:
        raise ValueError(f"{cls.__name__} has no flag for {sorted(unknown)}")
    for name, flag in flags_of(cls).items():
        if (only is not None and name not in only) or name in skip:
            continue
        default = defaults.get(name, default_of(cls, name))
        if default is REQUIRED:
            raise ValueError(f"{cls.__name__}.{name} has no default: the stage states it in defaults=")
        options = _argparse_options(flag, default) | ({"choices": list(choices[name])} if name in choices else {})
        if name in parses:
            options["type"] = flag_type(parses[name])
        if name in names and not (flag.switch or flag.negated):
            options.setdefault("metavar", names[name][0].lstrip("-").upper())
        text = argparse.SUPPRESS if name in hidden else helps.get(name, flag.help)
        action = parser.add_argument(*names.get(name, flag.spellings(name)), dest=flag.dest(name), help=text,
                                     **options)
        setattr(action, FIELD_OF, (cls, name))
        setattr(action, STAGE_DEFAULT, name in defaults)


def _argparse_options(flag: Flag, default: Any) -> dict[str, Any]:
    """``add_argument`` options of ``flag`` with ``default`` (a switch or a negated switch: ``store_true``)."""
    if flag.switch or flag.negated:
        return {"action": "store_true"}
    if isinstance(default, tuple):  # an empty tuple: nothing given (None, as argparse has it)
        default = list(default) or None
    options = {"default": default}
    if flag.parse is not None:
        options["type"] = flag_type(flag.parse)
    if flag.choices is not None:
        options["choices"] = list(flag.choices)  # a registry's names as they are now
    for key in ("metavar", "nargs"):
        if getattr(flag, key) is not None:
            options[key] = getattr(flag, key)
    return options


def settings_from_args(cls: type[S], args: argparse.Namespace, **given: Any) -> S:
    """``cls`` from the parsed flags: each field whose flag the script added takes the parsed value (a negated
    switch inverted; for a tuple field, the list given or () for none), the others keep their dataclass default;
    ``given`` sets fields that have no flag (or overrides one)."""
    parsed = vars(args)
    values: dict[str, Any] = {}
    for name, flag in flags_of(cls).items():
        if flag.dest(name) not in parsed:
            continue
        value = parsed[flag.dest(name)]
        if flag.negated:
            value = not value
        elif isinstance(default_of(cls, name), tuple):  # nargs: a list, or None when nothing was given
            value = tuple(value or ())
        values[name] = value
    return cls(**{**values, **given})
