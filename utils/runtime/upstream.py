"""The original repository's structured checkpoints, brought into our full-shape model with channel masks.

The original's ``prune_structure_ratio.py`` saves ``{'model': <slimmed nn.Module>, 'out_index_map': {conv:
[dense index of each live output channel, in physical order]}, 'pruned_out_dense_map': ...}``; its regrowth
scripts save ``index_map`` instead. ``inflate`` reads each group's live channels from its root's entry,
writes every slimmed tensor into a zero tensor of the dense shape at the positions of those channels along
every coupled dimension (rows, columns, BN entries and statistics; AlexNet's flatten gives 4 columns per
channel), and returns the state dict with the channel masks. Index maps that no longer match the physical
order (the original's regrowth appends channels but stores its map sorted) cannot be detected here: use the
prune-step checkpoints, whose maps are right.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from utils.core.errors import UsageError
from utils.core.log import LOG
from utils.runtime.checkpoint import Checkpoint


def _scatter(slim: torch.Tensor, shape: torch.Size, index: list[torch.Tensor | None]) -> torch.Tensor:
    """A zero tensor of ``shape`` holding ``slim`` at positions ``index[d]`` along each dim d (None: all)."""
    value = slim
    for dim, positions in enumerate(index):
        if positions is None:
            continue
        if len(positions) != value.shape[dim]:
            raise UsageError(f"the index map lists {len(positions)} channels where the slimmed tensor has "
                             f"{value.shape[dim]}: the map does not match the model")
        grown = list(value.shape)
        grown[dim] = shape[dim]
        value = torch.zeros(grown, dtype=slim.dtype).index_copy_(dim, positions, value)
    return value


def inflate(granularity, model: nn.Module, ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` (source ``original-structured``) as a full-shape checkpoint of ``model``'s architecture with
    ``channel_masks``; a map without an entry for some group's root is a ``UsageError``."""
    index_map = ckpt.extra["index_map"]
    if ckpt.extra.get("map_kind") == "index_map":
        LOG.warning("this checkpoint carries the original regrowth's 'index_map', which can disagree with the "
                    "physical channel order (its regrowth appends channels but stores the map sorted): prefer the "
                    "prune-step checkpoints ('out_index_map')")
    live = {}
    for group in granularity.groups:
        if group.root not in index_map:
            raise UsageError(f"the original checkpoint's index map has no entry for {group.root}; is --m_name right?")
        order = index_map[group.root]
        if len(set(order)) != len(order) or not all(0 <= i < group.size for i in order):
            raise UsageError(f"the original checkpoint's index map for {group.root} is not a list of distinct "
                             f"channels in [0, {group.size}): the file is damaged or from another model")
        live[group.root] = torch.tensor(order, dtype=torch.long)
    slices = {}  # "module.param" -> {dim: positions in physical order}
    for group in granularity.groups:
        for s in group.slices:
            order = torch.cat([s.index[s.channel == c] for c in live[group.root]])
            slices.setdefault(f"{s.module}.{s.param}", {})[s.dim] = order
            if s.kind == "norm" and s.param == "weight":  # BN statistics follow gamma
                for stat in ("running_mean", "running_var"):
                    slices.setdefault(f"{s.module}.{stat}", {})[0] = order
    state = {}
    for key, dense in model.state_dict().items():
        if key not in ckpt.state_dict:
            raise UsageError(f"the original checkpoint has no {key}; is --m_name right?")
        dims = slices.get(key, {})
        state[key] = _scatter(ckpt.state_dict[key].detach().cpu(), dense.shape,
                              [dims.get(d) for d in range(dense.dim())])
    masks = {root: torch.zeros(g.size, dtype=torch.bool).index_fill_(0, live[root], True)
             for root, g in granularity.by_root.items()}
    return Checkpoint(state, ckpt.source, ckpt.model, ckpt.dataset, ckpt.num_classes, masks, ckpt.meta)
