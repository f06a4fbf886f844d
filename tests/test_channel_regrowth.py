"""Channel regrowth: exact counts, nothing else changes, each init strategy's values, the export still
matches after regrowth and training, optimizer state and BN statistics reset, dead inits refused."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.test_channels import _close, _randomised
from utils.core.errors import UsageError
from utils.prune.pruners import get_pruner
from utils.sparsity.granularity import get_granularity
from utils.sparsity.masks import clone_model, stored_param
from utils.sparsity.physical import export_model


def _pruned(name: str = "resnet20", amount: float = 0.6):
    """(granularity, dense model, a copy with ``amount`` of its channels masked by global L1)."""
    gran = get_granularity("channel", name)
    dense = _randomised(name)
    sparse = clone_model(dense)
    get_pruner("l1", gran, "global").prune(sparse, amount)
    return gran, dense.eval(), sparse


def _scores(gran, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {root: torch.rand(mask.shape, generator=gen) for root, mask in gran.masks(model).items()}


def test_exact_counts_and_nothing_else_changes():
    gran, dense, sparse = _pruned()
    before_masks, caps = gran.masks(sparse), gran.capacity(sparse)
    before_state = {k: v.clone() for k, v in sparse.state_dict().items()}
    allocation = {"layer1.0.conv1": 3, "layer2.0.conv2": 1000}  # the second is capped by its capacity
    scores = _scores(gran, sparse)
    got = gran.regrow(sparse, allocation, scores, "preserve", generator=torch.Generator().manual_seed(0))
    assert got == {"layer1.0.conv1": 3, "layer2.0.conv2": caps["layer2.0.conv2"]}
    after = gran.masks(sparse)
    for root, mask in after.items():
        grown = mask & ~before_masks[root]
        assert int(grown.sum()) == got.get(root, 0) and not (before_masks[root] & ~mask).any()
    chosen = after["layer1.0.conv1"] & ~before_masks["layer1.0.conv1"]  # the highest-scoring masked channels
    candidates = scores["layer1.0.conv1"].masked_fill(before_masks["layer1.0.conv1"], -1)
    assert set(chosen.nonzero().flatten().tolist()) == set(candidates.topk(3).indices.tolist())
    touched = {s.module for root in allocation for s in gran.by_root[root].slices}
    for key, value in sparse.state_dict().items():
        if key.rsplit(".", 1)[0] not in touched:
            assert torch.equal(value, before_state[key]), key


@pytest.mark.parametrize("name", ["resnet20", "effnet", "alexnet"])
def test_preserve_leaves_outputs_unchanged_and_export_matches_after_training(name):
    gran, _, sparse = _pruned(name)
    x = torch.randn(4, 3, 32, 32)
    sparse.eval()
    with torch.no_grad():
        before = sparse(x)
    gran.regrow(sparse, {root: 2 for root in gran.units()}, _scores(gran, sparse), "preserve",
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(sparse(x), before)
    sparse.train()
    opt = torch.optim.SGD(sparse.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(sparse(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    sparse.eval()
    exported, _ = export_model(gran, sparse)
    with torch.no_grad():
        assert _close(sparse(x), exported.eval()(x))


def test_dense_init_copies_every_slice_exactly():
    gran, dense, sparse = _pruned("vgg16")
    gran.regrow(sparse, gran.capacity(sparse), _scores(gran, sparse), "dense", dense=dense)
    assert gran.sparsity(sparse) == 0.0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(sparse.eval()(x), dense(x))  # every channel back: the dense model, BN stats included


def test_kaiming_and_magnitude_reset_bn_running_statistics():
    gran, dense, sparse = _pruned()
    bn = dict(sparse.named_modules())["layer1.0.bn1"]
    dead = ~gran.masks(sparse)["layer1.0.conv1"]
    bn.running_var[dead] = 0.038  # what a masked channel's variance decays to in training
    for strategy in ("kaiming", "magnitude"):
        model = clone_model(sparse)
        gran.regrow(model, {"layer1.0.conv1": 16}, _scores(gran, model), strategy,
                    generator=torch.Generator().manual_seed(0))
        stats = dict(model.named_modules())["layer1.0.bn1"]
        assert torch.equal(stats.running_var[dead], torch.ones(int(dead.sum())))
        assert torch.equal(stats.running_mean[dead], torch.zeros(int(dead.sum())))


def test_optimizer_state_of_regrown_slices_is_reset():
    gran, _, sparse = _pruned()
    opt = torch.optim.AdamW(sparse.parameters(), lr=1e-3)
    sparse.train()
    nn.functional.cross_entropy(sparse(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
    opt.step()
    modules = dict(sparse.named_modules())
    conv, consumer, bn = modules["layer1.0.conv1"], modules["layer1.0.conv2"], modules["layer1.0.bn1"]
    for param in (conv.weight_orig, consumer.weight_orig, bn.weight_orig):
        opt.state[param]["exp_avg"].fill_(1.0)  # pretend every entry has history
    dead = (~gran.masks(sparse)["layer1.0.conv1"]).nonzero().flatten()
    gran.regrow(sparse, {"layer1.0.conv1": len(dead)}, _scores(gran, sparse), "preserve", optimizer=opt,
                generator=torch.Generator().manual_seed(0))
    state = opt.state[stored_param(conv, "weight")]
    live = ~torch.isin(torch.arange(16), dead)
    assert (state["exp_avg"][dead] == 0).all() and (state["exp_avg"][live] == 1).all()  # producer rows
    assert (opt.state[consumer.weight_orig]["exp_avg"][:, dead] == 0).all()  # the next conv's columns
    assert (opt.state[consumer.weight_orig]["exp_avg"][:, live] == 1).all()
    gamma = opt.state[bn.weight_orig]["exp_avg"]
    assert (gamma[dead] == 0).all() and (gamma[live] == 1).all()  # and the BatchNorm's gamma


def test_zero_and_unknown_inits_are_refused():
    gran, _, sparse = _pruned()
    with pytest.raises(UsageError, match="dead"):
        gran.regrow(sparse, {"conv1": 1}, _scores(gran, sparse), "zero")
    with pytest.raises(UsageError, match="does not apply to channel"):
        gran.regrow(sparse, {"conv1": 1}, _scores(gran, sparse), "xavier")
    with pytest.raises(UsageError, match="needs the dense model"):
        gran.regrow(sparse, {"conv1": 1}, _scores(gran, sparse), "dense")
