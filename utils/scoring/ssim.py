"""Per-layer similarity between a dense and a sparse model: which layers did pruning damage most?

For every prunable layer both models see the same validation images. A forward hook reduces each conv
output Z [B, C, H, W] **on the device, inside the hook** to the original's attention map:
``a_b = sum_c Z_b`` (signed channel sum of the raw conv output), ``a_b / ||a_b||_1`` per image, summed
over images (a running sum: memory does not grow with the number of batches). Their mean is min-max
normalised to [0, 1]. A Linear layer keeps the running sum of its outputs instead.

Similarity of two maps (in [-1, 1], 1 = identical): SSIM from pytorch-msssim with a **uniform** window of
size ``w = min(7, H, W)`` made odd, ``data_range=1``, K = (0.01, 0.03), population covariance, averaged
over the valid (interior) positions; this equals
``skimage.metrics.structural_similarity(a, b, data_range=1, win_size=w, use_sample_covariance=False)``.
When ``w < 3`` (maps of 1x1 or 2x2) and for Linear layers (mean outputs) it is the cosine similarity.
A layer whose hook never fires (e.g. EfficientNet's unused ``layers.0.conv1``) scores NaN and is never
selected.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
from pytorch_msssim import ssim

from data.loader import DeviceLoader
from utils.runtime.train import autocast
from utils.sparsity.masks import prunable_modules


class MapRecorder:
    """Forward hooks that keep, per layer, the running sum of attention maps and the image count."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = dict.fromkeys(layers, 0)
        modules = prunable_modules(model)
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in layers]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            out = output.detach().float()
            if out.dim() == 4:  # [B, C, H, W] -> per-image L1-normalised signed channel sum [B, H, W]
                maps = out.sum(1)
                maps = maps / maps.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, 1, 1)
            else:  # Linear: [B, F]
                maps = out.flatten(1)
            total = maps.sum(0)
            self.sums[name] = total if name not in self.sums else self.sums[name] + total
            self.counts[name] += out.shape[0]
        return record

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def maps(self) -> dict[str, torch.Tensor]:
        """Mean map per layer that fired: conv maps [H, W] min-max normalised to [0, 1], Linear means [F]."""
        out = {}
        for name, total in self.sums.items():
            mean = total / self.counts[name]
            if mean.dim() == 2:
                low, high = mean.min(), mean.max()
                mean = (mean - low) / (high - low + 1e-8) if high > low else mean
            out[name] = mean
        return out


@contextlib.contextmanager
def recording(model: nn.Module, layers: Sequence[str]) -> Iterator[MapRecorder]:
    """``with recording(model, layers) as rec:`` - the hooks are removed on exit, also after an error."""
    recorder = MapRecorder(model, layers)
    try:
        yield recorder
    finally:
        recorder.remove()


@torch.no_grad()
def attention_maps(models: Sequence[nn.Module], loader: DeviceLoader, num_batches: int,
                   layers: Sequence[str] | None = None, amp: bool = True) -> list[dict[str, torch.Tensor]]:
    """Attention maps of ``layers`` (default: every prunable layer) for each model over the first
    ``num_batches`` batches of ``loader``; the models share one pass over the data and are left in the
    train/eval mode they came in."""
    layers = list(layers or prunable_modules(models[0]))
    modes = [m.training for m in models]
    with contextlib.ExitStack() as stack:
        recorders = [stack.enter_context(recording(m.eval(), layers)) for m in models]
        for i, (images, _) in enumerate(loader):
            if i >= num_batches:
                break
            with autocast(loader.device, amp):
                for model in models:
                    model(images)
    for model, mode in zip(models, modes, strict=True):
        model.train(mode)
    return [r.maps() for r in recorders]


def uniform_window(size: int) -> torch.Tensor:
    """The 1-D averaging window pytorch-msssim applies along each axis of a one-channel 4-D input:
    [1, 1, 1, size], entries 1/size."""
    return torch.full((1, 1, 1, size), 1.0 / size)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors; 0 when either is (nearly) zero."""
    a, b = a.flatten().double(), b.flatten().double()
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 1e-8 else 0.0


def window_size(height: int, width: int) -> int:
    """SSIM window: ``min(7, H, W)``, minus one when even."""
    size = min(7, height, width)
    return size - 1 if size % 2 == 0 else size


def map_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two [H, W] maps in [0, 1] (uniform window, see module doc), or cosine when the window is
    below 3 or the inputs are vectors. Result in [-1, 1]."""
    if a.dim() != 2 or window_size(*a.shape) < 3:
        return cosine(a, b)
    win = uniform_window(window_size(*a.shape))
    return float(ssim(a[None, None].float(), b[None, None].float(), data_range=1.0, win=win, size_average=True))


def layer_similarity(dense: nn.Module, sparse: nn.Module, loader: DeviceLoader, num_batches: int,
                     amp: bool = True, layers: Sequence[str] | None = None) -> dict[str, float]:
    """Similarity of every prunable layer (or ``layers``) of ``sparse`` to ``dense`` (NaN for a layer that
    never ran)."""
    layers = list(layers or prunable_modules(sparse))
    dense_maps, sparse_maps = attention_maps([dense, sparse], loader, num_batches, layers, amp)
    return {name: map_similarity(dense_maps[name], sparse_maps[name]) if name in sparse_maps else math.nan
            for name in layers}


def select_layers(scores: dict[str, float], threshold: float) -> list[str]:
    """Layers with score <= ``threshold`` in ascending order (most damaged first); when none qualifies,
    the single lowest-scoring layer. NaN scores are never selected."""
    valid = {name: s for name, s in scores.items() if not math.isnan(s)}
    chosen = sorted((name for name, s in valid.items() if s <= threshold), key=valid.__getitem__)
    return chosen or [min(valid, key=valid.__getitem__)]
