"""apply_regrowth: exact counts, only the chosen positions change, init values, optimizer state reset."""
from __future__ import annotations

import math

import pytest
import torch

from models import create_model
from utils.core.errors import UsageError
from utils.prune.pruners import get_pruner
from utils.sparsity.grow import INIT_STRATEGIES, apply_regrowth, top_pruned
from utils.sparsity.masks import add_reparam, capacity, get_masks, num_prunable, sparsity

LAYERS = {"layer1.0.conv1": 300, "layer3.2.conv2": 5000, "linear": 10_000}


def _sparse(seed: int = 0, channels_last: bool = False):
    torch.manual_seed(seed)
    model = create_model("resnet20")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in LAYERS}
    add_reparam(model)
    get_pruner("glob").prune(model, 0.95)
    scores = {n: torch.rand(m.weight_orig.shape, generator=torch.Generator().manual_seed(1))
              for n, m in model.named_modules() if hasattr(m, "weight_orig")}
    return model, scores, dense


@pytest.mark.parametrize("channels_last", [False, True])
def test_exact_counts_and_nothing_else_changes(channels_last):
    model, scores, _ = _sparse(channels_last=channels_last)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    before_masks, caps = get_masks(model), capacity(model)
    s0 = sparsity(model)
    regrown = apply_regrowth(model, LAYERS, scores, "kaiming", generator=torch.Generator().manual_seed(0))
    assert regrown == {n: min(k, caps[n]) for n, k in LAYERS.items()}
    assert regrown["linear"] == caps["linear"] < 10_000  # capped by capacity
    total = sum(regrown.values())
    assert sparsity(model) == pytest.approx(s0 - total / num_prunable(model), abs=1e-12)
    after_masks = get_masks(model)
    for name, mask in after_masks.items():
        grown = mask & ~before_masks[name]
        assert int(grown.sum()) == regrown.get(name, 0)
        assert torch.all(mask >= before_masks[name])  # nothing pruned by regrowth
        if name in LAYERS and regrown[name] < caps[name]:  # the chosen positions are the best-scored pruned ones
            pruned = ~before_masks[name]
            assert scores[name][grown].min() >= scores[name][pruned & ~grown].max()
    for key, value in model.state_dict().items():
        layer = key.rsplit(".", 1)[0]
        if key.endswith(("weight_orig", "weight_mask")) and layer in LAYERS:
            grown = (after_masks[layer] & ~before_masks[layer])
            assert torch.equal(value[~grown], before_state[key][~grown])
        else:
            assert torch.equal(value, before_state[key]), key


def _values_at_grown(init: str):
    model, scores, dense = _sparse()
    before = get_masks(model)
    stored = model.linear.weight_orig.detach().clone()
    apply_regrowth(model, {"linear": 100, "layer3.2.conv2": 2000}, scores, init, dense,
                   generator=torch.Generator().manual_seed(0))
    out = {}
    for name, module in (("linear", model.linear), ("layer3.2.conv2", model.layer3[2].conv2)):
        grown = module.weight_mask.bool() & ~before[name]
        out[name] = (module.weight_orig.detach()[grown], grown)
    return out, stored, dense


def test_init_zero_magnitude_dense():
    values, _, _ = _values_at_grown("zero")
    assert torch.all(values["linear"][0] == 0)
    values, stored, _ = _values_at_grown("magnitude")
    assert torch.equal(values["linear"][0], stored[values["linear"][1]])
    values, _, dense = _values_at_grown("dense")
    assert torch.equal(values["linear"][0], dense["linear"][values["linear"][1]])


@pytest.mark.parametrize("init,bound", [("kaiming", lambda fi, fo: math.sqrt(6 / fi)),
                                        ("xavier", lambda fi, fo: math.sqrt(6 / (fi + fo)))])
def test_uniform_inits_use_the_right_bound(init, bound):
    values, _, _ = _values_at_grown(init)
    conv, _ = values["layer3.2.conv2"]  # 64x64x3x3: fan_in = fan_out = 576
    b = bound(576, 576)
    assert conv.abs().max() <= b and conv.abs().max() > 0.9 * b  # fills the range
    assert abs(float(conv.mean())) < 0.1 * b


def test_optimizer_state_reset_at_regrown_positions():
    model, scores, _ = _sparse()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    before = get_masks(model)["linear"]
    state = optimizer.state[model.linear.weight_orig]
    state["exp_avg"].fill_(1.0)
    state["exp_avg_sq"].fill_(1.0)
    apply_regrowth(model, {"linear": 50}, scores, "zero", optimizer=optimizer)
    grown = model.linear.weight_mask.bool() & ~before
    assert int(grown.sum()) == 50
    assert torch.all(state["exp_avg"][grown] == 0) and torch.all(state["exp_avg_sq"][grown] == 0)
    assert torch.all(state["exp_avg"][~grown] == 1)


def test_top_pruned_and_errors():
    mask = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([[9.0, 1.0, 5.0], [3.0, 8.0, 2.0]])
    assert top_pruned(scores, mask, 2).tolist() == [2, 3]  # 5.0 and 3.0; kept positions ignored
    assert len(top_pruned(scores, mask, 10)) == 4
    model, scores, _ = _sparse()
    with pytest.raises(UsageError, match="unknown init strategy 'he'.*zero"):
        apply_regrowth(model, {"linear": 1}, scores, "he")
    with pytest.raises(UsageError, match="needs the dense"):
        apply_regrowth(model, {"linear": 1}, scores, "dense")
    assert set(INIT_STRATEGIES) == {"zero", "kaiming", "xavier", "magnitude", "dense"}


@pytest.mark.parametrize("mode", ["fill", "prop", "uniform", "random", "topk"])
@pytest.mark.parametrize("budget", [1, 37, 500, 1234])
def test_greedy_allocations_spend_exactly_the_budget(mode, budget):
    from utils.regrow.allocation import GREEDY_ALLOCATIONS

    capacities = {"a": 10, "b": 300, "c": 7, "d": 1000}
    ssim = {"a": -0.4, "b": 0.2, "c": 0.9, "d": 0.5}  # negative SSIM must not break prop
    scores = {n: torch.rand(c, generator=torch.Generator().manual_seed(i))
              for i, (n, c) in enumerate(capacities.items())}
    allocation = GREEDY_ALLOCATIONS[mode](ssim, capacities, budget, torch.Generator().manual_seed(0), scores)
    assert sum(allocation.values()) == min(budget, sum(capacities.values()))
    assert all(0 < n <= capacities[name] for name, n in allocation.items())


def test_topk_takes_the_global_top_scores_and_regrows_exactly_them():
    from utils.regrow.allocation import allocate_top_scores, pruned_scores

    model, scores, _ = _sparse()
    g = torch.Generator().manual_seed(3)  # _sparse's scores repeat across layers of one shape: no ties here
    scores = {n: torch.rand(t.shape, generator=g) for n, t in scores.items()}
    masks, budget = get_masks(model), 25
    units = capacity(model)
    ranked = pruned_scores(scores, masks, units)
    assert all(ranked[n].numel() == units[n] for n in units)
    threshold = torch.cat(list(ranked.values())).topk(budget).values[-1]  # the K-th best pruned score anywhere
    allocation = allocate_top_scores({}, units, budget, None, ranked)
    assert allocation == {n: int((r >= threshold).sum()) for n, r in ranked.items() if (r >= threshold).any()}
    assert sum(allocation.values()) == budget
    apply_regrowth(model, allocation, scores, "zero")  # the kernel's within-unit pick by the same scores
    back = torch.cat([scores[n][get_masks(model)[n] & ~masks[n]] for n in units])
    assert back.numel() == budget and bool((back >= threshold).all())  # exactly the global top-K entries
    with pytest.raises(UsageError, match="needs the pruned entries' scores"):
        allocate_top_scores({}, units, budget)
    with pytest.raises(UsageError, match="one score per pruned entry"):
        allocate_top_scores({}, units, budget, None, scores)  # whole-layer scores, not the pruned entries'
    ranked["linear"][0] = float("nan")
    with pytest.raises(UsageError, match="not finite"):
        allocate_top_scores({}, units, budget, None, ranked)


def test_fill_and_prop_follow_ssim():
    from utils.regrow.allocation import allocate_fill, allocate_proportional

    capacities = {"a": 10, "b": 300, "c": 7}
    ssim = {"a": 0.5, "b": 0.9, "c": 0.1}
    assert allocate_fill(ssim, capacities, 12) == {"c": 7, "a": 5}
    prop = allocate_proportional(ssim, capacities, 100)
    assert prop["c"] == 7 and prop["a"] == 10 and prop["b"] == 83  # caps hit, the rest flows on
