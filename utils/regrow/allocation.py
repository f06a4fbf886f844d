"""Greedy allocation rules: how a regrowth budget is split over units (layers, or channel groups), without a search.

Each rule (``GREEDY_ALLOCATIONS``, the ``--greedy_mode`` of ``regrowth_greedy.py``) takes ``(ssim, capacities,
budget, generator, scores)`` and returns ``{unit: entries to regrow}``, units with 0 left out; ``scores`` are the
within-unit selection scores of each unit's pruned entries (``pruned_scores``; 1-D, ``capacities[unit]`` long), used
by ``topk`` only. With a budget no larger than the total capacity (as ``utils.sparsity.budget.regrowth_budget``
gives) every rule spends exactly the budget and gives no unit more than its capacity (its pruned entries).
A unit that never runs (its probe layer's hook never fires, e.g. EfficientNet's ``layers.0.conv1``: NaN SSIM, see
``utils.scoring.ssim``) gets no budget under every rule: entries regrown there could not change any output.
``runnable`` drops such units (one log line names them) before a rule splits the budget over the others; for the
rules below that do not use SSIM, a NaN is all that is read of it (``utils.scoring.layer_scores.silent_units``
finds those units in one forward pass):

    fill     most damaged unit first (ascending SSIM), each filled to capacity until the budget is spent
    prop     shares proportional to ``max(1 - SSIM, 1e-6)`` (largest remainder), capped by capacity; what the caps
             leave over is filled in ascending-SSIM order
    uniform  shares proportional to capacity (every pruned entry equally likely to come back); SSIM unused
    random   ``budget`` pruned entries drawn uniformly from the whole model with ``generator``; SSIM unused
    topk     the ``budget`` pruned entries with the highest ``scores`` over the given units (a global top-K:
             the allocation with the largest summed score, e.g. saliency); SSIM unused. Scores that are
             normalised per unit (``--selection reference``) make it compare ranks within units, not values

``greedy_allocation`` runs a rule by name (what the scripts call): it reduces the selection scores to the pruned
entries for the rules that read them. ``allocation_lines`` renders an allocation as a per-unit table for the log
(SSIM, capacity, regrown). Which entries inside a unit regrow, and their initial values, is the regrowth kernels'
business (``utils.sparsity.grow``, ``utils.sparsity.grow_channels``); regrowing an allocation and finetuning it is
``utils.regrow.apply``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from utils.core.aliases import Masks, Scores
from utils.core.errors import UsageError
from utils.core.log import LOG
from utils.core.registry import Registry
from utils.sparsity.budget import largest_remainder


def runnable(ssim: dict[str, float], capacities: dict[str, int]) -> dict[str, int]:
    """``capacities`` without the units that never run (NaN SSIM; a unit ``ssim`` does not score counts as
    running), which get no budget: one log line names them. When every unit is such a one, a ``UsageError``."""
    silent = [n for n in capacities if math.isnan(ssim.get(n, 0.0))]
    if not silent:
        return capacities
    if len(silent) == len(capacities):
        raise UsageError(f"every unit with room to regrow never runs (NaN SSIM: {', '.join(silent)}); "
                         "there is nothing a regrowth could change")
    LOG.info("no budget for %d unit(s) that never run (NaN SSIM: no forward pass reaches them): %s", len(silent),
             ", ".join(silent))
    return {n: c for n, c in capacities.items() if n not in silent}


def _fill(order: list[str], capacities: dict[str, int], budget: int, start: dict[str, int]) -> dict[str, int]:
    """Top ``start`` up to ``budget`` by filling layers in ``order`` up to their capacity."""
    allocation, left = dict(start), budget - sum(start.values())
    for name in order:
        take = min(capacities[name] - allocation.get(name, 0), left)
        allocation[name] = allocation.get(name, 0) + take
        left -= take
    return {k: v for k, v in allocation.items() if v > 0}


def allocate_fill(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                  generator: torch.Generator | None = None, scores: Scores | None = None) -> dict[str, int]:
    """Most damaged layer first (ascending SSIM), each filled to capacity until the budget is spent."""
    capacities = runnable(ssim, capacities)
    return _fill(sorted(capacities, key=ssim.__getitem__), capacities, budget, {})


def allocate_proportional(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                          generator: torch.Generator | None = None, scores: Scores | None = None) -> dict[str, int]:
    """Shares proportional to ``max(1 - SSIM, 1e-6)``, capped by capacity (largest-remainder rounding); what
    the caps leave over is filled in ascending-SSIM order, so the total is exactly the budget."""
    capacities = runnable(ssim, capacities)
    shares = largest_remainder({n: max(1.0 - ssim[n], 1e-6) for n in capacities}, budget)
    capped = {n: min(v, capacities[n]) for n, v in shares.items()}
    return _fill(sorted(capacities, key=ssim.__getitem__), capacities, budget, capped)


def allocate_uniform(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                     generator: torch.Generator | None = None, scores: Scores | None = None) -> dict[str, int]:
    """Shares proportional to capacity (every pruned weight equally likely to come back)."""
    capacities = runnable(ssim, capacities)
    shares = largest_remainder({n: float(c) for n, c in capacities.items()}, budget)
    return {n: v for n, v in shares.items() if v > 0}


def _counts_per_unit(picks: torch.Tensor, capacities: dict[str, int]) -> dict[str, int]:
    """Picked positions of the units' pruned entries laid end to end (``capacities`` order; int64 [k], each in
    [0, total capacity)) -> how many fall in each unit, units with 0 left out."""
    names = list(capacities)
    bounds = torch.tensor([capacities[n] for n in names]).cumsum(0)
    counts = torch.bincount(torch.bucketize(picks, bounds, right=True), minlength=len(names))
    return {n: int(c) for n, c in zip(names, counts, strict=True) if c > 0}


def allocate_random(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                    generator: torch.Generator | None = None, scores: Scores | None = None) -> dict[str, int]:
    """``budget`` pruned positions drawn uniformly from the whole model: counts per layer."""
    capacities = runnable(ssim, capacities)
    picks = torch.randperm(sum(capacities.values()), generator=generator)[:budget]
    return _counts_per_unit(picks, capacities)


def allocate_top_scores(ssim: dict[str, float], capacities: dict[str, int], budget: int,
                        generator: torch.Generator | None = None, scores: Scores | None = None) -> dict[str, int]:
    """The ``budget`` pruned entries with the highest ``scores`` over all units in ``capacities`` (each unit's
    scores 1-D, one per pruned entry): counts per unit. Regrowing it with the same scores inside each unit
    brings back exactly the global top-K entries (ties aside)."""
    if scores is None:
        raise UsageError("the topk allocation needs the pruned entries' scores")
    capacities = runnable(ssim, capacities)
    names = list(capacities)
    if any(scores[n].numel() != capacities[n] for n in names):
        raise UsageError("topk needs one score per pruned entry of each unit (see pruned_scores)")
    flat = torch.cat([scores[n].detach().flatten().float().cpu() for n in names])
    if not bool(torch.isfinite(flat).all()):
        raise UsageError("topk: the selection scores of some pruned entries are not finite numbers")
    return _counts_per_unit(flat.topk(min(budget, flat.numel())).indices, capacities)


def pruned_scores(scores: Scores, masks: Masks, units: list[str] | dict[str, int]) -> Scores:
    """Each unit's scores at its pruned entries (``~mask``; scores and mask shaped alike), 1-D, for ``topk``."""
    return {n: scores[n][~masks[n].to(scores[n].device)] for n in units}


SCORE_RULES = ("topk",)  # the rules that read the pruned entries' scores (the others take None)

GREEDY_ALLOCATIONS: Registry[Callable[..., dict[str, int]]] = Registry(
    "greedy allocation", {"fill": allocate_fill, "prop": allocate_proportional, "uniform": allocate_uniform,
                          "random": allocate_random, "topk": allocate_top_scores})


def greedy_allocation(rule: str, ssim: dict[str, float], capacities: dict[str, int], budget: int,
                      generator: torch.Generator | None = None, unit_scores: Scores | None = None,
                      masks: Masks | None = None) -> dict[str, int]:
    """The ``rule``'s split of ``budget`` over ``capacities``' units. ``unit_scores`` (the within-unit selection
    scores, shaped like each unit's keep-mask in ``masks``) are read only by ``SCORE_RULES``, at the pruned
    entries."""
    ranked = pruned_scores(unit_scores, masks, capacities) if rule in SCORE_RULES else None
    return GREEDY_ALLOCATIONS.get(rule, "--greedy_mode")(ssim, capacities, budget, generator, ranked)


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
