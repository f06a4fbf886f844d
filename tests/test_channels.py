"""Channel granularity: groups of every zoo model, derived masks, soft masks equal to the physical export
(before and after training), exact unit scores and costs, export reload."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from models import create_model, list_models, model_spec
from utils.core.errors import UsageError
from utils.sparsity.channels import trace_groups
from utils.sparsity.granularity import get_granularity
from utils.sparsity.macs import params_and_macs
from utils.sparsity.masks import effective_param, has_param_mask
from utils.sparsity.physical import export_model, rebuild_exported

MODELS = ["resnet20", "vgg16", "effnet", "alexnet"]
# groups per model and their channel totals (structured_notes.md lists the groups)
GROUPS = {"resnet20": (12, 16 + 32 + 64 + 3 * (16 + 32 + 64)), "vgg16": (13, 4224),
          "effnet": (39, None), "alexnet": (5, 64 + 192 + 384 + 256 + 256)}


def _randomised(name: str, seed: int = 0) -> nn.Module:
    """A model whose BN statistics and affine parameters are not the identity (so leaks would show)."""
    torch.manual_seed(seed)
    model = create_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return model


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """max |a - b| < 1e-5, relative to the logits' scale (randomised BN gives logits of ~100, where float32
    rounding alone is ~1e-5)."""
    return bool((a - b).abs().max() < 1e-5 * max(1.0, float(a.abs().max())))


def _half_masked(name: str, seed: int = 0):
    """(granularity, model with a random ~50% of every group's channels masked, its masks)."""
    gran = get_granularity("channel", name)
    model = _randomised(name, seed)
    gen = torch.Generator().manual_seed(seed)
    masks = {g.root: torch.rand(g.size, generator=gen) < 0.5 for g in gran.groups}
    for mask in masks.values():
        mask[0] = True
    gran.set_masks(model, masks)
    return gran, model, masks


@pytest.mark.parametrize("name", MODELS)
def test_groups_of_every_zoo_model(name):
    gran = get_granularity("channel", name)
    count, channels = GROUPS[name]
    assert len(gran.groups) == count
    if channels is not None:
        assert sum(g.size for g in gran.groups) == channels
    assert "linear" not in gran.units() and "classifier" not in gran.units()
    roots = [g.root for g in gran.groups]
    order = [n for n, _ in create_model(name).named_modules()]
    assert roots == sorted(roots, key=order.index)  # roots in module order, each a producer of its group
    for group in gran.groups:
        assert any(s.module == group.root and s.kind == "producer" for s in group.slices)


def test_residual_group_is_one_unit():
    gran = get_granularity("channel", "resnet20")
    stage2 = gran.by_root["layer2.0.conv2"]
    producers = {s.module for s in stage2.members("producer")}
    assert producers == {"layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2", "layer2.0.shortcut.0"}
    assert {"layer3.0.conv1", "layer3.0.shortcut.0", "layer2.1.conv1"} <= {s.module for s in stage2.members("consumer")}


@pytest.mark.parametrize("name", MODELS)
def test_soft_masks_equal_export_and_stay_zero_through_training(name):
    gran, model, masks = _half_masked(name)
    assert all(torch.equal(gran.masks(model)[r], masks[r]) for r in masks)  # masks read back exactly
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    exported, _ = export_model(gran, model)
    with torch.no_grad():
        assert _close(model(x), exported.eval()(x))

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    modules = dict(model.named_modules())
    for group in gran.groups:
        dead = (~masks[group.root]).nonzero().flatten()
        for s in group.slices:  # every masked slice, BN beta and conv biases included, is exactly zero
            value = effective_param(modules[s.module], s.param).detach()
            positions = s.index[torch.isin(s.channel, dead)]
            assert has_param_mask(modules[s.module], s.param)
            assert not value.index_select(s.dim, positions).any()
    model.eval()
    exported, _ = export_model(gran, model)
    with torch.no_grad():
        assert _close(model(x), exported.eval()(x))


@pytest.mark.parametrize("name", ["resnet20", "effnet"])
def test_export_reloads_from_its_history(name):
    gran, model, _ = _half_masked(name, seed=3)
    exported, history = export_model(gran, model.eval())
    rebuilt = rebuild_exported(name, 10, 32, history)
    rebuilt.load_state_dict(exported.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), exported.eval()(x))
    assert params_and_macs(exported, 32)[0] < params_and_macs(create_model(name), 32)[0]


def test_dense_counts_match_the_notes():
    assert params_and_macs(create_model("resnet20"), 32) == (272_474, 41_214_602)


def test_set_masks_refuses_an_empty_group_and_wrong_shapes():
    gran = get_granularity("channel", "vgg16")
    model = create_model("vgg16")
    with pytest.raises(UsageError, match="last channel"):
        gran.set_masks(model, {"features.0": torch.zeros(64, dtype=torch.bool)})
    with pytest.raises(UsageError, match="shape"):
        gran.set_masks(model, {"features.0": torch.ones(32, dtype=torch.bool)})
    with pytest.raises(UsageError, match="not a channel group"):
        gran.set_masks(model, {"classifier": torch.ones(10, dtype=torch.bool)})


def test_unit_scores_sum_every_slice_exactly():
    gran = get_granularity("channel", "vgg16")
    model = _randomised("vgg16")
    params = {f"{n}.{p}": t.detach().abs()
              for n, m in model.named_modules() for p, t in m.named_parameters(recurse=False)}
    scores = gran.unit_scores(params)["features.0"]
    f = model.features
    expected = (f[0].weight.abs().sum((1, 2, 3)) + f[0].bias.abs() + f[1].weight.abs() + f[1].bias.abs()
                + f[3].weight.abs().sum((0, 2, 3)))
    assert torch.allclose(scores, expected.detach(), rtol=1e-5)


def test_flatten_maps_each_channel_to_four_classifier_columns():
    gran = get_granularity("channel", "alexnet")
    model = _randomised("alexnet")
    weight = model.classifier[1].weight.detach().abs()
    scores = gran.unit_scores({"classifier.1.weight": weight})["features.10"]
    assert torch.allclose(scores, weight.view(10, 256, 4).sum((0, 2)), rtol=1e-5)


def test_unit_costs_of_a_vgg_channel():
    cost = get_granularity("channel", "vgg16").unit_costs()["features.0"]
    # conv rows 3*3*3 + bias 1 + BN gamma/beta 2 + next conv's columns 64*3*3; MACs at 32x32
    assert cost.entries == 64 and cost.weights == 27 + 1 + 2 + 576
    assert cost.macs == (27 + 576) * 32 * 32
    weight_cost = get_granularity("weight", "vgg16").unit_costs()["features.0"]
    assert weight_cost.weights == 1 and weight_cost.macs == 32 * 32 and weight_cost.entries == 64 * 27


@pytest.mark.parametrize("name", [n for n in list_models() if n not in MODELS])
def test_every_other_zoo_model_masks_equal_its_export(name):
    """The rest of the zoo (deeper ResNets, ResNet-18, the Tiny-ImageNet variants) in eval mode."""
    gran, model, _ = _half_masked(name)
    size = model_spec(name).input_size
    x = torch.randn(2, 3, size, size)
    exported, _ = export_model(gran, model.eval())
    with torch.no_grad():
        assert _close(model(x), exported.eval()(x))


def test_a_model_that_cannot_be_traced_is_a_usage_error():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("data-dependent control flow")

    with pytest.raises(UsageError, match="cannot trace"):
        trace_groups(Untraceable(), 32)
