"""Unstructured pruners: score functions, per-layer budget rules and selectors, kept apart.

Every pruner is ``pruner.prune(model, amount, generator=None)``, where ``amount`` in [0, 1) is the fraction
of the *currently surviving* prunable weights to remove, so iterating 0.3 gives sparsity
``1 - 0.7^k``. Pruned weights never come back (new mask = old mask AND kept), and only the lowest-scoring
survivors of a layer (per-layer pruners) or of the whole model (global pruners) are removed.

Counts are exact: every pruner removes exactly ``round(amount * surviving)`` weights. Ties at the cut are
broken by position (``remove_lowest``: the earlier position goes first) for every pruner but ``lamp``, whose
``topk`` (``select_lamp``, ``_lamp_candidates``) keeps an unspecified one of entries with tied scores (ties need
equal magnitudes within a layer, or equal LAMP scores across layers; the count stays exact). Per-layer budgets
are rounded with the largest-remainder method so that they add up to that total. Two rules can make a target
infeasible and are then reported as errors: ``unifplus`` keeps the first conv dense and >= 20% of the last layer,
and ``erk`` keeps a layer dense when its share exceeds what it has (then the others absorb the rest).

| name       | score                      | budget                                                    |
|------------|----------------------------|-----------------------------------------------------------|
| `glob`     | abs(w)                     | one global ranking                                         |
| `unif`     | abs(w)                     | the same fraction of every layer                           |
| `unifplus` | abs(w)                     | uniform, first conv dense, last layer keeps >= 20%         |
| `lamp`     | LAMP (Lee et al., 2021)    | one global ranking of LAMP scores                          |
| `erk`      | abs(w)                     | survivors proportional to the sum of each layer's dims     |
| `random`   | uniform noise (seeded)     | one global ranking                                         |
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn as nn

from data.loader import DeviceLoader
from utils.core.aliases import Masks, Scores
from utils.core.errors import UsageError
from utils.core.registry import Registry
from utils.core.seeds import make_generator, role_seed
from utils.sparsity.budget import erk_budget, largest_remainder, prune_count, uniform_budget, unifplus_budget  # noqa: F401
from utils.sparsity.masks import add_reparam, effective_weight, get_masks, prunable_modules, set_masks

if TYPE_CHECKING:
    from utils.sparsity.granularity import Granularity


def magnitude_scores(model: nn.Module) -> Scores:
    """abs(effective weight) per prunable layer."""
    return {name: effective_weight(m).detach().abs() for name, m in prunable_modules(model).items()}


def lamp_of(squared: torch.Tensor) -> torch.Tensor:
    """LAMP scores of a flat tensor of squared magnitudes ``u``: with ``u`` sorted ascending,
    ``score(u_i) = u_i / sum_{j >= i} u_j`` in [0, 1] (float64, same order as the input)."""
    ordered, order = squared.double().sort()
    suffix = ordered.flip(0).cumsum(0).flip(0)
    lamp = torch.empty_like(ordered)
    lamp[order] = ordered / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return lamp


def lamp_scores(model: nn.Module) -> Scores:
    """LAMP scores (Lee et al., ICLR 2021) of every weight: ``lamp_of(w^2)`` per layer, in [0, 1]. A layer's
    largest weight scores 1; zeros score 0.

    Full scores of every weight (a sort per layer); the ``lamp`` pruner itself only needs each layer's
    top entries and scores those (``_lamp_candidates``).
    """
    scores = {}
    for name, module in prunable_modules(model).items():
        weight = effective_weight(module).detach()
        scores[name] = lamp_of(weight.flatten().double().pow(2)).view(weight.shape)
    return scores


def random_scores(model: nn.Module, generator: torch.Generator | None) -> Scores:
    """Uniform random scores in [0, 1) drawn from ``generator``."""
    scores = {}
    for name, module in prunable_modules(model).items():
        weight = effective_weight(module)
        device = generator.device if generator is not None else weight.device
        scores[name] = torch.rand(weight.shape, generator=generator, device=device).to(weight.device)
    return scores


def remove_lowest(scores: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask (shaped like ``alive``) of the ``count`` lowest-scoring alive entries; ties broken by position."""
    if count <= 0:
        return torch.zeros_like(alive)
    flat = scores.flatten().masked_fill(~alive.flatten(), float("inf"))
    threshold = flat.kthvalue(count).values
    chosen = flat < threshold
    ties = flat == threshold
    need = count - int(chosen.sum())
    if need < int(ties.sum()):
        ties &= ties.cumsum(0) <= need
    return (chosen | ties).view_as(alive)


def select_layerwise(alive: Masks, scores: Scores, budget: dict[str, int]) -> Masks:
    """Each layer loses its ``budget[name]`` lowest-scoring survivors."""
    return {name: mask & ~remove_lowest(scores[name], mask, budget[name]) for name, mask in alive.items()}


def select_global(alive: Masks, scores: Scores, remove: int) -> Masks:
    """The ``remove`` lowest-scoring survivors of the whole model go, wherever they are."""
    names = list(alive)
    flat_scores = torch.cat([scores[n].flatten().float() for n in names])
    removed = remove_lowest(flat_scores, torch.cat([alive[n].flatten() for n in names]), remove)
    pieces = removed.split([alive[n].numel() for n in names])
    return {n: alive[n] & ~piece.view_as(alive[n]) for n, piece in zip(names, pieces, strict=True)}


def _lamp_candidates(weight: torch.Tensor, alive: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact LAMP scores of a layer's ``min(survivors, limit)`` largest survivors: (scores f64 [k], flat idx [k]).

    Within a layer the LAMP score grows with magnitude, so a survivor ranked below ``limit`` in its own
    layer is beaten by ``limit`` others and can never be among the global top ``limit``.
    """
    squared = weight.detach().flatten().float().pow(2).masked_fill(~alive.flatten(), -1.0)
    top, idx = squared.topk(min(int(alive.sum()), limit))  # descending
    top = top.double()
    return top / top.cumsum(0).clamp_min(torch.finfo(torch.float64).tiny), idx


def select_lamp(model: nn.Module, alive: Masks, remove: int) -> Masks:
    """Keep the ``survivors - remove`` survivors with the highest LAMP scores, model-wide. Among survivors with
    tied scores at the cut, which are kept is ``topk``'s choice (not by position; not guaranteed the same on every
    device); the number kept is exact."""
    keep = sum(int(m.sum()) for m in alive.values()) - remove
    modules = prunable_modules(model)
    cands = {n: _lamp_candidates(effective_weight(modules[n]), alive[n], keep) for n in alive}
    names = list(cands)
    scores = torch.cat([cands[n][0] for n in names])
    kept = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    kept[scores.topk(keep).indices] = True
    masks = {}
    for name, piece in zip(names, kept.split([len(cands[n][1]) for n in names]), strict=True):
        mask = torch.zeros(alive[name].shape, dtype=torch.bool, device=alive[name].device)  # contiguous
        mask.view(-1)[cands[name][1][piece]] = True
        masks[name] = mask
    return masks


@dataclass(frozen=True)
class PruneContext:
    """What a selector may need besides the model: a seeded generator (``random``) and, for the
    gradient-based channel scores (``taylor``, ``hessian``), training batches."""

    generator: torch.Generator | None = None
    loader: DeviceLoader | None = None
    num_batches: int = 10

    @classmethod
    def of_run(cls, seed: int, loader: DeviceLoader | None = None, num_batches: int = 10) -> PruneContext:
        """A pruning run's context: the run seed's 'pruner' stream and, for gradient scores, ``loader``'s batches
        in the run seed's 'prune_scores' order (their own streams: pruning never shifts the finetunes' batches)."""
        scores = None if loader is None else loader.with_generator(make_generator(seed, "prune_scores", loader.device))
        return cls(make_generator(seed, "pruner"), scores, num_batches)

    def restart(self, seed: int) -> None:
        """Start both streams of ``of_run`` again from the run seed (each step of a pruning run starts afresh)."""
        if self.generator is not None:
            self.generator.manual_seed(role_seed(seed, "pruner"))
        if self.loader is not None:
            self.loader.generator.manual_seed(role_seed(seed, "prune_scores"))


Selector = Callable[[nn.Module, Masks, int, PruneContext], Masks]  # (model, alive, remove, context) -> kept


class MaskAccess(Protocol):
    """The part of a ``Granularity`` a pruner uses: read, write and add masks."""

    def masks(self, model: nn.Module) -> Masks: ...

    def set_masks(self, model: nn.Module, masks: Masks) -> None: ...

    def ensure_masks(self, model: nn.Module) -> None: ...


class _WeightMasks:
    """Weight masks of any model (no architecture needed): what weight pruners use by default."""

    masks = staticmethod(get_masks)
    set_masks = staticmethod(set_masks)
    ensure_masks = staticmethod(add_reparam)


def _counts(alive: Masks) -> dict[str, int]:
    return {name: int(mask.sum()) for name, mask in alive.items()}


WEIGHT_SELECTORS: Registry[Selector] = Registry("pruner", {
    "glob": lambda model, alive, remove, ctx: select_global(alive, magnitude_scores(model), remove),
    "unif": lambda model, alive, remove, ctx: select_layerwise(alive, magnitude_scores(model),
                                                               uniform_budget(_counts(alive), remove)),
    "unifplus": lambda model, alive, remove, ctx: select_layerwise(alive, magnitude_scores(model),
                                                                   unifplus_budget(model, _counts(alive), remove)),
    "lamp": lambda model, alive, remove, ctx: select_lamp(model, alive, remove),
    "erk": lambda model, alive, remove, ctx: select_layerwise(alive, magnitude_scores(model),
                                                              erk_budget(model, _counts(alive), remove)),
    "random": lambda model, alive, remove, ctx: select_global(alive, random_scores(model, ctx.generator), remove),
})


@dataclass(frozen=True)
class Pruner:
    """A named pruning method over one granularity's masks (``utils.prune.weight_pruners`` for weights,
    ``utils.prune.channel_pruners`` for channels)."""

    name: str
    select: Selector
    access: MaskAccess = field(default_factory=_WeightMasks)
    needs_data: bool = False

    @torch.no_grad()
    def prune(self, model: nn.Module, amount: float, generator: torch.Generator | None = None,
              context: PruneContext | None = None) -> int:
        """Remove ``round(amount * survivors)`` more entries from ``model``'s masks; returns that count."""
        if not 0.0 <= amount < 1.0:
            raise UsageError(f"prune amount must lie in [0, 1), got {amount}")
        context = context or PruneContext(generator)
        if self.needs_data and context.loader is None:
            raise UsageError(f"pruner '{self.name}' scores channels with gradients: it needs training batches")
        self.access.ensure_masks(model)
        alive = self.access.masks(model)
        remove = prune_count(amount, sum(_counts(alive).values()))
        self.access.set_masks(model, self.select(model, alive, remove, context))
        return remove


def weight_pruner(name: str, granularity: Granularity | None = None, scope: str = "global") -> Pruner:
    """The weight pruner ``name`` (``scope`` does not apply: weight pruners pick their own layer budgets)."""
    return Pruner(name, WEIGHT_SELECTORS.get(name, "--pruner"), granularity or _WeightMasks())
