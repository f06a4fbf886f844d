"""Channel regrowth: bring back masked channels of a group, with values for every slice they touch.

``regrow_channels`` turns on, in each group of the allocation, the ``min(n, capacity)`` masked channels
with the highest score, writes their initial values into the stored (``*_orig``) tensors of every slice,
zeroes their optimizer state, and only then updates the channel masks (which re-derive every element
mask). Init strategies (``--init_strategy``):

| name        | producer rows (conv/Linear, depthwise) | biases | BN gamma, beta | BN running stats | consumer columns |
|-------------|----------------------------------------|--------|----------------|------------------|------------------|
| `dense` | dense model's | dense | dense | dense | dense |
| `preserve` | Kaiming-uniform | 0 | 1, 0 | mean 0, var 1 | 0 |
| `kaiming` | Kaiming-uniform | 0 | 1, 0 | mean 0, var 1 | Kaiming-uniform |
| `magnitude` | stored values | stored | stored | mean 0, var 1 | stored |

``preserve`` leaves the model's outputs unchanged at regrowth (the consumers read the new channel through
zero columns, which get gradient at once). ``zero`` is refused: zero rows *and* zero columns get no
gradient on either side, a dead channel forever. A regrown channel never keeps the decayed running
statistics a masked BN channel drifts to (structured_notes.md): they are reset or copied.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn as nn

from utils.core.errors import UsageError
from utils.sparsity.grow import Draws, draw_base, keyed_uniform, reset_optimizer_state, top_pruned
from utils.sparsity.masks import effective_param, stored_param

# (slice kind, param) -> value rule per strategy; a rule maps (stored, dense, positions, dim, draws) -> values,
# ``draws()`` giving U[0, 1) values shaped like ``stored`` and keyed by position (``keyed_uniform``)
Rule = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, int, Draws], torch.Tensor]


def _kaiming(stored, dense, pos, dim, draws):
    bound = math.sqrt(6 / (stored[0].numel() if stored.dim() > 1 else 1))
    return ((draws().index_select(dim, pos) * 2 - 1) * bound).to(stored.dtype)


def _dense(stored, dense, pos, dim, draws):
    if dense is None:
        raise UsageError("--init_strategy dense needs the dense model")
    return dense.to(stored.device, stored.dtype).index_select(dim, pos)


def _constant(value: float) -> Rule:
    def rule(stored, dense, pos, dim, draws):
        shape = list(stored.shape)
        shape[dim] = len(pos)
        return torch.full(shape, value, dtype=stored.dtype, device=stored.device)
    return rule


_KEEP = None  # leave the stored values
_RULES: dict[str, dict[tuple[str, str], Rule | None]] = {
    "dense": {("producer", "weight"): _dense, ("producer", "bias"): _dense, ("norm", "weight"): _dense,
              ("norm", "bias"): _dense, ("consumer", "weight"): _dense},
    "preserve": {("producer", "weight"): _kaiming, ("producer", "bias"): _constant(0.0),
                 ("norm", "weight"): _constant(1.0), ("norm", "bias"): _constant(0.0),
                 ("consumer", "weight"): _constant(0.0)},
    "kaiming": {("producer", "weight"): _kaiming, ("producer", "bias"): _constant(0.0),
                ("norm", "weight"): _constant(1.0), ("norm", "bias"): _constant(0.0),
                ("consumer", "weight"): _kaiming},
    "magnitude": {("producer", "weight"): _KEEP, ("producer", "bias"): _KEEP, ("norm", "weight"): _KEEP,
                  ("norm", "bias"): _KEEP, ("consumer", "weight"): _KEEP},
}


def _running_stats(module: nn.Module, dense_module: nn.Module | None, pos: torch.Tensor, strategy: str) -> None:
    """Copy (``dense``) or reset (mean 0, var 1) the running statistics of BN entries ``pos``."""
    if module.running_mean is None:
        return
    if strategy == "dense":
        module.running_mean.index_copy_(0, pos, dense_module.running_mean.to(pos.device).index_select(0, pos))
        module.running_var.index_copy_(0, pos, dense_module.running_var.to(pos.device).index_select(0, pos))
    else:
        module.running_mean.index_fill_(0, pos, 0.0)
        module.running_var.index_fill_(0, pos, 1.0)


def initialise(group, modules: dict[str, nn.Module], channels: torch.Tensor, strategy: str,
               dense_modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
               base: int) -> None:
    """Write ``strategy``'s values for group ``channels`` into every slice of ``group`` (``modules``: the
    model's modules by name; ``dense_modules``: the dense model's, empty when there is none; ``base``: the
    seed of this regrowth's position-keyed draws, see ``draw_base``)."""
    for s in group.slices:
        module = modules[s.module]
        stored = stored_param(module, s.param)
        pos = s.index[torch.isin(s.channel, channels.cpu())].to(stored.device)
        rule = _RULES[strategy][(s.kind, s.param)]
        if rule is not None:
            reference = (effective_param(dense_modules[s.module], s.param).detach() if s.module in dense_modules
                         else None)  # effective: a masked source's ``weight`` attribute may be stale
            draws = functools.partial(keyed_uniform, base, f"{s.module}.{s.param}", stored.shape, stored.device)
            stored.data.index_copy_(s.dim, pos, rule(stored.detach(), reference, pos, s.dim, draws))
        reset_optimizer_state(optimizer, stored, lambda t, dim=s.dim, pos=pos: t.index_fill_(dim, pos, 0.0))
        if s.kind == "norm" and s.param == "weight":
            _running_stats(module, dense_modules.get(s.module), pos, strategy)


def check_alive(group, modules: dict[str, nn.Module], channels: torch.Tensor, strategy: str) -> None:
    """A ``UsageError`` when a regrown channel has all-zero producer rows *and* consumer columns: it would
    never get a gradient (e.g. ``magnitude`` on a model whose pruned slices were stored as zeros, as the
    original repository's exported checkpoints are)."""
    live = {"producer": torch.zeros(group.size), "consumer": torch.zeros(group.size)}  # nonzero entries per channel
    for s in group.slices:
        if s.param != "weight" or s.kind == "norm":
            continue
        stored = stored_param(modules[s.module], s.param).detach()
        chosen = torch.isin(s.channel, channels.cpu())  # only the regrown channels' rows / columns are read
        per_position = stored.movedim(s.dim, 0)[s.index[chosen].to(stored.device)].flatten(1).ne(0).sum(1).float()
        live[s.kind].index_add_(0, s.channel[chosen], per_position.cpu())
    producing, consuming = live["producer"][channels.cpu()] > 0, live["consumer"][channels.cpu()] > 0
    if (~producing & ~consuming).any():
        raise UsageError(f"--init_strategy {strategy} regrows channels of {group.root} whose stored rows and "
                         "columns are all zero (a dead channel): use dense or preserve")


@torch.no_grad()
def regrow_channels(granularity, model: nn.Module, allocation: dict[str, int], scores: dict[str, torch.Tensor],
                    strategy: str, dense: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    generator: torch.Generator | None = None) -> dict[str, int]:
    """Regrow ``allocation[root]`` masked channels (capped by capacity) with the highest ``scores[root]``
    ([C] per group) in each group; returns {root: channels regrown}. Nothing else changes."""
    granularity.check_init(strategy)  # refuses zero: a dead channel
    if strategy == "dense" and dense is None:
        raise UsageError("--init_strategy dense needs the dense model")
    masks = granularity.masks(model)
    modules, dense_modules = dict(model.named_modules()), dict(dense.named_modules()) if dense is not None else {}
    new_masks, regrown, base = {}, {}, draw_base(generator)
    for root, n in allocation.items():
        chosen = top_pruned(scores[root], masks[root], n)
        initialise(granularity.by_root[root], modules, chosen, strategy, dense_modules, optimizer, base)
        check_alive(granularity.by_root[root], modules, chosen, strategy)
        new_masks[root] = masks[root].clone().index_fill_(0, chosen, True)
        regrown[root] = len(chosen)
    granularity.set_masks(model, new_masks, current=masks)
    return regrown
