"""Value types of settings: each turns a command-line string into a checked value or raises ``BadValue`` with a
sentence that says why (``utils.cli.types`` hands it to argparse, which prints it as one ``error:`` line). A
settings field names its type in its metadata (``utils.core.fields``), so a value is checked the same way wherever
its flag appears."""
from __future__ import annotations

import math
from collections.abc import Callable


class BadValue(ValueError):
    """A flag value its type refuses; the message is the reason, printed as is."""


def fraction(text: str) -> float:
    """value type: a float in [0, 1] (sparsities, splits); '99' is rejected, not read as 0.99."""
    value = _float(text)
    if not 0.0 <= value <= 1.0:
        raise BadValue(f"{text} is not a fraction in [0, 1] (write 0.99, not 99)")
    return value


def open_fraction(text: str) -> float:
    """value type: a float strictly between 0 and 1."""
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise BadValue(f"{text} must lie strictly between 0 and 1")
    return value


def fraction_below_one(text: str) -> float:
    """value type: a float in [0, 1) (label smoothing: 1 would leave no target)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise BadValue(f"{text} must lie in [0, 1)")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadValue(f"{text} is not an integer") from None


BATCH_LIMIT = 1 << 20  # images in one batch (a batch is allocated at once)
INT_LIMIT = 10**9  # the largest count any int flag takes (epochs, batches, steps, subsets); tighter where allocated
FLOAT_LIMIT = 1e30  # the largest magnitude any float flag takes: far inside fp32 (3.4e38); tighter where it matters


def _int_in(text: str, low: int, high: int = INT_LIMIT) -> int:
    """The integer ``text`` when it lies in [``low``, ``high``]; ``BadValue`` saying which bound it misses."""
    value = _int(text)
    if value < low:
        raise BadValue(f"{text} must be {'at least 1' if low == 1 else f'{low} or more'}")
    if value > high:
        raise BadValue(f"{text} is more than {high:,}")
    return value


def positive_int(text: str) -> int:
    """value type: an integer from 1 to ``INT_LIMIT``."""
    return _int_in(text, 1)


def int_up_to(limit: int) -> Callable[[str], int]:
    """value type factory: an integer from 1 to ``limit`` (sizes that are allocated: never unbounded)."""

    def bounded(text: str) -> int:
        return _int_in(text, 1, limit)

    bounded.__name__ = f"int_up_to_{limit}"
    return bounded


def positive_int_or_all(text: str) -> int | str:
    """value type: a whole number >= 1, or 'all' (no limit)."""
    return "all" if text == "all" else positive_int(text)


def float_up_to(limit: float, base: Callable[[str], float] | None = None) -> Callable[[str], float]:
    """value type factory: a number ``base`` accepts (default: finite and >= 0) up to ``limit`` (rates and
    weights: never unbounded)."""

    def bounded(text: str) -> float:
        if _finite(text) > limit:  # its own bound first: the more useful line
            raise BadValue(f"{text} is more than {limit:g}")
        return (base or non_negative_float)(text)

    bounded.__name__ = f"float_up_to_{limit:g}"
    return bounded


def non_negative_int(text: str) -> int:
    """value type: an integer from 0 to ``INT_LIMIT`` (e.g. a patience, where 0 switches early stopping off)."""
    return _int_in(text, 0)


def seed_int(text: str) -> int:
    """value type: a seed in [0, 2^63) (what every generator accepts)."""
    value = _int(text)
    if not 0 <= value < 2**63:
        raise BadValue(f"{text} is not a seed in [0, 2^63)")
    return value


def finite_float(text: str) -> float:
    """value type: any finite float (nan and inf are refused)."""
    return _float(text)


def positive_float(text: str) -> float:
    """value type: a float > 0."""
    value = _float(text)
    if not value > 0:
        raise BadValue(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    """value type: a float >= 0."""
    value = _float(text)
    if not value >= 0:
        raise BadValue(f"{text} must be 0 or more")
    return value


def _finite(text: str) -> float:
    """A finite float; nan and inf are refused by every float type (they would silently poison training)."""
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text} is not a number") from None
    if not math.isfinite(value):
        raise BadValue(f"{text} is not a finite number")
    return value


def _float(text: str) -> float:
    """A finite float of magnitude at most ``FLOAT_LIMIT``."""
    value = _finite(text)
    if abs(value) > FLOAT_LIMIT:
        raise BadValue(f"{text} is beyond ±{FLOAT_LIMIT:g}: no flag here means anything that large")
    return value
