"""Unstructured masks: the one wrapper around ``torch.nn.utils.prune``.

Each prunable module (every Conv2d and Linear) holds ``weight_orig`` (parameter) and ``weight_mask``
(buffer, 1 = kept, 0 = pruned); ``weight = weight_orig * weight_mask`` is recomputed before each forward.
Sparsity is ``#(mask == 0) / N_tot`` over all prunable weights; a module without a mask counts its exact
zeros (plain checkpoints whose masks were merged into the weights).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerCount:
    """Prunable-weight counts of one layer."""

    name: str
    shape: tuple[int, ...]
    total: int
    kept: int  # mask == 1 (or nonzero weight when the layer has no mask)

    @property
    def pruned(self) -> int:
        """Number of pruned weights, i.e. the layer's regrowth capacity."""
        return self.total - self.kept

    @property
    def sparsity(self) -> float:
        """Fraction of this layer's weights that are pruned, in [0, 1]."""
        return self.pruned / self.total if self.total else 0.0


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear of ``model`` by qualified name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def has_reparam(module: nn.Module) -> bool:
    """True when ``module.weight`` is the product ``weight_orig * weight_mask``."""
    return hasattr(module, "weight_orig") and hasattr(module, "weight_mask")


def add_reparam(model: nn.Module, names: list[str] | None = None) -> None:
    """Give each prunable module (or only ``names``) a mask; modules that have one are skipped.

    The new mask keeps every nonzero weight: all ones for a dense model, and the right pattern for a
    checkpoint whose masks were merged into its weights (the original repo's test scripts save those).
    """
    for name, module in prunable_modules(model).items():
        if (names is None or name in names) and not has_reparam(module):
            prune.custom_from_mask(module, "weight", module.weight.detach() != 0)


def has_param_mask(module: nn.Module, param: str) -> bool:
    """True when ``module.<param>`` is reparametrised as ``<param>_orig * <param>_mask``."""
    return hasattr(module, f"{param}_orig") and hasattr(module, f"{param}_mask")


def stored_param(module: nn.Module, param: str) -> torch.Tensor:
    """The trainable tensor behind ``module.<param>``: ``<param>_orig`` under a mask, else the parameter."""
    return getattr(module, f"{param}_orig") if has_param_mask(module, param) else getattr(module, param)


def effective_param(module: nn.Module, param: str) -> torch.Tensor:
    """``module.<param>`` as the next forward pass uses it (``orig * mask`` under a mask)."""
    if has_param_mask(module, param):
        return getattr(module, f"{param}_orig") * getattr(module, f"{param}_mask")
    return getattr(module, param)


def set_param_mask(module: nn.Module, param: str, mask: torch.Tensor) -> None:
    """Write the bool keep-mask of ``module.<param>`` (any parameter: conv bias, BN gamma/beta, ...),
    adding the reparametrisation when it is missing; stored values are untouched."""
    if has_param_mask(module, param):
        getattr(module, f"{param}_mask").copy_(mask)
    else:
        prune.custom_from_mask(module, param, mask)


def clone_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model``, masks included. Each masked attribute (``weight = orig * mask``) is first
    recomputed without autograd: after a forward pass with gradients it is a non-leaf tensor, which
    ``copy.deepcopy`` refuses."""
    with torch.no_grad():
        for module in model.modules():
            for name, _ in list(module.named_parameters(recurse=False)):
                if name.endswith("_orig") and has_param_mask(module, name[: -len("_orig")]):
                    base = name[: -len("_orig")]
                    setattr(module, base, getattr(module, name) * getattr(module, f"{base}_mask"))
    return copy.deepcopy(model)


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every ``X_orig``/``X_mask`` pair merged into a plain ``X = orig * mask``:
    what a model without any reparametrisation loads."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            out[key[: -len("_orig")]] = (value * state[key[: -len("_orig")] + "_mask"]).detach()
        else:
            out[key] = value.detach()
    return out


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the forward pass uses (``weight_orig * weight_mask`` when masked); same shape as the weight."""
    if has_reparam(module):
        return module.weight_orig * module.weight_mask
    return module.weight


def keep_mask(module: nn.Module) -> torch.Tensor:
    """Bool tensor shaped like the weight: True where the weight is kept."""
    if has_reparam(module):
        return module.weight_mask.bool()
    return module.weight != 0


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Bool keep-masks of every prunable module by name."""
    return {name: keep_mask(m) for name, m in prunable_modules(model).items()}


def layer_counts(model: nn.Module) -> list[LayerCount]:
    """Per-layer total/kept prunable-weight counts (one device sync per layer)."""
    counts = []
    for name, module in prunable_modules(model).items():
        mask = keep_mask(module)
        counts.append(LayerCount(name, tuple(mask.shape), mask.numel(), int(mask.sum())))
    return counts


def sparsity(model: nn.Module) -> float:
    """Overall unstructured sparsity ``#pruned / N_tot`` of the prunable weights, in [0, 1]."""
    counts = layer_counts(model)
    total = sum(c.total for c in counts)
    return sum(c.pruned for c in counts) / total if total else 0.0


def num_prunable(model: nn.Module) -> int:
    """``N_tot``: the number of prunable weights (all Conv2d and Linear weights)."""
    return sum(m.weight_orig.numel() if has_reparam(m) else m.weight.numel() for m in prunable_modules(model).values())


def capacity(model: nn.Module) -> dict[str, int]:
    """Per-layer regrowth capacity: the number of pruned weights (mask == 0)."""
    return {c.name: c.pruned for c in layer_counts(model)}


def set_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Write bool keep-masks (shaped like each weight) into the reparametrisation, adding it where missing.

    Only the masks change; ``weight_orig`` keeps its stored values at pruned positions.
    """
    add_reparam(model, list(masks))
    modules = prunable_modules(model)
    for name, mask in masks.items():
        buffer = modules[name].weight_mask
        if mask.shape != buffer.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(buffer.shape)}")
        buffer.copy_(mask)
