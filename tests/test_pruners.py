"""Pruners: exact counts, only the lowest scores go, LAMP against a brute-force reference, monotone masks."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import create_model
from utils.core.errors import UsageError
from utils.prune.pruners import get_pruner, list_pruners
from utils.prune.weight_pruners import lamp_scores, magnitude_scores, random_scores
from utils.sparsity.budget import largest_remainder
from utils.sparsity.masks import add_reparam, get_masks, layer_counts, num_prunable, prunable_modules, sparsity

ALL = ["glob", "unif", "unifplus", "lamp", "erk", "random"]


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("resnet20")
    add_reparam(model)
    return model


def _pruned(model: nn.Module) -> int:
    return sum(c.pruned for c in layer_counts(model))


def test_registry_and_unknown_name():
    assert list_pruners() == ALL
    with pytest.raises(UsageError, match="unknown pruner 'l1'.*glob.*lamp.*random"):
        get_pruner("l1")


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("amount", [0.3, 0.9, 0.99])
def test_exact_count_from_dense(name, amount):
    model = _model()
    n = num_prunable(model)
    removed = get_pruner(name).prune(model, amount, torch.Generator().manual_seed(0))
    assert removed == round(amount * n) == _pruned(model)
    assert sparsity(model) == pytest.approx(amount, abs=1 / n)


@pytest.mark.parametrize("name", ALL)
def test_channels_last_model_gives_the_same_masks(name):
    plain, fast = _model(7), _model(7).to(memory_format=torch.channels_last)
    for model in (plain, fast):
        get_pruner(name).prune(model, 0.95, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(get_masks(plain).values(), get_masks(fast).values(), strict=True))


@pytest.mark.parametrize("name", ALL)
def test_iterative_schedule_monotone_and_exact(name):
    model, gen = _model(1), torch.Generator().manual_seed(1)
    n = num_prunable(model)
    before = get_masks(model)
    for _ in range(8):
        alive = n - _pruned(model)
        removed = get_pruner(name).prune(model, 0.3, gen)
        after = get_masks(model)
        assert removed == round(0.3 * alive) and n - _pruned(model) == alive - removed
        assert all(torch.all(after[k] <= before[k]) for k in before)  # a pruned weight never returns
        before = after
    assert sparsity(model) == pytest.approx(1 - 0.7 ** 8, abs=8 / n)


def _removed_vs_kept(scores: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    removed = scores[before & ~after]
    kept = scores[after]
    return float(removed.max()), float(kept.min())


@pytest.mark.parametrize("name,score", [("glob", "magnitude"), ("lamp", "lamp"), ("random", "random")])
def test_global_pruners_remove_only_lowest_scores(name, score):
    model = _model(2)
    get_pruner("glob").prune(model, 0.5)  # start from a partly pruned model
    before = get_masks(model)
    scores = {"magnitude": lambda: magnitude_scores(model), "lamp": lambda: lamp_scores(model),
              "random": lambda: random_scores(model, torch.Generator().manual_seed(5))}[score]()
    get_pruner(name).prune(model, 0.6, torch.Generator().manual_seed(5))
    after = get_masks(model)
    flat = lambda d: torch.cat([d[k].flatten() for k in before])  # noqa: E731
    removed_max, kept_min = _removed_vs_kept(flat(scores).double(), flat(before), flat(after))
    assert removed_max <= kept_min


@pytest.mark.parametrize("name", ["unif", "unifplus", "erk"])
def test_layerwise_pruners_remove_only_lowest_in_each_layer(name):
    model = _model(3)
    before = get_masks(model)
    scores = magnitude_scores(model)
    get_pruner(name).prune(model, 0.8)
    after = get_masks(model)
    for layer in before:
        if (before[layer] & ~after[layer]).any():
            removed_max, kept_min = _removed_vs_kept(scores[layer], before[layer], after[layer])
            assert removed_max <= kept_min, layer


def _lamp_brute_force(weight: torch.Tensor) -> torch.Tensor:
    """score(w_i) = w_i^2 / sum of w_j^2 over all j with w_j^2 >= w_i^2 (no ties in random weights)."""
    u = [float(v) ** 2 for v in weight.flatten()]
    return torch.tensor([ui / sum(uj for uj in u if uj >= ui) for ui in u], dtype=torch.float64).view(weight.shape)


def test_lamp_scores_equal_brute_force():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4))
    scores = lamp_scores(model)
    for name, module in prunable_modules(model).items():
        assert torch.allclose(scores[name], _lamp_brute_force(module.weight.detach()), rtol=1e-9, atol=0)


def test_lamp_keeps_a_weight_in_every_layer_and_matches_global_ranking():
    model = _model(4)
    scores = lamp_scores(model)
    get_pruner("lamp").prune(model, 0.999)
    assert all(c.kept >= 1 for c in layer_counts(model))
    flat_scores = torch.cat([s.flatten() for s in scores.values()])
    kept = torch.cat([m.flatten() for m in get_masks(model).values()])
    assert flat_scores[~kept].max() <= flat_scores[kept].min()


def test_unifplus_rules():
    model = _model(5)
    get_pruner("unifplus").prune(model, 0.95)
    counts = {c.name: c for c in layer_counts(model)}
    assert counts["conv1"].pruned == 0
    assert counts["linear"].kept >= round(0.2 * counts["linear"].total)
    with pytest.raises(UsageError, match="unifplus cannot remove"):
        get_pruner("unifplus").prune(model, 0.999)


def test_erk_survivors_follow_dimension_sums():
    model = _model(6)
    get_pruner("erk").prune(model, 0.98)
    counts = {c.name: c for c in layer_counts(model)}
    modules = prunable_modules(model)
    sparse = [k for k in counts if counts[k].pruned > 0]
    ratio = {k: counts[k].kept / sum(modules[k].weight.shape) for k in sparse}
    spread = max(ratio.values()) - min(ratio.values())
    assert spread <= 2 / min(sum(modules[k].weight.shape) for k in sparse)  # equal up to rounding


def test_largest_remainder_is_exact():
    shares = {"a": 1.0, "b": 1.0, "c": 1.0}
    assert sum(largest_remainder(shares, 100).values()) == 100
    assert largest_remainder({"a": 3.0, "b": 1.0}, 7) == {"a": 5, "b": 2}


def test_amount_out_of_range():
    with pytest.raises(UsageError):
        get_pruner("glob").prune(_model(), 1.0)
