"""The type aliases the packages share: per-unit tensors keyed by name.

A unit is a prunable layer (weights) or a coupled channel group (channels, keyed by its root layer); each module
that takes these says the shape it expects (a layer's weight shape, or ``[C]`` for a channel group).
"""
from __future__ import annotations

import torch

Masks = dict[str, torch.Tensor]  # unit -> bool keep-mask (True = kept), shaped like the unit's weight or [C]
Scores = dict[str, torch.Tensor]  # unit (or "module.param") -> float scores shaped like its mask (or param)
