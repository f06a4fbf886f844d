"""The ``channel`` granularity: coupled channel groups from Torch-Pruning's dependency graph.

A group is every slice that one set of channels touches: producer rows (and biases) of the convs and
Linears that write them, BatchNorm gamma/beta, consumer input columns, depthwise convs, residual adds
(all of a stage's ``conv2``/``bn2``, shortcut and stem together) and SE gates. Its keep-mask is one bool
vector over its channels, the single source of truth (the checkpoint's ``channel_masks``, keyed by the
group's **root**: its first producer layer in module order). Each member's element masks are derived
from it in the ``torch.nn.utils.prune`` reparametrisation (``X.weight_mask``, ``X.bias_mask``, BN
``weight_mask``/``bias_mask``), so training code is the same as for weight masks and a masked channel is
exactly zero through any training. Every group keeps at least one live channel; the classifier's
outputs are never in a group.

Reading masks back: channel c of a group is live iff row c of its root's ``weight_mask`` has a live
entry. This inverts the derivation exactly because every group keeps a live channel (so a live row
always has a live input column) and this granularity is never mixed with weight masks.

The groups are traced once per architecture (and class count) on a fresh CPU model; they refer to
modules by qualified name, so they apply to any copy of the model on any device.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp

from models import scratch_model
from utils.core.aliases import Masks, Scores
from utils.core.errors import UsageError
from utils.sparsity.granularity import Granularity, UnitCost, register_granularity
from utils.sparsity.grow_channels import regrow_channels
from utils.sparsity.macs import output_sizes, params_and_macs
from utils.sparsity.masks import has_param_mask, set_param_mask, sparsity, stored_param
from utils.sparsity.physical import export_model

# which parameters (and along which dim) a producer (out-channel) or consumer (in-channel) slice covers
_PRODUCER_PARAMS = (("weight", 0), ("bias", 0))
_CONSUMER_PARAMS = (("weight", 1),)


@dataclass(frozen=True)
class Slice:
    """Positions ``index`` along ``dim`` of ``module.param`` that carry group channels ``channel``."""

    module: str
    param: str  # "weight" | "bias"
    dim: int  # 0: rows (outputs), 1: columns (inputs)
    index: torch.Tensor  # long [n], positions along dim
    channel: torch.Tensor  # long [n], the group channel of each position (AlexNet's flatten: 4 per channel)
    kind: str  # "producer" (conv/Linear rows), "norm" (BatchNorm entries) or "consumer" (input columns)


@dataclass(frozen=True)
class ChannelGroup:
    """One coupled set of ``size`` channels and every slice it touches."""

    root: str
    size: int
    slices: tuple[Slice, ...]

    def members(self, kind: str) -> list[Slice]:
        """The slices of one kind (see ``Slice.kind``)."""
        return [s for s in self.slices if s.kind == kind]


def classifier_name(model: nn.Module) -> str:
    """The output layer: the last Linear in module order (its outputs are the classes, never pruned)."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UsageError("the model has no Linear output layer; channel groups need to know the classifier")
    return linears[-1]


def _slices(name: str, module: nn.Module, producer: bool, index: torch.Tensor, channel: torch.Tensor) -> list[Slice]:
    """The parameter slices of one group member."""
    if isinstance(module, nn.BatchNorm2d):
        if not module.affine:  # without gamma/beta a masked channel would still output -mean/sqrt(var)
            raise UsageError(f"{name}: BatchNorm without affine parameters is not supported by the channel granularity")
        params, kind = _PRODUCER_PARAMS, "norm"
    elif isinstance(module, (nn.Conv2d, nn.Linear)):
        grouped = isinstance(module, nn.Conv2d) and module.groups > 1
        depthwise = grouped and module.groups == module.in_channels == module.out_channels
        if grouped and not depthwise:
            raise UsageError(f"{name}: grouped convolutions (groups={module.groups}) are not supported by the "
                             "channel granularity")
        if depthwise and not producer:
            return []  # a depthwise conv's input channels are its output channels: the producer slice covers them
        params, kind = (_PRODUCER_PARAMS, "producer") if producer else (_CONSUMER_PARAMS, "consumer")
    elif any(True for _ in module.parameters(recurse=False)):
        raise UsageError(f"{name}: {type(module).__name__} layers are not supported by the channel granularity")
    else:
        return []
    return [Slice(name, param, dim, index, channel, kind) for param, dim in params
            if getattr(module, param, None) is not None]


def trace_groups(model: nn.Module, input_size: int) -> list[ChannelGroup]:
    """Every coupled channel group of ``model`` (traced on one ``input_size`` image), in root order.

    A model Torch-Pruning cannot trace is a ``UsageError``.
    """
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    classifier = dict(model.named_modules())[classifier_name(model)]
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, 3, input_size, input_size))
        raw = list(graph.get_all_groups(ignored_layers=[classifier], root_module_types=(nn.Conv2d, nn.Linear)))
    except Exception as exc:  # tracing failures come as many exception types
        raise UsageError(f"Torch-Pruning cannot trace this model ({type(exc).__name__}: {exc})") from exc
    groups = []
    for group in raw:
        slices = []
        for item in group:
            module = item.dep.target.module
            if module not in names:
                continue  # functional ops (adds, ReLUs, reshapes) carry no parameters
            producer = graph.is_out_channel_pruning_fn(item.dep.handler)
            slices += _slices(names[module], module, producer, torch.tensor(item.idxs, dtype=torch.long),
                              torch.tensor(item.root_idxs, dtype=torch.long))
        roots = [s for s in slices if s.kind == "producer" and s.param == "weight"]
        root = min(roots, key=lambda s: order[s.module])
        if not torch.equal(root.index, root.channel):  # export and masks() index the root's rows by channel
            raise UsageError(f"{root.module}: its rows do not map one-to-one to its group's channels (unsupported)")
        groups.append(ChannelGroup(root.module, int(root.channel.max()) + 1, tuple(slices)))
    return sorted(groups, key=lambda g: order[g.root])


@register_granularity("channel")
class ChannelGranularity(Granularity):
    """Soft channel masks over the coupled groups of one architecture (see the module docstring)."""

    init_strategies = ("dense", "preserve", "kaiming", "magnitude")
    default_init = "dense"
    keep_per_unit = 1
    unit_noun = "channel group"
    prune_prefix, file_tag, regrowth_stem, greedy_stem = "structured_", "ch", "regrowth_structure", "greedy_channel"
    summary_stem = "pipeline_structure_summary"
    device_limit = "macs"
    per_class_scores = False
    exportable = True
    swap_refusal = ("holds channel masks: swap cycles (RigL, GraNet) move single weights inside a layer; a channel "
                    "swap would change the exported shapes and the coupled groups at every swap. Finetune it "
                    "without swap cycles")
    foreign_masks = "holds unstructured weight masks; this stage needs a dense or channel-pruned checkpoint"
    refused_inits = {"zero": "zero producer rows and zero consumer columns leave a regrown channel dead forever "
                             "(neither gets a gradient); use preserve (function-preserving) or dense"}

    def __init__(self, model_name: str, num_classes: int, input_size: int) -> None:
        super().__init__(model_name, num_classes, input_size)
        model = scratch_model(model_name, num_classes)
        self.groups = trace_groups(model, input_size)
        self.by_root = {g.root: g for g in self.groups}
        self._shapes = {f"{n}.{p}": tuple(t.shape) for n, m in model.named_modules()
                        for p, t in m.named_parameters(recurse=False)}
        self._by_param: dict[str, list[tuple[str, Slice]]] = defaultdict(list)
        for group in self.groups:
            for s in group.slices:
                self._by_param[f"{s.module}.{s.param}"].append((group.root, s))

    # ---- masks ----------------------------------------------------------------------------------------
    def units(self) -> list[str]:
        return [g.root for g in self.groups]

    def masks(self, model: nn.Module) -> Masks:
        modules = dict(model.named_modules())
        out = {}
        for group in self.groups:
            root = modules[group.root]
            device = root.weight_orig.device if has_param_mask(root, "weight") else root.weight.device
            alive = torch.ones(group.size, dtype=torch.bool, device=device)
            if has_param_mask(root, "weight"):
                rows = root.weight_mask.flatten(1).amax(1) > 0  # no full-size bool copy
                s = next(s for s in group.members("producer") if s.module == group.root and s.param == "weight")
                alive[s.channel.to(device)] = rows[s.index.to(device)]
            out[group.root] = alive
        return out

    def set_masks(self, model: nn.Module, masks: Masks, current: Masks | None = None) -> None:
        """``current``: the model's masks when the caller has them already (saves reading them again)."""
        full = {**(current if current is not None else self.masks(model)), **masks}
        for root, mask in full.items():
            group = self.by_root.get(root)
            if group is None:
                raise UsageError(f"'{root}' is not a channel group of {self.model_name}")
            if tuple(mask.shape) != (group.size,):
                raise UsageError(f"channel mask of {root} has shape {tuple(mask.shape)}, the group has {group.size}")
            if not bool(mask.any()):
                raise UsageError(f"channel group {root} would lose its last channel")
        modules = dict(model.named_modules())
        # only the parameters the given groups touch change (each derived from every group that touches it)
        touched = {f"{s.module}.{s.param}" for root in masks for s in self.by_root[root].slices}
        with torch.no_grad():
            for key in touched:
                entries = self._by_param[key]
                module_name, param = key.rsplit(".", 1)
                module = modules[module_name]
                target = stored_param(module, param)
                mask = torch.ones([1] * target.dim(), dtype=torch.bool, device=target.device)
                for root, s in entries:  # a broadcast product of one vector per masked dim, expanded once
                    along = torch.ones(target.shape[s.dim], dtype=torch.bool, device=target.device)
                    along[s.index.to(target.device)] = full[root].to(target.device)[s.channel.to(target.device)]
                    view = [1] * target.dim()
                    view[s.dim] = -1
                    mask = mask & along.view(view)
                set_param_mask(module, param, mask.expand(target.shape))

    def ensure_masks(self, model: nn.Module) -> None:
        self.set_masks(model, self.masks(model))

    def checkpoint_masks(self, model: nn.Module) -> Masks | None:
        return {root: mask.cpu() for root, mask in self.masks(model).items()}

    # ---- scores -------------------------------------------------------------------------------------
    def scored_params(self) -> list[str]:
        return list(self._by_param)

    def unit_scores(self, param_scores: Scores) -> Scores:
        out: Scores = {}
        device = next(iter(param_scores.values())).device if param_scores else torch.device("cpu")
        for group in self.groups:
            total = torch.zeros(group.size, dtype=torch.float64, device=device)
            for s in group.slices:
                score = param_scores.get(f"{s.module}.{s.param}")
                if score is not None:
                    per_position = score.movedim(s.dim, 0)[s.index.to(score.device)].reshape(len(s.index), -1)
                    total.index_add_(0, s.channel.to(device), per_position.sum(1).double())
            out[group.root] = total.float()
        return out

    def probe_layer(self, unit: str) -> str:
        return unit

    # ---- regrowth and cost ------------------------------------------------------------------------------
    def regrow(self, model: nn.Module, allocation: dict[str, int], scores: Scores, init_strategy: str,
               dense: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
               generator: torch.Generator | None = None) -> dict[str, int]:
        return regrow_channels(self, model, allocation, scores, init_strategy, dense, optimizer, generator)

    def unit_costs(self) -> dict[str, UnitCost]:
        sizes = output_sizes(scratch_model(self.model_name, self.num_classes), self.input_size)
        costs = {}
        for group in self.groups:
            weights = macs = 0.0
            for s in group.slices:
                shape = self._shapes[f"{s.module}.{s.param}"]
                per_position = torch.Size(shape).numel() / shape[s.dim]
                weights += per_position * len(s.index)
                if s.kind != "norm" and s.param == "weight":
                    macs += per_position * len(s.index) * sizes.get(s.module, 0)
            costs[group.root] = UnitCost(group.size, weights / group.size, macs / group.size)
        return costs

    def export(self, model: nn.Module) -> tuple[nn.Module, list]:
        return export_model(self, model)

    def describe(self, model: nn.Module) -> dict[str, float]:
        exported, _ = self.export(model)
        params, macs = params_and_macs(exported, self.input_size)
        return {"weight_sparsity": sparsity(model), "params": params, "macs": macs}
