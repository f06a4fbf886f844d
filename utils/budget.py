"""Budget arithmetic, once: integer shares that add up exactly, and the regrowth budget K.

Every pruner, regrowth allocation and search spends counts computed here, so "how many" has one rule
whichever granularity (weights or channels) is being counted.
"""
from __future__ import annotations

import math

from utils.errors import UsageError


def largest_remainder(shares: dict[str, float], total: int) -> dict[str, int]:
    """Non-negative integers proportional to ``shares`` that add up to exactly ``total``."""
    weight = sum(shares.values())
    exact = {k: total * v / weight if weight > 0 else 0.0 for k, v in shares.items()}
    floors = {k: int(v) for k, v in exact.items()}
    leftover = total - sum(floors.values())
    for k in sorted(exact, key=lambda k: exact[k] - floors[k], reverse=True)[:leftover]:
        floors[k] += 1
    return floors


def capped_largest_remainder(shares: dict[str, float], caps: dict[str, int], total: int) -> dict[str, int]:
    """``largest_remainder`` where entry ``k`` never exceeds ``caps[k]``: an entry whose share would pass its
    cap is fixed at the cap and the rest is shared again among the others (water-filling).

    ``total`` must not exceed ``sum(caps)``; the result adds up to exactly ``total``.
    """
    if total > sum(caps.values()):
        raise ValueError(f"cannot place {total} in caps that hold {sum(caps.values())}")
    fixed: dict[str, int] = {}
    while True:
        free = {k: v for k, v in shares.items() if k not in fixed}
        plan = largest_remainder(free, total - sum(fixed.values()))
        over = {k for k, n in plan.items() if n > caps[k]}
        if not over:
            return {**plan, **fixed}
        fixed.update({k: caps[k] for k in over})


def regrowth_budget(total: int, fraction: float, capacity: int) -> int:
    """K = min(floor(total · fraction), capacity): the number of units (weights or channels) one regrowth
    step brings back, where ``total`` is N_tot of the granularity and ``capacity`` what the allocation may
    fill (masked entries of the units it spreads over).

    The floor is the original's ``int()`` (spec §18.8); 1e-9 absorbs float error (2708.9999999 -> 2709).
    A budget of 0 is a ``UsageError``: the step would change nothing.
    """
    budget = min(math.floor(total * fraction + 1e-9), capacity)
    if budget <= 0:
        raise UsageError(f"regrowth budget is 0 ({fraction:g} of {total:,} units, capacity {capacity:,}): "
                         "raise the budget fraction or start from a sparser model")
    return budget
