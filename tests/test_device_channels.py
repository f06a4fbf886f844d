"""Channel regrowth up to a device's MAC limit: the exact MAC model of channel counts, costed allocations,
the one-shot sparsity where a limit binds, a search that fills the limit, and its bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pipeline
import regrowth_structure_oneshot
from models import create_model
from tests.conftest import run_main, tree
from tests.test_channels import MODELS, _half_masked
from tests.test_structure_regrowth import FAST, _channel_pruned
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.device.fill import MacBudget, device_targets, local_counts
from utils.device.profiles import DeviceProfile
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.search.controller import AllocationPolicy
from utils.sparsity.granularity import get_granularity
from utils.sparsity.macs import ChannelMacs, live_counts, params_and_macs
from utils.sparsity.masks import add_reparam
from utils.sparsity.physical import export_model


@pytest.mark.parametrize("name", MODELS)
def test_macs_of_the_counts_equal_the_exports(name):
    """The quadratic of the counts is Torch-Pruning's count of the physical export, dense and masked."""
    for seed in (0, 1):
        gran, model, _ = _half_masked(name, seed)
        cost = ChannelMacs(gran)
        exported, _ = export_model(gran, model)
        assert cost.macs(live_counts(gran, model)) == params_and_macs(exported, gran.input_size)[1]
    dense = {g.root: g.size for g in gran.groups}
    assert cost.macs(dense) == params_and_macs(create_model(name), gran.input_size)[1]


def test_marginal_is_the_cost_of_one_channel_and_pairs_cost_more():
    gran, model, _ = _half_masked("resnet20")
    cost = ChannelMacs(gran)
    counts = live_counts(gran, model)
    marginal = cost.marginal(counts)
    for root in list(counts)[:4]:
        assert cost.macs({**counts, root: counts[root] + 1}) - cost.macs(counts) == marginal[root]
    a, b = "layer1.0.conv1", "conv1"  # conv1's channels feed layer1.0.conv1's input: a cross term
    both = cost.macs({**counts, a: counts[a] + 2, b: counts[b] + 2}) - cost.macs(counts)
    assert both > 2 * marginal[a] + 2 * marginal[b]


def test_fit_allocation_trims_until_the_limit_holds():
    gran, model, _ = _half_masked("resnet20")
    cost = ChannelMacs(gran)
    counts = live_counts(gran, model)
    allocation = {"layer1.0.conv1": 4, "conv1": 4, "layer3.0.conv1": 10}
    full = cost.macs({k: v + allocation.get(k, 0) for k, v in counts.items()})
    assert cost.fit_allocation(counts, allocation, full) == allocation  # fits: unchanged
    limit = full - 200_000
    trimmed = cost.fit_allocation(counts, allocation, limit)
    assert cost.macs({k: v + trimmed.get(k, 0) for k, v in counts.items()}) <= limit
    assert all(0 < trimmed[k] <= allocation[k] for k in trimmed) and sum(trimmed.values()) < sum(allocation.values())


def test_costed_allocations_stay_within_the_budget_and_unit_costs_change_nothing():
    torch.manual_seed(0)
    policy = AllocationPolicy(action_space_size=11)
    rng = torch.Generator().manual_seed(1)
    for i in range(100):
        caps = torch.randint(1, 60, (5,), generator=rng).tolist()
        costs = torch.randint(1, 5000, (5,), generator=rng).tolist()
        budget = int(torch.randint(1, 100_000, (1,), generator=rng))
        ep = policy.sample(caps, [0.2] * 5, torch.Generator().manual_seed(i), budget=budget, costs=costs)
        assert sum(n * c for n, c in zip(ep.counts, costs, strict=True)) <= budget
        assert all(0 <= n <= c for n, c in zip(ep.counts, caps, strict=True))
        ones = policy.sample(caps, [0.2] * 5, torch.Generator().manual_seed(i), budget=budget, costs=[1] * 5)
        plain = policy.sample(caps, [0.2] * 5, torch.Generator().manual_seed(i), budget=budget)
        assert ones.counts == plain.counts and ones.actions == plain.actions


def test_local_counts_are_prune_structures_and_the_limit_binds_where_it_says():
    gran = get_granularity("channel", "resnet20")
    total = sum(g.size for g in gran.groups)
    model = create_model("resnet20")
    get_pruner("l1", gran, "local").prune(model, 150 / total)
    assert live_counts(gran, model) == local_counts(gran, 150)
    dense = create_model("resnet20")
    add_reparam(dense)
    cost = ChannelMacs(gran)
    targets = device_targets(DeviceProfile(max_macs=20e6), gran, dense, past_limit=1.5)
    at, start = round(targets.at_limit * total), round(targets.start * total)
    assert cost.macs(local_counts(gran, at)) <= 20e6 < cost.macs(local_counts(gran, at - 1))
    assert cost.macs(local_counts(gran, start)) <= 20e6 / 1.5 < cost.macs(local_counts(gran, start - 1))
    assert targets.limit == "macs" and start > at
    with pytest.raises(UsageError, match="--past_limit 1e"):  # the start cannot be that far past the limit
        device_targets(DeviceProfile(max_macs=20e6), gran, dense, past_limit=1e6)
    with pytest.raises(UsageError, match="nothing to prune"):
        device_targets(DeviceProfile(max_macs=1e9), gran, dense, past_limit=1.5)


@pytest.fixture(scope="module")
def channel_start(tmp_path_factory) -> tuple[Path, Path]:
    save = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    save_checkpoint(save / "resnet20" / "checkpoint" / "ckpt.pth", create_model("resnet20"), model_name="resnet20",
                    dataset="synthetic", num_classes=10, meta={})
    return save, _channel_pruned(save / "ch0.8.pth", 0.8)


def _start_macs(sparse: Path) -> int:
    gran = get_granularity("channel", "resnet20")
    model = create_model("resnet20")
    gran.set_masks(model, read_checkpoint(sparse).channel_masks)
    return MacBudget(gran, model, 1.0).start_macs


def test_channel_search_fills_a_mac_limit_and_reports_its_margin(channel_start):
    save, sparse = channel_start
    limit = _start_macs(sparse) + 2_000_000
    args = FAST + ["--save_dir", str(save), "--pruned_ckpt", str(sparse), "--num_epochs", "2", "--label", "mac",
                   "--max_macs", str(limit), "--ssim_threshold", "0.0"]  # selects one group: the space must widen
    assert regrowth_structure_oneshot.main(args) == 0
    out = save / "resnet20" / "regrowth_structure_oneshot" / "mac"
    summary = json.loads((out / "summary.json").read_text())
    macs = summary["device"]["limits"]["macs"]
    assert summary["device"]["fits"] and macs["limit"] == limit and macs["cost"] == summary["macs"]
    assert summary["budget"] == 2_000_000 and len(summary["searched_layers"]) > 1
    rows = read_csv(out / "episodes.csv")
    assert rows and all(0 < int(r["macs_added"]) <= int(r["budget"]) and int(r["trimmed"]) >= 0 for r in rows)
    assert "cannot hold what fills the device" in (out / "log.txt").read_text()


@pytest.mark.parametrize("profile,message", [
    ({"max_bytes": 10 ** 6}, "has no max_macs"),
    ({"max_latency_ms": 5.0}, "has no max_macs"),  # latency is checked and reported, not filled
    ({"max_macs": 1000}, "already costs"),
])
def test_channel_device_bad_profiles(channel_start, tmp_path, capsys, profile, message):
    save, sparse = channel_start
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    before = tree(save)
    argv = FAST + ["--save_dir", str(save), "--pruned_ckpt", str(sparse), "--device_profile", str(path)]
    code, _, err = run_main(regrowth_structure_oneshot.main, argv, capsys)
    assert code == 2 and message in err and err.count("error:") == 1 and tree(save) == before
    if "max_macs" not in profile:
        code, _, err = run_main(pipeline.main, ["--save_dir", str(tmp_path / "p"), "--device", "cpu", "--granularity",
                                                "channel", "--device_profile", str(path), "--preset", "smoke"], capsys)
        assert code == 2 and "has no max_macs" in err and not (tmp_path / "p").exists()
