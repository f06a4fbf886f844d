"""Saliency: a hand computation on a two-layer model, sparse mode, unused layers, the on-disk cache."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import utils.scoring.saliency as sal
from data.loader import DeviceLoader
from models import create_model
from utils.runtime.checkpoint import save_checkpoint
from utils.sparsity.masks import add_reparam, set_masks

CPU = torch.device("cpu")


def _loader(n=32, batch=16, seed=0, channels=3, size=4) -> DeviceLoader:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return DeviceLoader(images, labels, batch_size=batch, mean=(0.5,) * channels, std=(0.25,) * channels,
                        device=CPU, channels_last=False)


class TwoLayer(nn.Module):
    """z = W2 (W1 x): linear, so the gradients have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(48, 5, bias=False)
        self.fc2 = nn.Linear(5, 3, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)))


def test_saliency_equals_hand_computation():
    torch.manual_seed(0)
    model, loader = TwoLayer(), _loader()
    w1, w2 = model.fc1.weight.detach().double(), model.fc2.weight.detach().double()
    g1_sq, g2_sq = torch.zeros_like(w1), torch.zeros_like(w2)
    for images, labels in loader:
        x = images.flatten(1).double()
        h = x @ w1.T
        delta = (torch.softmax(h @ w2.T, 1) - F.one_hot(labels, 3).double()) / len(labels)  # dL/dz, batch mean
        g2_sq += (delta.T @ h) ** 2
        g1_sq += ((delta @ w2).T @ x) ** 2
    scores = sal.saliency(model, loader)
    assert torch.allclose(scores["fc2"].double(), g2_sq / 2 * w2 ** 2, rtol=1e-4, atol=1e-9)
    assert torch.allclose(scores["fc1"].double(), g1_sq / 2 * w1 ** 2, rtol=1e-4, atol=1e-9)


def test_sparse_mode_scores_pruned_positions_with_stored_values():
    torch.manual_seed(0)
    model, loader = TwoLayer(), _loader()
    add_reparam(model)
    mask = torch.rand(3, 5) > 0.5
    set_masks(model, {"fc2": mask})
    scores = sal.saliency(model, loader)
    assert (scores["fc2"][~mask] > 0).all()  # dL/dW_eff is nonzero where W_eff = 0; θ = weight_orig
    assert not model.fc2.weight_orig.grad  # autograd.grad leaves .grad alone


def test_unused_layers_score_zero():
    model = create_model("effnet")
    loader = _loader(n=4, batch=4, size=32)
    scores = sal.saliency(model, loader, num_batches=1)
    assert torch.count_nonzero(scores["layers.0.conv1"]) == 0 and scores["linear"].abs().sum() > 0


def test_per_class_saliency_shapes_and_consistency():
    torch.manual_seed(0)
    model, loader = TwoLayer(), _loader(n=48, batch=48)
    per_class = sal.per_class_saliency(model, loader, num_classes=3)
    assert per_class["fc1"].shape == (3, 5, 48)
    labels = loader.labels
    images = next(iter(loader))[0]
    c = int(labels[0])
    loss = F.cross_entropy(model(images[labels == c]), labels[labels == c])
    grad = torch.autograd.grad(loss, model.fc2.weight)[0]
    assert torch.allclose(per_class["fc2"][c], grad ** 2 * model.fc2.weight.detach() ** 2, rtol=1e-4, atol=1e-10)
    first = sal.per_class_saliency(model, loader, num_classes=3, second_order=False)
    assert torch.allclose(first["fc2"][c], grad.abs() * model.fc2.weight.detach().abs(), rtol=1e-4, atol=1e-10)


def _cached(ckpt, model, loader, cache, settings, num_batches=None):
    """Saliency through the content-keyed cache, as utils/scoring/layer_scores.py calls it."""
    return sal.cached_scores(ckpt, lambda: sal.saliency(model, loader, num_batches), cache,
                             {"num_batches": num_batches, **settings}, CPU)


def test_cache_reused_and_invalidated(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, loader = TwoLayer(), _loader()
    ckpt = tmp_path / "dense.pth"
    save_checkpoint(ckpt, model, model_name="two", dataset="synthetic", num_classes=3, meta={})
    cache = tmp_path / "cache"
    first = _cached(ckpt, model, loader, cache, {"mode": "dense"})
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = _cached(ckpt, model, loader, cache, {"mode": "dense"})
    assert calls == [] and all(torch.equal(first[k], again[k]) for k in first)
    with torch.no_grad():
        model.fc1.weight.mul_(2)
    save_checkpoint(ckpt, model, model_name="two", dataset="synthetic", num_classes=3, meta={})
    changed = _cached(ckpt, model, loader, cache, {"mode": "dense"})
    assert calls and not torch.equal(changed["fc1"], first["fc1"])
    assert len(list(cache.glob("saliency_*.pt"))) == 2
    calls.clear()
    _cached(ckpt, model, loader, cache, {"mode": "dense"}, num_batches=1)  # other settings
    assert calls


def test_saliency_leaves_mode_and_bn_statistics():
    model = create_model("resnet20").train()
    before = model.bn1.running_mean.clone()
    sal.saliency(model, _loader(n=4, batch=4, size=32), num_batches=1)
    assert model.training and torch.equal(model.bn1.running_mean, before)
