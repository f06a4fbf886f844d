"""Regrowth inside layers: turn the top-scoring pruned positions back on and give them initial values.

``apply_regrowth(model, allocation, scores, init_strategy)`` regrows, in each layer, the
``min(n, capacity)`` pruned positions with the highest score (e.g. saliency), using tensor ops only:
one ``topk`` and one indexed write per layer for the mask, ``weight_orig`` and any optimizer state.
Initial values (``--init_strategy``):

| name        | value at a regrown position                                       |
|-------------|-------------------------------------------------------------------|
| `zero`      | 0 (the default; the weight starts learning from nothing)           |
| `kaiming`   | U(-b, b), b = sqrt(6 / fan_in)                                     |
| `xavier`    | U(-b, b), b = sqrt(6 / (fan_in + fan_out))                         |
| `magnitude` | the stored ``weight_orig`` value (its decayed last live value)     |
| `dense`     | the dense pretrained weight at that position                       |

Random draws are keyed by position: ``keyed_uniform`` draws one uniform value per entry of a whole layer from
a seed made of one number drawn from the caller's generator and the layer's name, and a regrown position
reads its own entry. So two regrowths from generators in the same state give a position the same initial
value whatever else they regrow (the paired episodes of a search differ only by their allocation).
"""
from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable

import torch
import torch.nn as nn

from utils.budget import largest_remainder
from utils.errors import UsageError
from utils.masks import has_reparam, prunable_modules

Draws = Callable[[], torch.Tensor]  # () -> U[0, 1) values shaped like the whole parameter (keyed by position)
# (module, flat positions [k], dense weight or None, draws) -> values [k]
Init = Callable[[nn.Module, torch.Tensor, "torch.Tensor | None", Draws], torch.Tensor]


def draw_base(generator: torch.Generator | None) -> int:
    """One number from ``generator`` (the global RNG when None) that seeds every ``keyed_uniform`` of one
    regrowth call."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=device))


def keyed_uniform(base: int, key: str, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """U[0, 1) values of ``shape`` on ``device`` that depend only on ``base``, ``key`` (a parameter's name)
    and the position."""
    gen = torch.Generator(device=device)
    gen.manual_seed((base + zlib.crc32(key.encode())) % 2**63)
    return torch.rand(shape, generator=gen, device=device)


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _uniform(bound: float, idx: torch.Tensor, like: torch.Tensor, draws: Draws) -> torch.Tensor:
    return ((draws().reshape(-1)[idx.to(like.device)] * 2 - 1) * bound).to(like.dtype)


def _dense_values(module, idx, dense, draws):
    if dense is None:
        raise UsageError("--init_strategy dense needs the dense pretrained weights")
    return dense.reshape(-1)[idx].to(module.weight_orig.dtype)


INIT_STRATEGIES: dict[str, Init] = {
    "zero": lambda module, idx, dense, draws: torch.zeros(len(idx), device=idx.device, dtype=module.weight_orig.dtype),
    "kaiming": lambda module, idx, dense, draws: _uniform(math.sqrt(6 / _fans(module.weight_orig)[0]), idx,
                                                          module.weight_orig, draws),
    "xavier": lambda module, idx, dense, draws: _uniform(math.sqrt(6 / sum(_fans(module.weight_orig))), idx,
                                                         module.weight_orig, draws),
    "magnitude": lambda module, idx, dense, draws: module.weight_orig.detach().reshape(-1)[idx],
    "dense": _dense_values,
}


def get_init(name: str) -> Init:
    """The init strategy ``name``; unknown names are a ``UsageError`` listing the valid ones."""
    if name not in INIT_STRATEGIES:
        raise UsageError(f"unknown init strategy '{name}'; choose one of: {', '.join(INIT_STRATEGIES)}")
    return INIT_STRATEGIES[name]


def top_pruned(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Flat (row-major) indices of the ``min(n, #pruned)`` pruned positions with the highest score."""
    pruned = ~mask.bool().reshape(-1)
    k = min(n, int(pruned.sum()))
    flat = scores.reshape(-1).float().masked_fill(~pruned, float("-inf"))
    return flat.topk(k).indices if k > 0 else torch.empty(0, dtype=torch.long, device=mask.device)


def _write(tensor: torch.Tensor, idx: torch.Tensor, values: torch.Tensor | float) -> None:
    """tensor[flat idx] = values, whatever the tensor's memory layout."""
    tensor[torch.unravel_index(idx, tensor.shape)] = values


def _reset_optimizer_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, idx: torch.Tensor) -> None:
    """Zero every per-weight state buffer (momentum, Adam moments) of ``param`` at ``idx``."""
    if optimizer is None or param not in optimizer.state:
        return
    for value in optimizer.state[param].values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            _write(value, idx, 0.0)


@torch.no_grad()
def apply_regrowth(model: nn.Module, allocation: dict[str, int], scores: dict[str, torch.Tensor],
                   init_strategy: str = "zero", dense: dict[str, torch.Tensor] | None = None,
                   optimizer: torch.optim.Optimizer | None = None,
                   generator: torch.Generator | None = None) -> dict[str, int]:
    """Regrow ``allocation[layer]`` weights (capped by capacity) at the highest-``scores`` pruned positions.

    ``dense``: dense weights by layer name (for ``init_strategy='dense'``). Returns {layer: regrown count}.
    Nothing outside the chosen positions changes.
    """
    init = get_init(init_strategy)
    modules = prunable_modules(model)
    base = draw_base(generator)
    regrown = {}
    for name, n in allocation.items():
        module = modules[name]
        if not has_reparam(module):
            raise UsageError(f"layer {name} has no mask to regrow into")
        idx = top_pruned(scores[name], module.weight_mask, n)
        draws = functools.partial(keyed_uniform, base, name, module.weight_orig.shape, module.weight_orig.device)
        values = init(module, idx, None if dense is None else dense.get(name), draws)
        _write(module.weight_orig, idx, values)
        _write(module.weight_mask, idx, 1.0)
        _reset_optimizer_state(optimizer, module.weight_orig, idx)
        regrown[name] = len(idx)
    return regrown


def random_scores_like(masks: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Uniform scores in [0, 1) shaped like each unit's mask (random positions inside a unit), drawn in unit
    order from ``generator`` (on its device) and moved to the mask's device."""
    device = generator.device if generator is not None else None
    return {name: torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
            for name, mask in masks.items()}


# ---- non-RL allocations (the baselines the controller must beat); each spends exactly the budget ------------

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


GREEDY_ALLOCATIONS = {"fill": allocate_fill, "prop": allocate_proportional, "uniform": allocate_uniform,
                      "random": allocate_random}


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
