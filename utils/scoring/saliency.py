"""Weight saliency ``S = F · θ^2``: a diagonal Fisher estimate ``F`` of the loss times the magnitude squared
(the OBD term), and its first-order sibling ``|g| · |θ|`` (Taylor).

Which Fisher (``--fisher``, ``FISHER_ESTIMATORS``):
* ``batch`` (default, as the original): ``F = mean_batches[(mean_{i in batch} dL_i/dθ)^2]``, the square of each
  batch's *mean* gradient, averaged over batches. This is a batch-level Fisher, not the empirical Fisher: for B
  images with per-image gradients g_i it is ``(1/B^2)·Σ_i g_i^2 + (1/B^2)·Σ_{i≠j} g_i g_j``, so its values (and,
  through the cross terms, its ranking) change with ``--batch_size``.
* ``per_sample``: ``F = mean_images[(dL_i/dθ)^2]``, the empirical Fisher proper (the mean of per-image squared
  gradients), independent of the batch size. Per-image gradients come from ``torch.func`` (``functional_call``
  + ``vmap(grad)``), in chunks of images sized to bound their memory; it costs more than one backward per batch.

Reference model (``--saliency_model``):
* ``dense`` (default, as the original): the dense pretrained model in eval mode; θ is its weight, so a
  pruned position carries the saliency its weight had before pruning.
* ``sparse``: the current sparse model in eval mode, gradients taken w.r.t. the *effective* weight
  ``W_eff = weight_orig * mask`` (so pruned positions get the gradient a regrown weight would see) and θ
  is ``weight_orig``, the stored (decayed) value at pruned positions.

Gradients are cross-entropy gradients over ``num_batches`` batches of the training loader (all by default);
layers that get no gradient (EfficientNet's unused ``layers.0.conv1``) score 0. Results can be cached on disk,
keyed by the checkpoint's content and the settings.
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
from utils.core.aliases import Scores
from utils.core.cache import read_cache, write_cache
from utils.core.files import file_digest
from utils.core.log import LOG
from utils.core.registry import Registry
from utils.sparsity.masks import has_param_mask, prunable_modules, stored_param

Target = tuple[nn.Module, str]  # (module, parameter name), e.g. (model.layer1[0].conv1, "weight")
# (model, targets, images [B, C, H, W], labels [B], order) -> (per target: summed |g|^order or None, terms summed)
FisherEstimator = Callable[[nn.Module, list[Target], torch.Tensor, torch.Tensor, int],
                           tuple[list[torch.Tensor | None], int]]
PER_SAMPLE_VALUES = 1 << 26  # per-image gradient values held at once (x4 bytes: 256 MiB); sets the chunk of images


def _theta(module: nn.Module, param: str = "weight") -> torch.Tensor:
    """The values saliency multiplies: ``<param>_orig`` under a mask, else the parameter itself."""
    return stored_param(module, param).detach()


def _batches(loader: DeviceLoader, num_batches: int | None):
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def _power(grad_: torch.Tensor, order: int) -> torch.Tensor:
    """``g^2`` (order 2, the Fisher term) or ``|g|`` (order 1, Taylor), elementwise."""
    return grad_.pow(2) if order == 2 else grad_.abs()


def batch_fisher(model: nn.Module, targets: list[Target], images: torch.Tensor, labels: torch.Tensor,
                 order: int) -> tuple[list[torch.Tensor | None], int]:
    """One term per batch: ``|dL/dW|^order`` of the batch-*mean* loss (the original's batch-level Fisher; ``W`` the
    tensor the forward pass used, ``orig * mask`` under a mask). None for a parameter without a gradient."""
    loss = F.cross_entropy(model(images), labels)
    # after the forward pass, module.<param> is the tensor that pass used (orig * mask under a mask)
    grads = torch.autograd.grad(loss, [getattr(m, p) for m, p in targets], allow_unused=True)
    return [None if g is None else _power(g.detach(), order) for g in grads], 1


def _functional_params(model: nn.Module, targets: list[Target]) -> tuple[list[str], dict[str, torch.Tensor]]:
    """(the ``functional_call`` key of each target's differentiated tensor, the tensors to substitute): a
    masked parameter's ``_orig`` is replaced by its effective value ``orig * mask`` and its mask by ones, so the
    gradient w.r.t. that key is ``dL/dW_eff`` at every position (pruned ones too), as in ``batch_fisher``."""
    names = {module: name for name, module in model.named_modules()}
    keys, values = [], {}
    for module, param in targets:
        prefix = f"{names[module]}.{param}"
        if has_param_mask(module, param):
            orig, mask = getattr(module, f"{param}_orig"), getattr(module, f"{param}_mask")
            keys.append(f"{prefix}_orig")
            values[f"{prefix}_orig"] = (orig * mask).detach()
            values[f"{prefix}_mask"] = torch.ones_like(mask)
        else:
            keys.append(prefix)
            values[prefix] = getattr(module, param).detach()
    return keys, values


def per_sample_fisher(model: nn.Module, targets: list[Target], images: torch.Tensor, labels: torch.Tensor,
                      order: int) -> tuple[list[torch.Tensor | None], int]:
    """One term per image: ``Σ_i |dL_i/dW|^order`` over the batch's images, each image's own gradient (the
    empirical Fisher's terms), from ``vmap(grad)`` over chunks of at most ``PER_SAMPLE_VALUES`` gradient values."""
    keys, values = _functional_params(model, targets)
    wanted = {key: values[key] for key in keys}
    fixed = {key: value for key, value in values.items() if key not in wanted}

    def loss_of(params: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(model, {**params, **fixed}, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    per_image = torch.func.vmap(torch.func.grad(loss_of), in_dims=(None, 0, 0))
    chunk = max(1, PER_SAMPLE_VALUES // max(1, sum(v.numel() for v in wanted.values())))
    sums = {key: torch.zeros_like(value) for key, value in wanted.items()}
    for start in range(0, len(labels), chunk):
        with torch.no_grad():  # grad() still differentiates inside; the outer graph (other parameters) is not kept
            grads = per_image(wanted, images[start:start + chunk], labels[start:start + chunk])
        for key in keys:
            sums[key] += _power(grads[key], order).sum(0)
    for module, param in targets:  # the pre-hooks left module.<param> as the substituted tensors made it
        if has_param_mask(module, param):
            setattr(module, param, getattr(module, f"{param}_orig") * getattr(module, f"{param}_mask"))
    return [sums[key] for key in keys], len(labels)


FISHER_ESTIMATORS: Registry[FisherEstimator] = Registry("fisher estimator", {"batch": batch_fisher,
                                                                              "per_sample": per_sample_fisher})


def param_saliency(model: nn.Module, loader: DeviceLoader, params: list[str], num_batches: int | None = None,
                   order: int = 2, fisher: str = "batch") -> Scores:
    """Per-entry scores of the parameters ``params`` (``"module.param"``, e.g. ``"layer1.0.bn1.weight"``),
    shaped like each parameter, model in eval mode, fp32:

    * ``order=2``: ``F · θ^2`` (the saliency, an OBD term), ``F`` the diagonal Fisher estimate ``fisher`` names:
      ``batch`` (the original's): ``mean_batches[(dL/dW)^2]`` of each batch's mean loss, a batch-level Fisher
      whose values change with the batch size; ``per_sample``: ``mean_images[(dL_i/dW)^2]``, the empirical Fisher;
    * ``order=1``: ``mean[|dL/dW|] · |θ|`` over batches (or images) likewise (first-order Taylor, ``mean |g·θ|``).

    ``W`` is the tensor the forward pass used (``orig * mask`` under a mask), θ see ``_theta``. A
    parameter that gets no gradient scores 0.
    """
    estimate = FISHER_ESTIMATORS.get(fisher, "--fisher")
    modules = dict(model.named_modules())
    targets = [(modules[key.rsplit(".", 1)[0]], key.rsplit(".", 1)[1]) for key in params]
    was_training = model.training
    model.eval()
    sums = {key: torch.zeros_like(_theta(m, p)) for key, (m, p) in zip(params, targets, strict=True)}
    count = 0
    for images, labels in _batches(loader, num_batches):
        with torch.enable_grad():  # also when called under no_grad (e.g. from a pruner)
            terms, n = estimate(model, targets, images, labels, order)
        for key, term in zip(params, terms, strict=True):
            if term is not None:
                sums[key] += term
        count += n
    model.train(was_training)
    return {key: sums[key] / max(count, 1) * (_theta(m, p).pow(2) if order == 2 else _theta(m, p).abs())
            for key, (m, p) in zip(params, targets, strict=True)}


def saliency(model: nn.Module, loader: DeviceLoader, num_batches: int | None = None,
             layers: list[str] | None = None, fisher: str = "batch") -> Scores:
    """``F · θ^2`` of the weight of every prunable layer (or ``layers``), by layer name; ``F`` the ``fisher``
    estimate (``batch``: ``mean_batches[(dL/dW)^2]`` of batch-mean losses; ``per_sample``: the empirical Fisher)."""
    layers = layers or list(prunable_modules(model))
    scores = param_saliency(model, loader, [f"{name}.weight" for name in layers], num_batches, fisher=fisher)
    return {name: scores[f"{name}.weight"] for name in layers}


def per_class_saliency(model: nn.Module, loader: DeviceLoader, num_classes: int, num_batches: int | None = None,
                       layers: list[str] | None = None, second_order: bool = True) -> Scores:
    """Saliency restricted to each class's samples: {layer: [num_classes, *weight shape]}.

    ``second_order=True`` gives ``mean[g^2] · θ^2`` per class, else ``mean[|g|] · |θ|``; ``g`` is the
    gradient of the mean loss over that class's samples in a batch (classes absent from a batch skip it): a
    batch-level estimate like ``--fisher batch``, not the per-image empirical Fisher.
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


def read_score_cache(path: Path) -> Scores | None:
    """The scores a cache file holds (a dict of float tensors, sealed); None, with one warning, when it is damaged,
    hand-edited or from an older version (``utils.core.cache``: a cache is computed again, never refused)."""
    cache = read_cache(path, "scores", _score_table)
    return cache["scores"] if cache else None


def _score_table(cache: dict) -> bool:
    """A score cache as ``cached_scores`` writes it: ``{"scores": {unit name: float tensor}}``."""
    scores = cache.get("scores")
    return isinstance(scores, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            and v.is_floating_point() for k, v in scores.items())


def cached_scores(checkpoint: Path, compute: Callable[[], Scores], cache_dir: Path, settings: dict,
                  device: torch.device) -> Scores:
    """``compute()``, cached in ``cache_dir`` under a key made of the checkpoint file's content and
    ``settings`` (anything that changes the result: model, data set, split, seed, batches, mode,
    granularity). A changed checkpoint or setting gives a new key, so stale scores are never reused."""
    key = hashlib.sha1(json.dumps({"ckpt": file_digest(Path(checkpoint)), **settings},
                                  sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"saliency_{key}.pt"
    cached = read_score_cache(path)
    if cached is not None:
        LOG.info("scores: reused %s (same checkpoint content and settings)", path)
        return {k: v.to(device) for k, v in cached.items()}
    scores = compute()
    write_cache(path, {"scores": {k: v.cpu() for k, v in scores.items()}}, "scores")
    return scores
