"""Budget arithmetic, once: integer shares that add up exactly, the regrowth budget K, and the per-layer
budgets of the weight pruners (uniform, unif+, ERK).

Every pruner, regrowth allocation and search spends counts computed here, so "how many" has one rule
whichever granularity (weights or channels) is being counted.
"""
from __future__ import annotations

import math

import torch.nn as nn

from utils.core.errors import UsageError
from utils.sparsity.masks import prunable_modules


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


def prune_count(amount: float, alive: int) -> int:
    """round(amount · alive): how many of ``alive`` units (weights or channels) pruning ``amount`` (a fraction in
    [0, 1]) removes. Every pruner removes exactly this many, and the file name of a one-shot prune to sparsity s
    from a dense model of N_tot units is predicted from ``prune_count(s, N_tot) / N_tot``."""
    return round(amount * alive)


def asked_budget(total: int, fraction: float) -> int:
    """floor(total · fraction): what a budget fraction asks for before any capacity caps it (1e-9 absorbs float
    error, 2708.9999999 -> 2709)."""
    return math.floor(total * fraction + 1e-9)


def regrowth_budget(total: int, fraction: float, capacity: int) -> int:
    """K = min(floor(total · fraction), capacity): the number of units (weights or channels) one regrowth
    step brings back, where ``total`` is N_tot of the granularity and ``capacity`` what the allocation may
    fill (masked entries of the units it spreads over).

    The floor is the original's ``int()``; 1e-9 absorbs float error (2708.9999999 -> 2709).
    A budget of 0 is a ``UsageError``: the step would change nothing.
    """
    budget = min(asked_budget(total, fraction), capacity)
    if budget <= 0:
        raise UsageError(f"regrowth budget is 0 ({fraction:g} of {total:,} units, capacity {capacity:,}): "
                         "raise the budget fraction or start from a sparser model")
    return budget


def uniform_budget(alive: dict[str, int], remove: int) -> dict[str, int]:
    """The same fraction of every layer's survivors."""
    return largest_remainder({k: float(v) for k, v in alive.items()}, remove)


def unifplus_budget(model: nn.Module, alive: dict[str, int], remove: int) -> dict[str, int]:
    """Uniform, but a first conv stays dense and the last layer keeps >= 20% of its weights; what the
    last layer cannot give is spread over the middle layers."""
    modules = prunable_modules(model)
    names = list(alive)
    last = names[-1]
    last_cap = max(0, alive[last] - round(0.2 * modules[last].weight.numel()))
    free = names[1:] if isinstance(modules[names[0]], nn.Conv2d) else names
    budget = dict.fromkeys(names, 0)
    plan = uniform_budget({k: alive[k] for k in free}, remove)
    if plan.get(last, 0) > last_cap:
        budget[last] = last_cap
        plan = uniform_budget({k: alive[k] for k in free if k != last}, remove - last_cap)
    budget.update(plan)
    if any(budget[k] > alive[k] for k in names):
        raise UsageError(f"unifplus cannot remove {remove} weights while the first conv stays dense and the last "
                         "layer keeps 20%; ask for less sparsity or use another pruner")
    return budget


def erk_budget(model: nn.Module, alive: dict[str, int], remove: int) -> dict[str, int]:
    """Survivors proportional to the sum of each layer's weight dimensions (the LAMP repository's ERK).

    A layer whose share exceeds its survivors stays dense (largest excess first) and the others share
    the rest; survivors are rounded by largest remainder, so the total is exact.
    """
    modules = prunable_modules(model)
    raw = {k: float(sum(modules[k].weight.shape)) for k in alive}
    keep_total = sum(alive.values()) - remove
    dense: set[str] = set()
    while True:
        budget_left = keep_total - sum(alive[k] for k in dense)
        free = {k: v for k, v in raw.items() if k not in dense}
        if not free:
            break
        scale = budget_left / sum(free.values())
        over = {k: scale * v / alive[k] for k, v in free.items() if scale * v > alive[k]}
        if not over:
            break
        dense.add(max(over, key=over.get))
    keep = largest_remainder(free, budget_left)
    keep.update({k: alive[k] for k in dense})
    return {k: alive[k] - min(keep[k], alive[k]) for k in alive}
