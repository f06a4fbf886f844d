"""Greedy allocation rules: how a regrowth budget is split over units (layers, or channel groups), without a search.

Each rule (``GREEDY_ALLOCATIONS``, the ``--greedy_mode`` of ``regrowth_greedy.py``) takes ``(ssim, capacities,
budget, generator)`` and returns ``{unit: entries to regrow}``, units with 0 left out. With a budget no larger than
the total capacity (as ``utils.sparsity.budget.regrowth_budget`` gives) every rule spends exactly the budget and
gives no unit more than its capacity (its pruned entries):

    fill     most damaged unit first (ascending SSIM), each filled to capacity until the budget is spent
    prop     shares proportional to ``max(1 - SSIM, 1e-6)`` (largest remainder), capped by capacity; what the caps
             leave over is filled in ascending-SSIM order
    uniform  shares proportional to capacity (every pruned entry equally likely to come back); SSIM unused
    random   ``budget`` pruned entries drawn uniformly from the whole model with ``generator``; SSIM unused

``allocation_lines`` renders an allocation as a per-unit table for the log (SSIM, capacity, regrown). Which entries
inside a unit regrow, and their initial values, is the regrowth kernels' business (``utils.sparsity.grow``,
``utils.sparsity.grow_channels``); regrowing an allocation and finetuning it is ``utils.regrow.apply``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from utils.core.registry import Registry
from utils.sparsity.budget import largest_remainder


def _fill(order: list[str], capacities: dict[str, int], budget: int, start: dict[str, int]) -> dict[str, int]:
    """Top ``start`` up to ``budget`` by filling layers in ``order`` up to their capacity."""
    allocation, left = dict(start), budget - sum(start.values())
    for name in order:
        take = min(capacities[name] - allocation.get(name, 0), left)
        allocation[name] = allocation.get(name, 0) + take
        left -= take
    return {k: v for k, v in allocation.items() if v > 0}


def allocate_fill(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                  generator: torch.Generator | None = None) -> dict[str, int]:
    """Most damaged layer first (ascending SSIM), each filled to capacity until the budget is spent."""
    return _fill(sorted(capacities, key=ssim.__getitem__), capacities, budget, {})


def allocate_proportional(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                          generator: torch.Generator | None = None) -> dict[str, int]:
    """Shares proportional to ``max(1 - SSIM, 1e-6)``, capped by capacity (largest-remainder rounding); what
    the caps leave over is filled in ascending-SSIM order, so the total is exactly the budget."""
    shares = largest_remainder({n: max(1.0 - ssim[n], 1e-6) for n in capacities}, budget)
    capped = {n: min(v, capacities[n]) for n, v in shares.items()}
    return _fill(sorted(capacities, key=ssim.__getitem__), capacities, budget, capped)


def allocate_uniform(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                     generator: torch.Generator | None = None) -> dict[str, int]:
    """Shares proportional to capacity (every pruned weight equally likely to come back)."""
    shares = largest_remainder({n: float(c) for n, c in capacities.items()}, budget)
    return {n: v for n, v in shares.items() if v > 0}


def allocate_random(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                    generator: torch.Generator | None = None) -> dict[str, int]:
    """``budget`` pruned positions drawn uniformly from the whole model: counts per layer."""
    names = list(capacities)
    bounds = torch.tensor([capacities[n] for n in names]).cumsum(0)
    picks = torch.randperm(int(bounds[-1]), generator=generator)[:budget]
    counts = torch.bincount(torch.bucketize(picks, bounds, right=True), minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True) if c > 0}


GREEDY_ALLOCATIONS: Registry[Callable[..., dict[str, int]]] = Registry(
    "greedy allocation", {"fill": allocate_fill, "prop": allocate_proportional, "uniform": allocate_uniform,
                          "random": allocate_random})


def allocation_lines(allocation: dict[str, int], capacities: dict[str, int], ssim: dict[str, float],
                     unit: str = "weight") -> list[str]:
    """A per-layer table of a regrowth decision, for the log: each unit's SSIM (blank when not scored), its
    capacity (pruned entries it could take back) and what was regrown, with the total; units in
    ``capacities`` order (the searched ones), then any other unit the allocation names."""
    names = list(capacities) + [n for n in allocation if n not in capacities]
    lines = [f"  {'layer':<28} {'SSIM':>7} {'capacity':>10} {'regrown ' + unit + 's':>16}"]
    for name in names:
        score = f"{ssim[name]:.3f}" if name in ssim else ""
        lines.append(f"  {name:<28} {score:>7} {capacities.get(name, 0):>10,} {allocation.get(name, 0):>16,}")
    lines.append(f"  {'total':<28} {'':>7} {sum(capacities.values()):>10,} {sum(allocation.values()):>16,}")
    return lines
