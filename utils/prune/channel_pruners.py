"""Channel pruners: an importance per channel (criteria) and exact-count selection (machinery), kept apart.

Importances are per-entry parameter scores summed over **every slice** of a group by
``ChannelGranularity.unit_scores`` (producer rows and biases, BN gamma/beta, consumer columns, depthwise
rows), on the effective (masked) weights:

| name       | channel score                                                                    |
|------------|----------------------------------------------------------------------------------|
| `l1`       | sum of abs(θ) over the group's slices                                             |
| `l2`       | sqrt of the sum of θ² over the group's slices                                     |
| `lamp`     | LAMP (Lee et al., 2021) of the channels' squared L2 norms, within each group      |
| `bn_scale` | sum of abs(gamma) of the group's BatchNorms (network slimming); `l1` for a group without BN |
| `taylor`   | sum of mean_batches abs(g·θ) (first-order Taylor), needs training batches         |
| `hessian`  | sum of mean_batches g²·θ² (our saliency reduced over the group), needs training batches |
| `random`   | uniform noise from the run's generator                                            |

Torch-Pruning's own importances are not used: on masked models its magnitude importance skips depthwise
convs, Taylor reads ``weight.grad`` (None under the reparametrisation) and Hessian does not accumulate
(``../shared/reference/structured_notes.md``). The graph itself does come from Torch-Pruning.

Selection (``--scope``), always exactly ``round(amount · live channels)`` channels, ties broken by
position, and never a group's last live channel (asking for more is a ``UsageError``):
* ``local``: every group loses the same fraction of its live channels (largest remainder, capped);
* ``global``: one threshold over scores divided by their group's mean over live channels (LAMP is
  already normalised), with each group's best channel kept.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from utils.core.aliases import Scores
from utils.core.errors import UsageError
from utils.core.registry import Registry
from utils.prune.weight_pruners import (
    Masks,
    PruneContext,
    Pruner,
    lamp_of,
    select_global,
    select_layerwise,
)
from utils.scoring.saliency import param_saliency
from utils.sparsity.budget import capped_largest_remainder
from utils.sparsity.channels import ChannelGranularity
from utils.sparsity.masks import effective_param

Importance = Callable[[ChannelGranularity, nn.Module, Masks, PruneContext], Scores]


def _params(gran: ChannelGranularity, model: nn.Module) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {key: effective_param(modules[key.rsplit(".", 1)[0]], key.rsplit(".", 1)[1]).detach()
            for key in gran.scored_params()}


def l1_importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
    """Sum of abs(θ) over each channel's slices."""
    return gran.unit_scores({k: v.abs() for k, v in _params(gran, model).items()})


def l2_importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
    """L2 norm of each channel's slices."""
    return {k: v.sqrt() for k, v in gran.unit_scores({k: v.pow(2) for k, v in _params(gran, model).items()}).items()}


def lamp_importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
    """LAMP of the squared channel norms within each group (masked channels have norm 0 and score 0)."""
    squared = gran.unit_scores({k: v.pow(2) for k, v in _params(gran, model).items()})
    return {root: lamp_of(u).float() for root, u in squared.items()}


def bn_scale_importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
    """Sum of abs(gamma) over the group's BatchNorms; L1 for a group without BatchNorm."""
    params = _params(gran, model)
    gammas = {f"{s.module}.weight" for g in gran.groups for s in g.members("norm") if s.param == "weight"}
    scores = gran.unit_scores({k: v.abs() for k, v in params.items() if k in gammas})
    without_bn = [g.root for g in gran.groups if not g.members("norm")]
    if without_bn:
        scores.update({root: v for root, v in l1_importance(gran, model, alive, ctx).items() if root in without_bn})
    return scores


def _gradient_importance(order: int) -> Importance:
    def importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
        return gran.unit_scores(param_saliency(model, ctx.loader, gran.scored_params(), ctx.num_batches, order))
    return importance


def random_importance(gran: ChannelGranularity, model: nn.Module, alive: Masks, ctx: PruneContext) -> Scores:
    """Uniform noise in [0, 1) from the context's generator."""
    return {root: torch.rand(mask.shape, generator=ctx.generator).to(mask.device) for root, mask in alive.items()}


# name -> (importance, needs training batches)
CHANNEL_IMPORTANCES: Registry[tuple[Importance, bool]] = Registry("channel pruner", {
    "l1": (l1_importance, False),
    "l2": (l2_importance, False),
    "lamp": (lamp_importance, False),
    "bn_scale": (bn_scale_importance, False),
    "taylor": (_gradient_importance(1), True),
    "hessian": (_gradient_importance(2), True),
    "random": (random_importance, False),
})


SELF_NORMALISED = {"lamp", "random"}


def check_removable(alive: Masks, remove: int) -> None:
    """A ``UsageError`` when removing ``remove`` live channels would empty a group."""
    live = sum(int(m.sum()) for m in alive.values())
    most = live - len(alive)
    if remove > most:
        raise UsageError(f"removing {remove} of {live} live channels would empty a group: at most {most} can go "
                         "(every group keeps one channel); ask for a lower channel sparsity")


def select_local(alive: Masks, scores: Scores, remove: int) -> Masks:
    """Every group loses the same fraction of its live channels (exact total, each keeps one)."""
    counts = {root: int(mask.sum()) for root, mask in alive.items()}
    budget = capped_largest_remainder({k: float(v) for k, v in counts.items()},
                                      {k: v - 1 for k, v in counts.items()}, remove)
    return select_layerwise(alive, scores, budget)


def select_global_floor(alive: Masks, scores: Scores, remove: int, normalise: bool) -> Masks:
    """The ``remove`` lowest normalised scores go model-wide; each group's best live channel stays."""
    ranked = {}
    for root, mask in alive.items():
        score = scores[root].float().to(mask.device)
        if normalise:
            score = score / score[mask].mean().abs().clamp_min(1e-12)
        best = score.masked_fill(~mask, float("-inf")).argmax()
        ranked[root] = score.clone().index_fill_(0, best.view(1), float("inf"))
    return select_global(alive, ranked, remove)


def channel_pruner(name: str, granularity: ChannelGranularity, scope: str) -> Pruner:
    """The channel pruner ``name`` with ``scope`` (``local`` or ``global``) over ``granularity``."""
    if scope not in ("local", "global"):
        raise UsageError(f"unknown scope '{scope}'; choose local or global")
    importance, needs_data = CHANNEL_IMPORTANCES.get(name, "--pruner")

    def select(model: nn.Module, alive: Masks, remove: int, ctx: PruneContext) -> Masks:
        check_removable(alive, remove)
        scores = importance(granularity, model, alive, ctx)
        if scope == "local":
            return select_local(alive, scores, remove)
        return select_global_floor(alive, scores, remove, normalise=name not in SELF_NORMALISED)

    return Pruner(name, select, granularity, needs_data)


