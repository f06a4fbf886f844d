"""Settings that make their own flags (``utils.core.fields``, ``utils.cli.settings_flags``): every flag made from a
settings field has the field's default unless its stage states its own, no script writes such a flag by hand, and
the parsed flags give the dataclass back."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path

import pytest

from data import DataSettings
from utils.cli.flags import ArgumentParser
from utils.cli.settings_flags import FIELD_OF, STAGE_DEFAULT, add_settings_args, settings_from_args
from utils.core.fields import REQUIRED, default_of, flags_of, setting
from utils.core.values import positive_int
from utils.device.profiles import BudgetSettings
from utils.runtime.settings import (
    FinetuneSettings,
    PretrainSettings,
    RunSettings,
    ScheduleSettings,
    ScoringSettings,
    SearchSettings,
)
from utils.scoring.selection import SelectionSettings
from utils.sparsity.swap import SwapSettings

ROOT = Path(__file__).resolve().parents[1]
# the dataclasses that carry their flags
CONVERTED = (RunSettings, DataSettings, ScoringSettings, SwapSettings, FinetuneSettings, SearchSettings,
             SelectionSettings, ScheduleSettings, PretrainSettings, BudgetSettings)
# pretraining's SGD shares flag names with the AdamW finetunes (--lr, --weight_decay, --patience) for another
# optimizer's settings; no script adds both (checked per script below)
OTHER_OPTIMIZER = (PretrainSettings,)
SCRIPTS = sorted(p.stem for p in ROOT.glob("*.py") if "parse_args" in p.read_text())


class _Captured(Exception):
    """Raised instead of parsing: carries the parser a script built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def script_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser that script ``name``'s ``parse_args`` builds."""
    def capture(self, *args, **kwargs):
        raise _Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Captured) as caught:
        importlib.import_module(name).parse_args([])
    return caught.value.parser


def setting_dests() -> dict[str, tuple[type, str]]:
    """{parsed-namespace name: (dataclass, field)} of every flag the converted dataclasses define."""
    return {flag.dest(name): (cls, name) for cls in CONVERTED for name, flag in flags_of(cls).items()}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_settings_flag_has_its_fields_default_or_a_stated_stage_default(script, monkeypatch) -> None:
    parser = script_parser(script, monkeypatch)
    actions = parser._actions  # noqa: SLF001 (argparse keeps no public list)
    used = {getattr(a, FIELD_OF)[0] for a in actions if hasattr(a, FIELD_OF)}  # the dataclasses the script reads
    dests = {dest: made for dest, made in setting_dests().items() if made[0] in used}
    drifted, by_hand = [], []
    for action in actions:
        made_from = getattr(action, FIELD_OF, None)
        if made_from is None:  # a flag of a dataclass the script reads, written by hand, would be a second copy
            if action.dest in dests:
                by_hand.append(f"{'/'.join(action.option_strings)} (a flag of {dests[action.dest][0].__name__})")
            continue
        cls, name = made_from
        flag = flags_of(cls)[name]
        expected = False if flag.negated or flag.switch else default_of(cls, name)
        expected = (list(expected) or None) if isinstance(expected, tuple) else expected  # () is "none given"
        if not getattr(action, STAGE_DEFAULT) and action.default != expected:
            drifted.append(f"{action.dest}: {action.default!r} != {cls.__name__}.{name} {expected!r}")
    assert not (set(OTHER_OPTIMIZER) & used and used & {FinetuneSettings, SearchSettings}), used
    assert not by_hand, f"{script}.py writes settings flags by hand: {by_hand}"
    assert not drifted, f"{script}.py: {drifted}"


# one flag name, two settings: a search's mini-finetune epochs and a stage's finetune epochs (a script adds one)
SAME_NAME_OTHER_SETTING = {"finetune_epochs"}


def test_a_flag_name_in_two_settings_classes_is_one_setting() -> None:
    fields: dict[str, list[tuple]] = {}
    for cls in (c for c in CONVERTED if c not in OTHER_OPTIMIZER):
        for name, flag in flags_of(cls).items():
            fields.setdefault(flag.dest(name), []).append((default_of(cls, name), flag.help, flag.names, flag.negated,
                                                            flag.switch, flag.resumable))
    differ = [dest for dest, found in fields.items() if len(set(found)) > 1 and dest not in SAME_NAME_OTHER_SETTING]
    assert not differ, f"flags declared twice with other defaults or help: {differ}"
    assert any(len(found) > 1 for found in fields.values())  # the check has something to compare (lr, weight_decay)


@pytest.mark.parametrize("cls", CONVERTED)
def test_parsed_defaults_give_the_dataclass_defaults(cls) -> None:
    parser = ArgumentParser()
    required = {f.name: 3 for f in dataclasses.fields(cls) if f.default is REQUIRED
                and f.default_factory is dataclasses.MISSING}
    add_settings_args(parser, cls, defaults=required)
    assert settings_from_args(cls, parser.parse_args([])) == cls(**required)


def test_negated_switches_spellings_and_values() -> None:
    parser = ArgumentParser()
    add_settings_args(parser, SearchSettings)
    args = parser.parse_args(["--no_skip", "--random_search", "--alloc_space_size", "7", "--reward_temperature", "0.5"])
    search = settings_from_args(SearchSettings, args, clip=10.0)
    assert (search.skip, search.learn, search.paired) == (False, False, True)
    assert (search.action_space_size, search.temperature, search.clip) == (7, 0.5, 10.0)
    assert args.random_search and args.action_space_size == 7  # the namespace keeps the flags' own names


def test_a_refused_value_says_why(capsys) -> None:
    parser = ArgumentParser()
    add_settings_args(parser, SwapSettings)
    with pytest.raises(SystemExit) as exit_code:
        parser.parse_args(["--swap_fraction", "1.5"])
    assert exit_code.value.code == 2 and "1.5 must lie strictly between 0 and 1" in capsys.readouterr().err


def test_stage_defaults_names_and_mistakes() -> None:
    @dataclasses.dataclass(frozen=True)
    class Toy:
        epochs: int = setting(REQUIRED, "epochs", names=("--finetune_epochs",), parse=positive_int)
        size: tuple[int, ...] = setting((1, 2), "sizes", nargs="+", parse=positive_int)

    parser = ArgumentParser()
    add_settings_args(parser, Toy, defaults={"epochs": 5}, names={"epochs": ("--epochs",)})
    toy = settings_from_args(Toy, parser.parse_args(["--size", "4"]))
    assert toy == Toy(epochs=5, size=(4,))  # a list parsed for a tuple field becomes a tuple
    assert settings_from_args(Toy, parser.parse_args(["--epochs", "9"])).epochs == 9
    with pytest.raises(ValueError, match="has no default"):
        add_settings_args(ArgumentParser(), Toy)
    with pytest.raises(ValueError, match="has no flag for"):
        add_settings_args(ArgumentParser(), Toy, defaults={"epochs": 1, "typo": 2})
    with pytest.raises(ValueError, match="needs the default"):
        setting(False, "a negated switch defaults to True", negated=True)


def test_a_registered_entry_is_accepted_by_its_flag(monkeypatch) -> None:
    from utils.scoring.selection import SELECTORS

    monkeypatch.setitem(SELECTORS._entries, "mine", SELECTORS.get("random"))  # noqa: SLF001 (a test's registration)
    parser = ArgumentParser()
    add_settings_args(parser, SelectionSettings)
    assert settings_from_args(SelectionSettings, parser.parse_args(["--selection", "mine"])).selection == "mine"
