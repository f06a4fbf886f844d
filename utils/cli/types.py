"""The value types of ``utils.core.values`` as argparse types: a refused value's reason becomes the one
``error:`` line (exit 2). Scripts' own flags use these; settings fields name the ``values`` functions, which
``utils.cli.settings_flags`` wraps the same way."""
from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TypeVar

from utils.core import values
from utils.core.values import BadValue

T = TypeVar("T")


def flag_type(check: Callable[[str], T]) -> Callable[[str], T]:
    """The value type ``check`` (``utils.core.values``) as an argparse type: its ``BadValue`` reason becomes the
    ``error:`` line."""

    @functools.wraps(check)
    def parse(text: str) -> T:
        try:
            return check(text)
        except BadValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# the value types as argparse types (the scripts' own flags use these; settings fields name ``values``' ones)
fraction = flag_type(values.fraction)
open_fraction = flag_type(values.open_fraction)
fraction_below_one = flag_type(values.fraction_below_one)
positive_int = flag_type(values.positive_int)
non_negative_int = flag_type(values.non_negative_int)
seed_int = flag_type(values.seed_int)
finite_float = flag_type(values.finite_float)
positive_float = flag_type(values.positive_float)
non_negative_float = flag_type(values.non_negative_float)


def int_up_to(limit: int) -> Callable[[str], int]:
    """argparse type: an integer from 1 to ``limit`` (``values.int_up_to``)."""
    return flag_type(values.int_up_to(limit))


def float_up_to(limit: float, base: Callable[[str], float] | None = None) -> Callable[[str], float]:
    """argparse type: a number ``base`` accepts (default: finite and >= 0) up to ``limit`` (``values.float_up_to``)."""
    return flag_type(values.float_up_to(limit, base))
