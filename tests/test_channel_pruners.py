"""Channel pruners: exact counts in both scopes, never an empty group, the lowest scores go, errors."""
from __future__ import annotations

import pytest
import torch

from data.loader import DeviceLoader
from models import create_model
from utils.core.errors import UsageError
from utils.prune.channel_pruners import l1_importance
from utils.prune.pruners import get_pruner, list_pruners
from utils.prune.weight_pruners import PruneContext
from utils.sparsity.granularity import get_granularity

CPU = torch.device("cpu")
ALL = ["l1", "l2", "lamp", "bn_scale", "taylor", "hessian", "random"]


def _loader() -> DeviceLoader:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return DeviceLoader(images, torch.randint(0, 10, (32,), generator=gen), batch_size=16, mean=(0.5,) * 3,
                        std=(0.25,) * 3, device=CPU, channels_last=False)


def _context() -> PruneContext:
    return PruneContext(torch.Generator().manual_seed(0), _loader(), num_batches=2)


def _live(gran, model) -> dict[str, int]:
    return {root: int(mask.sum()) for root, mask in gran.masks(model).items()}


def test_registry():
    assert list_pruners("channel") == ALL
    with pytest.raises(UsageError, match="unknown pruner 'glob' for channel pruning"):
        get_pruner("glob", get_granularity("channel", "resnet20"))


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("name", ALL)
def test_exact_counts_and_a_live_channel_in_every_group(name, scope):
    gran = get_granularity("channel", "resnet20")
    model = create_model("resnet20")
    pruner = get_pruner(name, gran, scope)
    total = sum(g.size for g in gran.groups)
    removed = pruner.prune(model, 0.9, context=_context())
    assert removed == round(0.9 * total) == total - sum(_live(gran, model).values())
    before = sum(_live(gran, model).values())
    removed = pruner.prune(model, 0.5, context=_context())  # from a pruned model: only live channels count
    assert removed == round(0.5 * before) == before - sum(_live(gran, model).values())
    assert min(_live(gran, model).values()) >= 1


def test_local_takes_the_same_fraction_of_every_group():
    gran = get_granularity("channel", "vgg16")
    model = create_model("vgg16")
    get_pruner("l1", gran, "local").prune(model, 0.5)
    for group in gran.groups:
        assert _live(gran, model)[group.root] == group.size // 2  # sizes are even: exactly half each


def test_global_removes_the_lowest_normalised_scores():
    gran = get_granularity("channel", "resnet20")
    torch.manual_seed(1)
    model = create_model("resnet20")
    alive = gran.masks(model)
    scores = l1_importance(gran, model, alive, PruneContext())
    normalised = {r: s / s.mean() for r, s in scores.items()}
    get_pruner("l1", gran, "global").prune(model, 0.6)
    masks = gran.masks(model)
    removed = torch.cat([normalised[r][~masks[r]] for r in masks])
    # every kept channel outscores every removed one, except a group's best, which always stays
    kept = torch.cat([normalised[r][masks[r]].sort().values[:-1] for r in masks if masks[r].sum() > 1])
    assert removed.max() <= kept.min()


def test_local_removes_each_groups_lowest_scores():
    gran = get_granularity("channel", "vgg16")
    torch.manual_seed(2)
    model = create_model("vgg16")
    scores = l1_importance(gran, model, gran.masks(model), PruneContext())
    get_pruner("l1", gran, "local").prune(model, 0.3)
    for root, mask in gran.masks(model).items():
        assert scores[root][~mask].max() <= scores[root][mask].min()


def test_asking_more_than_the_floor_allows_is_a_usage_error():
    gran = get_granularity("channel", "resnet20")
    with pytest.raises(UsageError, match="would empty a group"):
        get_pruner("l1", gran, "global").prune(create_model("resnet20"), 0.99)


def test_gradient_pruners_need_training_batches():
    gran = get_granularity("channel", "resnet20")
    for name in ("taylor", "hessian"):
        with pytest.raises(UsageError, match="needs training batches"):
            get_pruner(name, gran).prune(create_model("resnet20"), 0.5)


def test_bn_scale_falls_back_to_l1_for_groups_without_batchnorm():
    gran = get_granularity("channel", "effnet")
    model = create_model("effnet")
    from utils.prune.channel_pruners import bn_scale_importance

    scores = bn_scale_importance(gran, model, gran.masks(model), PruneContext())
    l1 = l1_importance(gran, model, gran.masks(model), PruneContext())
    se_hidden = "layers.1.se.se1"
    assert not gran.by_root[se_hidden].members("norm")
    assert torch.equal(scores[se_hidden], l1[se_hidden])
    bn = dict(model.named_modules())["bn1"]
    assert torch.allclose(scores["conv1"], bn.weight.detach().abs() + dict(model.named_modules())["layers.0.bn2"]
                          .weight.detach().abs())
