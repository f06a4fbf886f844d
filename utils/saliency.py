"""Weight saliency ``S = mean_batches[(dL/dθ)^2] · θ^2`` (empirical Fisher diagonal times magnitude^2).

Reference model (``--saliency_model``):
* ``dense`` (default, as the original): the dense pretrained model in eval mode; θ is its weight, so a
  pruned position carries the saliency its weight had before pruning.
* ``sparse``: the current sparse model in eval mode, gradients taken w.r.t. the *effective* weight
  ``W_eff = weight_orig * mask`` (so pruned positions get the gradient a regrown weight would see) and θ
  is ``weight_orig``, the stored (decayed) value at pruned positions.

Gradients are batch-mean cross-entropy gradients over ``num_batches`` batches of the training loader
(all by default); layers that get no gradient (EfficientNet's unused ``layers.0.conv1``) score 0.
Results can be cached on disk, keyed by the checkpoint's content and the settings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.loader import DeviceLoader
from utils.checkpoint import atomic_save
from utils.masks import has_reparam, prunable_modules

Scores = dict[str, torch.Tensor]  # layer name -> float32 tensor shaped like the weight


def _theta(module: nn.Module) -> torch.Tensor:
    """The weight values saliency multiplies: ``weight_orig`` under a mask, else ``weight``."""
    return (module.weight_orig if has_reparam(module) else module.weight).detach()


def _batches(loader: DeviceLoader, num_batches: int | None):
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def saliency(model: nn.Module, loader: DeviceLoader, num_batches: int | None = None,
             layers: list[str] | None = None) -> Scores:
    """``mean_batches[(dL/dW)^2] · θ^2`` per layer (shape of the weight), model in eval mode, fp32.

    ``W`` is the weight the forward pass used (the effective weight under a mask); θ see ``_theta``.
    """
    modules = prunable_modules(model)
    layers = layers or list(modules)
    was_training = model.training
    model.eval()
    sums = {name: torch.zeros_like(_theta(modules[name])) for name in layers}
    count = 0
    for images, labels in _batches(loader, num_batches):
        loss = F.cross_entropy(model(images), labels)
        # after the forward pass, module.weight is the tensor that pass used (orig * mask under a mask)
        grads = torch.autograd.grad(loss, [modules[n].weight for n in layers], allow_unused=True)
        for name, grad in zip(layers, grads, strict=True):
            if grad is not None:
                sums[name] += grad.detach().pow(2)
        count += 1
    model.train(was_training)
    return {name: sums[name] / max(count, 1) * _theta(modules[name]).pow(2) for name in layers}


def per_class_saliency(model: nn.Module, loader: DeviceLoader, num_classes: int, num_batches: int | None = None,
                       layers: list[str] | None = None, second_order: bool = True) -> Scores:
    """Saliency restricted to each class's samples: {layer: [num_classes, *weight shape]}.

    ``second_order=True`` gives ``mean[g^2] · θ^2`` per class, else ``mean[|g|] · |θ|``; ``g`` is the
    gradient of the mean loss over that class's samples in a batch (classes absent from a batch skip it).
    """
    modules = prunable_modules(model)
    layers = layers or list(modules)
    was_training = model.training
    model.eval()
    sums = {n: torch.zeros(num_classes, *_theta(modules[n]).shape, device=_theta(modules[n]).device) for n in layers}
    counts = torch.zeros(num_classes, device=next(model.parameters()).device)
    for images, labels in _batches(loader, num_batches):
        losses = F.cross_entropy(model(images), labels, reduction="none")
        weights = [modules[n].weight for n in layers]
        present = torch.unique(labels).tolist()  # one host sync per batch, in an analysis tool
        for k, c in enumerate(present):
            grads = torch.autograd.grad(losses[labels == c].mean(), weights, allow_unused=True,
                                        retain_graph=k < len(present) - 1)
            for name, grad in zip(layers, grads, strict=True):
                if grad is not None:
                    sums[name][c] += grad.detach().pow(2) if second_order else grad.detach().abs()
            counts[c] += 1
    model.train(was_training)
    out = {}
    for name in layers:
        theta = _theta(modules[name])
        factor = theta.pow(2) if second_order else theta.abs()
        shape = (-1,) + (1,) * theta.dim()
        out[name] = sums[name] / counts.clamp_min(1).view(shape) * factor
    return out


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_saliency(checkpoint: Path, model: nn.Module, loader: DeviceLoader, cache_dir: Path,
                    settings: dict, num_batches: int | None = None) -> Scores:
    """``saliency(model, ...)``, cached in ``cache_dir`` under a key made of the checkpoint file's content
    and ``settings`` (anything that changes the result: model, data set, split, seed, batches, mode).
    A changed checkpoint or setting gives a new key, so stale scores are never reused."""
    key = hashlib.sha1(json.dumps({"ckpt": _file_digest(Path(checkpoint)), "num_batches": num_batches, **settings},
                                  sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"saliency_{key}.pt"
    device = next(model.parameters()).device
    if path.is_file():
        return {k: v.to(device) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    scores = saliency(model, loader, num_batches)
    atomic_save({k: v.cpu() for k, v in scores.items()}, path)
    return scores
