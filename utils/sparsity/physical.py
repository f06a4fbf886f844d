"""Physical export of a channel-masked model: a smaller plain model with the same outputs.

``export_model`` loads the masked model's effective weights (``orig * mask``) into a fresh model of the
same architecture, builds Torch-Pruning's dependency graph on it and removes every masked channel of
every group with ``DG.get_pruning_group(root, prune_out_channels, dropped).prune()``. The graph's
pruning history (a list of ``[root name, is_out_channel, [indices]]``) is all it takes to rebuild the
shapes, so an exported checkpoint is a state dict plus that history: it loads with ``weights_only``
(no pickled modules) through ``rebuild_exported``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch_pruning as tp

from models import create_model
from utils.core.errors import UsageError
from utils.sparsity.macs import example_input
from utils.sparsity.masks import merged_state

History = list[list]  # [[module name, is_out_channel_pruning, [channel indices]], ...]


def export_model(granularity, model: nn.Module) -> tuple[nn.Module, History]:
    """(the physically pruned CPU copy of ``model``, its pruning history); ``model`` is not changed.

    ``granularity`` is the model's ``ChannelGranularity``.
    """
    masks = {root: mask.cpu() for root, mask in granularity.masks(model).items()}
    plain = create_model(granularity.model_name, granularity.num_classes)
    plain.load_state_dict({k: v.cpu() for k, v in merged_state(model).items()})
    graph = tp.DependencyGraph().build_dependency(plain, example_inputs=example_input(granularity.input_size))
    modules = dict(plain.named_modules())
    for root, keep in masks.items():
        dropped = (~keep).nonzero().flatten().tolist()
        if dropped:
            module = modules[root]
            graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, dropped).prune()
    plain.train(model.training)
    return plain, [[name, bool(out), [int(i) for i in idxs]] for name, out, idxs in graph.pruning_history()]


@torch.no_grad()
def verify_export(masked: nn.Module, exported: nn.Module, input_size: int) -> float:
    """Max |masked - exported| over 4 random images in eval mode; a ``UsageError`` when it exceeds 1e-4 of
    the outputs' scale (nothing should then be written). Both models are left in eval mode."""
    device = next(masked.parameters()).device
    x = torch.randn(4, 3, input_size, input_size, device=device)
    reference = masked.eval()(x)
    diff = float((reference - exported.to(device).eval()(x)).abs().max())
    if diff > 1e-4 * max(1.0, float(reference.abs().max())):
        raise UsageError(f"the export's outputs differ from the masked model's by {diff:.2e}: not written; please "
                         "report this model")
    return diff


def rebuild_exported(model_name: str, num_classes: int, input_size: int, history: History) -> nn.Module:
    """A fresh model of the exported shapes (weights still random: load the exported state dict next)."""
    model = create_model(model_name, num_classes)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(input_size))
    graph.load_pruning_history([tuple(entry) for entry in history])
    return model
