"""MACs of a channel-pruned model as an exact function of how many channels each group keeps.

The MACs of a channel-masked model's physical export (``params_and_macs`` below, Torch-Pruning's
count) depend only on each group's number of live channels ``n_g``, not on which channels they are. Every
layer's live size along an axis is affine in the counts, ``const + Σ_g per_g · n_g`` (``per_g``: positions
one channel of ``g`` covers on that axis, e.g. 4 for AlexNet's flattened features), and a layer costs, per
image, with P its output positions (H_out·W_out, 1 for a Linear):

- Conv2d: ``P · out · (in · k_h·k_w + bias)``; depthwise: ``P · out · (k_h·k_w + bias)``;
- Linear: ``out · (in + bias)``;
- BatchNorm2d: ``2 · P · out``.

So the cost is a quadratic in the counts, and regrowing ``a`` channels in one group and ``b`` in a
neighbouring one costs more than the two separately (the ``a·b`` term of the conv between them). The
search counts a MAC budget with each group's marginal cost at its start (``marginal``) and trims an
allocation until the exact cost fits (``fit_allocation``).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch_pruning as tp

from models import scratch_model
from utils.core.errors import UsageError

if TYPE_CHECKING:  # the granularity interface imports this module for its MAC counts
    from utils.sparsity.granularity import Granularity


@dataclass
class Axis:
    """Live size of one axis of a layer: ``const + Σ per[g] · n[g]`` over the groups that cover it."""

    const: float
    per: dict[str, float] = field(default_factory=dict)

    def size(self, counts: dict[str, int]) -> float:
        return self.const + sum(p * counts[g] for g, p in self.per.items())


@dataclass
class LayerMacs:
    """``positions · out · (coef · in + add)`` MACs of one layer (``inputs`` None when coef is 0)."""

    name: str
    positions: int
    out: Axis
    inputs: Axis | None
    coef: float
    add: float

    def macs(self, counts: dict[str, int]) -> float:
        inner = self.coef * self.inputs.size(counts) if self.inputs is not None else 0.0
        return self.positions * self.out.size(counts) * (inner + self.add)

    def marginal(self, counts: dict[str, int], group: str) -> float:
        """d macs / d n[group] at ``counts``."""
        inner = self.coef * self.inputs.size(counts) if self.inputs is not None else 0.0
        grad = self.positions * self.out.per.get(group, 0.0) * (inner + self.add)
        if self.inputs is not None:
            grad += self.positions * self.out.size(counts) * self.coef * self.inputs.per.get(group, 0.0)
        return grad


# parameter-free modules Torch-Pruning counts, one MAC per input element (functional ops are not counted)
COUNTED_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                       nn.AdaptiveMaxPool2d)


def _layer(name: str, module: nn.Module, positions: int, axes: dict[tuple[str, int], Axis]) -> LayerMacs:
    """The MAC formula of one Conv2d, Linear or BatchNorm2d."""
    bias = 1.0 if getattr(module, "bias", None) is not None else 0.0
    if isinstance(module, nn.BatchNorm2d):
        return LayerMacs(name, positions, axes[(name, 0)], None, 0.0, 2.0)
    if isinstance(module, nn.Linear):
        return LayerMacs(name, positions, axes[(name, 0)], axes[(name, 1)], 1.0, bias)
    kernel = float(module.kernel_size[0] * module.kernel_size[1])
    if module.groups > 1:  # depthwise (the only grouped conv the channel granularity accepts)
        return LayerMacs(name, positions, axes[(name, 0)], None, 0.0, kernel + bias)
    return LayerMacs(name, positions, axes[(name, 0)], axes[(name, 1)], kernel, bias)


def _trace(model: nn.Module, input_size: int, axes: dict[tuple[str, int], Axis]) -> list[LayerMacs]:
    """Every counted layer of ``model`` in forward order on one image. A parameter-free module of
    ``COUNTED_ELEMENTWISE`` gets the channel axis of the layer whose output it reads (followed through
    in-place ops and chains of such modules)."""
    layers: list[LayerMacs] = []
    axis_of: dict[int, Axis] = {}  # id of an output tensor -> its channel axis
    alive: list[torch.Tensor] = []  # keeps traced outputs alive, so their ids are not reused

    def hook(name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor):
            return
        alive.append(output)
        if (name, 0) in axes:
            layers.append(_layer(name, module, output[0, 0].numel() if output.dim() == 4 else 1, axes))
            axis_of[id(output)] = axes[(name, 0)]
        elif isinstance(module, COUNTED_ELEMENTWISE) and id(inputs[0]) in axis_of:
            layers.append(LayerMacs(name, inputs[0][0, 0].numel(), axis_of[id(inputs[0])], None, 0.0, 1.0))
            axis_of[id(output)] = axis_of[id(inputs[0])]

    trace_forward(model, input_size, hook, lambda m: not list(m.children()))  # every leaf module
    return layers


class ChannelMacs:
    """The exact MAC count of a channel granularity's models as a function of the groups' live counts."""

    def __init__(self, gran) -> None:
        """``gran``: a ``ChannelGranularity``. A model whose group slices cover channels unevenly (so the
        count alone does not fix a layer's size) is a ``UsageError``."""
        model = scratch_model(gran.model_name, gran.num_classes)
        axes: dict[tuple[str, int], Axis] = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                for dim in (0, 1) if module.weight.dim() > 1 else (0,):
                    axes[(name, dim)] = Axis(float(module.weight.shape[dim]))
        self.layers = _trace(model, gran.input_size, axes)
        for group in gran.groups:
            for s in group.slices:
                if s.param != "weight" or (s.module, s.dim) not in axes:
                    continue
                per = torch.bincount(s.channel, minlength=group.size)
                if not bool((per == per[0]).all()):
                    raise UsageError(f"{s.module}: channels of {group.root} cover it unevenly; MAC budgets cannot "
                                     "be counted from channel counts for this model")
                axis = axes[(s.module, s.dim)]
                axis.const -= len(s.index)
                axis.per[group.root] = axis.per.get(group.root, 0.0) + float(per[0])
        self.units = [g.root for g in gran.groups]

    def macs(self, counts: dict[str, int]) -> int:
        """MACs per image of the export of a model whose groups keep ``counts`` live channels."""
        return round(sum(layer.macs(counts) for layer in self.layers))

    def marginal(self, counts: dict[str, int]) -> dict[str, float]:
        """MACs one more live channel of each group adds at ``counts`` (the derivative: exact for one channel
        in one group, since no layer of the zoo has one group on both of its axes)."""
        return {g: sum(layer.marginal(counts, g) for layer in self.layers) for g in self.units}

    def fit_allocation(self, counts: dict[str, int], allocation: dict[str, int], limit: float) -> dict[str, int]:
        """``allocation`` ({group: channels to regrow} on top of ``counts``) trimmed, one channel at a time
        from the allocated group whose channel costs most, until the regrown model's MACs are <= ``limit``."""
        plan = dict(allocation)
        while True:
            after = {g: n + plan.get(g, 0) for g, n in counts.items()}
            if self.macs(after) <= limit or not any(plan.values()):
                return {g: n for g, n in plan.items() if n > 0}
            costs = self.marginal(after)
            worst = max((g for g, n in plan.items() if n > 0), key=lambda g: costs[g])
            plan[worst] -= 1


@functools.lru_cache(maxsize=16)
def channel_macs(gran) -> ChannelMacs:
    """The ``ChannelMacs`` of a (cached, so hashable) ``ChannelGranularity``, built once."""
    return ChannelMacs(gran)


def live_counts(gran, model: nn.Module) -> dict[str, int]:
    """{group root: live channels} of a channel-masked model."""
    return {root: int(mask.sum()) for root, mask in gran.masks(model).items()}


def trace_forward(model: nn.Module, input_size: int, hook: Callable, modules: Callable[[nn.Module], bool]) -> None:
    """Run ``model`` (eval, no grad) on one zero ``input_size`` image with ``hook(name, module, inputs,
    output)`` called after every module for which ``modules(module)`` is true; the hooks are removed after."""
    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(n, mod, i, o))
               for name, m in model.named_modules() if modules(m)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()


def output_sizes(model: nn.Module, input_size: int) -> dict[str, int]:
    """H_out·W_out of every Conv2d (1 for Linear) on one ``input_size`` image, by layer name; layers that
    do not run are absent."""
    sizes: dict[str, int] = {}
    trace_forward(model, input_size, lambda n, mod, i, o: sizes.__setitem__(n, o[0, 0].numel() if o.dim() == 4 else 1),
                  lambda m: isinstance(m, (nn.Conv2d, nn.Linear)))
    return sizes


def example_input(input_size: int) -> torch.Tensor:
    return torch.zeros(1, 3, input_size, input_size)


def params_and_macs(model: nn.Module, input_size: int) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of a plain model (no masks), as Torch-Pruning counts
    them: convs, Linears and BatchNorms; functional ops (ReLU, adds, the SE product) are not counted."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model, example_input(input_size).to(device))
    return int(params), int(macs)


def sparse_macs(gran: Granularity, model: nn.Module) -> int:
    """MACs per image of the kept weights: sum over layers of kept weights x output positions."""
    costs, masks = gran.unit_costs(), gran.masks(model)
    return int(sum(int(masks[unit].sum()) * costs[unit].macs for unit in masks))
