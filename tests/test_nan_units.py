"""Units that never run (NaN SSIM, e.g. EfficientNet's ``layers.0.conv1``) get no budget, in every allocator and
in the RL search's space; the budget is still spent exactly on the others (issue 36, point 3)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from models import create_model
from utils.core.errors import UsageError
from utils.prune.pruners import get_pruner
from utils.regrow.allocation import GREEDY_ALLOCATIONS, allocate_proportional
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.search.episodes import search_space, widen_space
from utils.sparsity.masks import add_reparam

SILENT = "layers.0.conv1"  # EfficientNet-B0's first block has expansion 1: this conv never runs
SSIM = {"a": 0.2, SILENT: math.nan, "b": 0.6, "c": 0.9}
CAPS = {"a": 40, SILENT: 50, "b": 30, "c": 20}


@pytest.mark.parametrize("rule", list(GREEDY_ALLOCATIONS))
def test_every_rule_gives_a_silent_unit_nothing_and_spends_the_budget(rule, log_lines):
    scores = {n: torch.linspace(0, 1, c) + (10.0 if n == SILENT else 0.0) for n, c in CAPS.items()}  # topk's bait
    allocation = GREEDY_ALLOCATIONS.get(rule)(SSIM, CAPS, 60, torch.Generator().manual_seed(0), scores)
    assert SILENT not in allocation and sum(allocation.values()) == 60
    assert all(allocation[n] <= CAPS[n] for n in allocation)
    named = [line for line in log_lines if "never run" in line]
    assert len(named) == 1 and SILENT in named[0]


def test_prop_stays_proportional():
    """The NaN no longer turns every share into 0 (prop became an arbitrary fill): the split is prop's over the
    units that run."""
    live = {n: c for n, c in CAPS.items() if n != SILENT}
    assert allocate_proportional(SSIM, CAPS, 30) == allocate_proportional(SSIM, live, 30)
    assert allocate_proportional(SSIM, CAPS, 30) == {"a": 19, "b": 9, "c": 2}  # 30 · (0.8, 0.4, 0.1) / 1.3


def test_every_unit_silent_is_a_usage_error():
    with pytest.raises(UsageError, match="never runs"):
        GREEDY_ALLOCATIONS.get("uniform")({"x": math.nan}, {"x": 5}, 3, None, None)


@pytest.mark.parametrize("units", ["ssim", "all"])
def test_search_space_leaves_silent_units_out(units, log_lines):
    space = search_space(SSIM, CAPS, 0.95, units)
    assert space.layers == ["a", "b", "c"] and not any(math.isnan(s) for s in space.ssim)
    assert any(SILENT in line and "never run" in line for line in log_lines)
    wide = widen_space(search_space(SSIM, CAPS, 0.3, units), SSIM, CAPS, lambda caps: False)
    assert SILENT not in wide.layers


# ---- end to end on EfficientNet (synthetic data, tiny subsets) ------------------------------------------------
TINY = ["--dataset", "synthetic", "--train_subset", "64", "--eval_subset", "64", "--batch_size", "32",
        "--eval_batch_size", "64", "--ssim_num_batches", "1", "--saliency_batches", "1", "--finetune_epochs", "1",
        "--device", "cpu", "--no_progress", "--m_name", "effnet"]


@pytest.fixture(scope="module")
def effnet(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(save_dir, dense checkpoint, 90%-sparse checkpoint) of an untrained EfficientNet-B0."""
    save = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    model = create_model("effnet")
    dense = save / "effnet" / "checkpoint" / "ckpt.pth"
    save_checkpoint(dense, model, model_name="effnet", dataset="synthetic", num_classes=10, meta={})
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    sparse = save / "effnet" / "oneshot" / "effnet_0.9000.pth"
    save_checkpoint(sparse, model, model_name="effnet", dataset="synthetic", num_classes=10, meta={})
    return save, dense, sparse


@pytest.mark.parametrize("mode", ["prop", "fill", "uniform", "topk"])
def test_greedy_on_effnet_skips_the_layer_that_never_runs(effnet, tmp_path, mode):
    import regrowth_greedy

    _, dense, sparse = effnet
    args = TINY + ["--save_dir", str(tmp_path), "--pretrained", str(dense), "--initial_ckpt", str(sparse),
                   "--greedy_mode", mode, "--units", "all"]
    assert regrowth_greedy.main(args) == 0
    out = tmp_path / "effnet" / f"greedy_{mode}"
    meta = read_checkpoint(out / "iter_0" / "best_grown_model.pth").meta
    allocation = meta["allocation"]
    assert SILENT not in allocation and sum(allocation.values()) == meta["budget"] == meta["regrown"] > 0
    if mode == "prop":  # a proportional split reaches most units, not the few a fill would
        assert len(allocation) > 10
    log = (out / "log.txt").read_text()
    assert any("never run" in line and SILENT in line for line in log.splitlines())


def test_rl_search_on_effnet_skips_the_layer_that_never_runs(effnet, tmp_path):
    import regrowth_oneshot

    _, dense, sparse = effnet
    args = TINY + ["--save_dir", str(tmp_path), "--pretrained", str(dense), "--initial_ckpt", str(sparse),
                   "--units", "all", "--num_epochs", "1", "--label", "nan"]
    assert regrowth_oneshot.main(args) == 0
    out = tmp_path / "effnet" / "regrowth_oneshot" / "nan"
    summary = json.loads((out / "summary.json").read_text())
    assert SILENT not in summary["searched_layers"] and len(summary["searched_layers"]) > 10
    assert not any(math.isnan(s) for s in summary["searched_layers"].values())
    assert SILENT not in summary["best"]["allocation"] and 0 < sum(summary["best"]["allocation"].values())
    assert sum(summary["best"]["allocation"].values()) <= summary["budget"]
    assert any("never run" in line and SILENT in line for line in (out / "log.txt").read_text().splitlines())
