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

from utils.core.errors import UsageError
from utils.core.registry import Registry
from utils.sparsity.masks import has_reparam, prunable_modules

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


INIT_STRATEGIES: Registry[Init] = Registry("init strategy", {
    "zero": lambda module, idx, dense, draws: torch.zeros(len(idx), device=idx.device, dtype=module.weight_orig.dtype),
    "kaiming": lambda module, idx, dense, draws: _uniform(math.sqrt(6 / _fans(module.weight_orig)[0]), idx,
                                                          module.weight_orig, draws),
    "xavier": lambda module, idx, dense, draws: _uniform(math.sqrt(6 / sum(_fans(module.weight_orig))), idx,
                                                         module.weight_orig, draws),
    "magnitude": lambda module, idx, dense, draws: module.weight_orig.detach().reshape(-1)[idx],
    "dense": _dense_values,
})


def get_init(name: str) -> Init:
    """The init strategy ``name``; unknown names are a ``UsageError`` listing the valid ones."""
    return INIT_STRATEGIES.get(name)


def top_pruned(scores: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Flat (row-major) indices of the ``min(n, #pruned)`` pruned positions with the highest score."""
    pruned = ~mask.bool().reshape(-1)
    k = min(n, int(pruned.sum()))
    flat = scores.reshape(-1).float().masked_fill(~pruned, float("-inf"))
    return flat.topk(k).indices if k > 0 else torch.empty(0, dtype=torch.long, device=mask.device)


def write_at(tensor: torch.Tensor, idx: torch.Tensor, values: torch.Tensor | float) -> None:
    """tensor[flat idx] = values, whatever the tensor's memory layout."""
    tensor[torch.unravel_index(idx, tensor.shape)] = values


def reset_optimizer_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor,
                          zero: Callable[[torch.Tensor], object]) -> None:
    """Give regrown entries of ``param`` fresh optimizer state: ``zero`` (which zeroes those entries of a tensor
    shaped like ``param``, in place) is applied to every per-entry buffer (momentum, Adam moments). The one
    reset of both regrowth kernels (weights: flat positions; channels: slices along a dimension)."""
    if optimizer is None or param not in optimizer.state:
        return
    for value in optimizer.state[param].values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            zero(value)


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
        write_at(module.weight_orig, idx, values)
        write_at(module.weight_mask, idx, 1.0)
        reset_optimizer_state(optimizer, module.weight_orig, lambda t, idx=idx: write_at(t, idx, 0.0))
        regrown[name] = len(idx)
    return regrown


def random_scores_like(masks: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Uniform scores in [0, 1) shaped like each unit's mask (random positions inside a unit), drawn in unit
    order from ``generator`` (on its device) and moved to the mask's device."""
    device = generator.device if generator is not None else None
    return {name: torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
            for name, mask in masks.items()}
