"""The ``weight`` granularity: every Conv2d/Linear weight is a unit, each weight an entry.

A thin adapter from the ``Granularity`` interface to ``utils.sparsity.masks`` (the reparametrisation) and
``utils.sparsity.grow`` (saliency top-k regrowth with five init strategies).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models import scratch_model
from utils.core.aliases import Masks, Scores
from utils.sparsity import masks as M
from utils.sparsity.granularity import Granularity, UnitCost, register_granularity
from utils.sparsity.grow import INIT_STRATEGIES, apply_regrowth
from utils.sparsity.macs import output_sizes, sparse_macs


@register_granularity("weight")
class WeightGranularity(Granularity):
    """Unstructured masks on every prunable weight (see ``utils.sparsity.masks``)."""

    init_strategies = tuple(INIT_STRATEGIES)
    default_init = "zero"
    unit_noun = "layer"
    is_default = True
    counts_weights = True
    foreign_masks = "holds channel masks (a structured checkpoint); this stage works on weight masks"
    swap_refusal = ""  # swap cycles move single weights (utils.sparsity.swap)

    def __init__(self, model_name: str, num_classes: int, input_size: int) -> None:
        super().__init__(model_name, num_classes, input_size)
        self._layers = list(M.prunable_modules(scratch_model(model_name, num_classes)))

    def units(self) -> list[str]:
        return list(self._layers)

    def masks(self, model: nn.Module) -> Masks:
        return M.get_masks(model)

    def set_masks(self, model: nn.Module, masks: Masks) -> None:
        M.set_masks(model, masks)

    def ensure_masks(self, model: nn.Module) -> None:
        M.add_reparam(model)

    def checkpoint_masks(self, model: nn.Module) -> Masks | None:
        return None

    def capacity(self, model: nn.Module) -> dict[str, int]:
        return M.capacity(model)

    def total(self, model: nn.Module) -> int:
        return M.num_prunable(model)

    def sparsity(self, model: nn.Module) -> float:
        return M.sparsity(model)

    def scored_params(self) -> list[str]:
        return [f"{layer}.weight" for layer in self._layers]

    def unit_scores(self, param_scores: Scores) -> Scores:
        return {layer: param_scores[f"{layer}.weight"] for layer in self._layers if f"{layer}.weight" in param_scores}

    def probe_layer(self, unit: str) -> str:
        return unit

    def regrow(self, model: nn.Module, allocation: dict[str, int], scores: Scores, init_strategy: str,
               dense: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
               generator: torch.Generator | None = None) -> dict[str, int]:
        dense_weights = None if dense is None else {n: M.effective_weight(m).detach()
                                                    for n, m in M.prunable_modules(dense).items()}
        return apply_regrowth(model, allocation, scores, init_strategy, dense_weights, optimizer, generator)

    def unit_costs(self) -> dict[str, UnitCost]:
        model = scratch_model(self.model_name, self.num_classes)
        sizes = output_sizes(model, self.input_size)
        return {name: UnitCost(m.weight.numel(), 1.0, float(sizes.get(name, 0)))
                for name, m in M.prunable_modules(model).items()}

    def masked_macs(self, model: nn.Module) -> int:
        return sparse_macs(self, model)

    def describe(self, model: nn.Module) -> dict[str, float]:
        return {"params_nonzero": sum(c.kept for c in M.layer_counts(model))}
