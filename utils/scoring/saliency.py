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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from data.loader import DeviceLoader
from utils.core.files import atomic_save
from utils.core.log import LOG
from utils.sparsity.masks import prunable_modules, stored_param

Scores = dict[str, torch.Tensor]  # layer (or "module.param") name -> float32 tensor shaped like it


def _theta(module: nn.Module, param: str = "weight") -> torch.Tensor:
    """The values saliency multiplies: ``<param>_orig`` under a mask, else the parameter itself."""
    return stored_param(module, param).detach()


def _batches(loader: DeviceLoader, num_batches: int | None):
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def param_saliency(model: nn.Module, loader: DeviceLoader, params: list[str], num_batches: int | None = None,
                   order: int = 2) -> Scores:
    """Per-entry scores of the parameters ``params`` (``"module.param"``, e.g. ``"layer1.0.bn1.weight"``),
    shaped like each parameter, model in eval mode, fp32:

    * ``order=2``: ``mean_batches[(dL/dW)^2] · θ^2`` (the saliency, an empirical-Fisher OBD term);
    * ``order=1``: ``mean_batches[|dL/dW|] · |θ|`` (first-order Taylor, ``mean |g·θ|``).

    ``W`` is the tensor the forward pass used (``orig * mask`` under a mask), θ see ``_theta``. A
    parameter that gets no gradient scores 0.
    """
    modules = dict(model.named_modules())
    targets = [(modules[key.rsplit(".", 1)[0]], key.rsplit(".", 1)[1]) for key in params]
    was_training = model.training
    model.eval()
    sums = {key: torch.zeros_like(_theta(m, p)) for key, (m, p) in zip(params, targets, strict=True)}
    count = 0
    for images, labels in _batches(loader, num_batches):
        with torch.enable_grad():  # also when called under no_grad (e.g. from a pruner)
            loss = F.cross_entropy(model(images), labels)
            # after the forward pass, module.<param> is the tensor that pass used (orig * mask under a mask)
            grads = torch.autograd.grad(loss, [getattr(m, p) for m, p in targets], allow_unused=True)
        for key, grad in zip(params, grads, strict=True):
            if grad is not None:
                sums[key] += grad.detach().pow(2) if order == 2 else grad.detach().abs()
        count += 1
    model.train(was_training)
    return {key: sums[key] / max(count, 1) * (_theta(m, p).pow(2) if order == 2 else _theta(m, p).abs())
            for key, (m, p) in zip(params, targets, strict=True)}


def saliency(model: nn.Module, loader: DeviceLoader, num_batches: int | None = None,
             layers: list[str] | None = None) -> Scores:
    """``mean_batches[(dL/dW)^2] · θ^2`` of the weight of every prunable layer (or ``layers``), by layer name."""
    layers = layers or list(prunable_modules(model))
    scores = param_saliency(model, loader, [f"{name}.weight" for name in layers], num_batches)
    return {name: scores[f"{name}.weight"] for name in layers}


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


def cached_scores(checkpoint: Path, compute: Callable[[], Scores], cache_dir: Path, settings: dict,
                  device: torch.device) -> Scores:
    """``compute()``, cached in ``cache_dir`` under a key made of the checkpoint file's content and
    ``settings`` (anything that changes the result: model, data set, split, seed, batches, mode,
    granularity). A changed checkpoint or setting gives a new key, so stale scores are never reused."""
    key = hashlib.sha1(json.dumps({"ckpt": _file_digest(Path(checkpoint)), **settings},
                                  sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"saliency_{key}.pt"
    if path.is_file():
        LOG.info("scores: reused %s (same checkpoint content and settings)", path)
        return {k: v.to(device) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()}
    scores = compute()
    try:
        atomic_save({k: v.cpu() for k, v in scores.items()}, path)
    except OSError as exc:  # a cache is an optimisation: a read-only save_dir must not stop the stage
        LOG.warning("could not cache scores in %s (%s); continuing without the cache", cache_dir, exc)
    return scores
