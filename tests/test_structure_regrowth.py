"""Structured (channel) regrowth end to end on synthetic data: both RL scripts, resume, greedy channel modes,
the original repository's structured checkpoints, and the bad inputs of the channel searches."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch

import regrowth_greedy
import regrowth_structure_iterative
import regrowth_structure_oneshot
from models import create_model
from tests.conftest import run_main, tree
from utils.cli.prepare import prepare_model_only
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.core.paths import baseline_cache
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from utils.search.baseline import read_baseline_cache
from utils.search.episodes import Search
from utils.sparsity.granularity import get_granularity
from utils.sparsity.masks import add_reparam
from utils.sparsity.physical import export_model

FAST = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64",
        "--eval_batch_size", "250", "--ssim_num_batches", "1", "--taylor_batches", "1", "--finetune_epochs", "1",
        "--device", "cpu", "--no_progress", "--ssim_threshold", "0.9"]
CHANNELS = 448  # resnet20's groupable channels


def _channel_pruned(path: Path, amount: float, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("resnet20")
    gran = get_granularity("channel", "resnet20")
    get_pruner("l1", gran, "global").prune(model, amount)
    save_checkpoint(path, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={},
                    channel_masks=gran.checkpoint_masks(model))
    return path


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(save_dir, dense resnet20, its 80% channel-pruned copy)."""
    save = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    dense = save / "resnet20" / "checkpoint" / "ckpt.pth"
    save_checkpoint(dense, create_model("resnet20"), model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={})
    return save, dense, _channel_pruned(save / "ch0.8.pth", 0.8)


def _oneshot(save: Path, sparse: Path, label: str, episodes: int = 2) -> list[str]:
    return FAST + ["--save_dir", str(save), "--pruned_ckpt", str(sparse), "--num_epochs", str(episodes),
                   "--label", label, "--sparsity_delta", "0.02"]


def test_oneshot_writes_every_output_with_channel_masks_and_export(start):
    save, _, sparse = start
    assert regrowth_structure_oneshot.main(_oneshot(save, sparse, "a")) == 0
    out = save / "resnet20" / "regrowth_structure_oneshot" / "a"
    assert {"best_grown_model.pth", "best_pre_finetune.pth", "best_grown_model_exported.pth", "episodes.csv",
            "summary.json", "reward_curve.png", "search_state.pt", "log.txt"} <= set(tree(out))
    summary = json.loads((out / "summary.json").read_text())
    k = int(0.02 * CHANNELS)
    assert summary["granularity"] == "channel" and summary["budget"] == k
    assert set(summary["searched_layers"]) <= set(get_granularity("channel", "resnet20").units())
    best = read_checkpoint(out / "best_grown_model.pth")
    assert best.granularity == "channel"
    start_masks = read_checkpoint(sparse).channel_masks
    grown = {r: int((best.channel_masks[r] & ~start_masks[r]).sum()) for r in start_masks}
    assert sum(grown.values()) == sum(best.meta["allocation"].values()) <= k
    assert all(not (start_masks[r] & ~best.channel_masks[r]).any() for r in start_masks)  # nothing pruned
    exported = read_checkpoint(out / "best_grown_model_exported.pth")
    assert exported.export_history and summary["params"] == exported.meta["params"]
    assert exported.meta["test_acc"] == summary["best_test_acc"]
    assert summary["params"] < 272_474 and summary["macs"] < 41_214_602


def test_oneshot_resume_equals_uninterrupted(start, monkeypatch):
    save, _, sparse = start
    assert regrowth_structure_oneshot.main(_oneshot(save, sparse, "full", episodes=3)) == 0
    real_episode = Search.evaluate

    def killed_at_second(self, index, ep):
        if index == 1:
            raise KeyboardInterrupt
        return real_episode(self, index, ep)

    monkeypatch.setattr(Search, "evaluate", killed_at_second)
    assert regrowth_structure_oneshot.main(_oneshot(save, sparse, "cut", episodes=3)) == 130  # Ctrl-C
    monkeypatch.setattr(Search, "evaluate", real_episode)
    assert regrowth_structure_oneshot.main(_oneshot(save, sparse, "cut", episodes=3) + ["--resume"]) == 0
    root = save / "resnet20" / "regrowth_structure_oneshot"
    assert read_csv(root / "cut" / "episodes.csv") == read_csv(root / "full" / "episodes.csv")
    a, b = (read_checkpoint(root / d / "best_grown_model.pth") for d in ("full", "cut"))
    assert all(torch.equal(a.channel_masks[k], b.channel_masks[k]) for k in a.channel_masks)
    assert all(torch.allclose(a.state_dict[k].float(), b.state_dict[k].float(), atol=1e-6) for k in a.state_dict)


def test_iterative_rewards_against_the_structured_baseline(start, tmp_path):
    save, _, sparse = start
    baseline = tmp_path / "structured_iterative"
    for amount in (0.6, 0.85):
        _channel_pruned(baseline / f"resnet20_ch{amount:.4f}.pth", amount, seed=1)
    args = FAST + ["--save_dir", str(save), "--pruned_ckpt", str(sparse), "--baseline_dir", str(baseline),
                   "--target_sparsity", "0.7", "--num_iters", "2", "--num_epochs", "1"]
    assert regrowth_structure_iterative.main(args) == 0
    root = save / "resnet20" / "regrowth_structure_iterative"
    assert {"summary.json", "log.txt", "iter_0/best_grown_model.pth", "iter_0/best_pre_finetune.pth",
            "iter_0/episodes.csv", "iter_0/summary.json", "iter_0/search_state.pt", "iter_0/reward_curve.png",
            "iter_1/best_grown_model_exported.pth"} <= set(tree(root))
    summary = json.loads((root / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1]
    budgets = {int(r["budget"]) for r in read_csv(root / "iter_0" / "episodes.csv")}
    assert budgets <= {int(CHANNELS * f + 1e-9) for f in (0.005, 0.00625, 0.0075, 0.00875, 0.01)}
    assert summary["final_sparsity"] < 0.8 and "final_test_acc" in summary and summary["params"] > 0
    cache = read_baseline_cache(baseline_cache(save, "resnet20", baseline))
    assert sorted(round(e["sparsity"], 3) for e in cache["entries"].values()) == [0.6, 0.85]


def test_topk_regrows_exactly_the_global_top_channels():
    from utils.regrow.allocation import allocate_top_scores, pruned_scores

    torch.manual_seed(0)
    model, gran = create_model("resnet20"), get_granularity("channel", "resnet20")
    get_pruner("l1", gran, "global").prune(model, 0.5)
    masks, g = gran.masks(model), torch.Generator().manual_seed(1)
    scores = {unit: torch.rand(mask.shape, generator=g) for unit, mask in masks.items()}  # one per channel
    units = gran.capacity(model)
    ranked = pruned_scores(scores, masks, units)
    threshold = torch.cat(list(ranked.values())).topk(20).values[-1]
    allocation = allocate_top_scores({}, units, 20, None, ranked)
    assert sum(gran.regrow(model, allocation, scores, "preserve").values()) == 20
    back = torch.cat([scores[u][gran.masks(model)[u] & ~masks[u]] for u in units])
    assert back.numel() == 20 and bool((back >= threshold).all())  # the 20 best pruned channels anywhere


@pytest.mark.parametrize("mode", ["fill", "prop", "uniform", "random", "topk"])
def test_greedy_channel_modes_spend_exactly_the_budget(start, mode):
    save, _, sparse = start
    args = FAST + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--granularity", "channel",
                   "--greedy_mode", mode, "--regrow_step", "0.03"]
    assert regrowth_greedy.main(args) == 0
    out = save / "resnet20" / f"greedy_channel_{mode}"
    row = read_csv(out / "greedy_log.csv")[0]
    k = int(0.03 * CHANNELS)
    assert int(row["budget"]) == int(row["regrown"]) == k
    ckpt = read_checkpoint(out / "iter_0" / "best_grown_model.pth")
    live = sum(int(m.sum()) for m in ckpt.channel_masks.values())
    assert live == sum(int(m.sum()) for m in read_checkpoint(sparse).channel_masks.values()) + k


def _original(tmp_path: Path, name: str, key: str = "out_index_map", every_conv: bool = True):
    """(granularity, masked model, path of the same model saved as the original repo's structured checkpoint:
    a pickled slimmed module and, for every conv of each group, its live channels in physical order)."""
    gran = get_granularity("channel", name)
    torch.manual_seed(0)
    masked = create_model(name)
    for m in masked.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    get_pruner("random", gran, "global").prune(masked, 0.6, torch.Generator().manual_seed(1))
    slim, _ = export_model(gran, masked.eval())
    index_map = {}
    for group in gran.groups:
        live = gran.masks(masked)[group.root].nonzero().flatten().tolist()
        members = {s.module for s in group.members("producer")} if every_conv else {group.root}
        index_map.update(dict.fromkeys(members, live))
    path = tmp_path / f"{name}_step01_sp0.600.pth"
    torch.save({"model": slim, key: index_map, "pruned_out_dense_map": {}}, path)
    return gran, masked, path, index_map


def _load_original(tmp_path: Path, name: str, path: Path, trust: bool = True):
    args = argparse.Namespace(device="cpu", no_channels_last=True, trust_pickle=trust)
    return prepare_model_only(args, _ref(tmp_path, name), "channel").load_model(path)


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "alexnet"])
def test_an_original_structured_checkpoint_loads_with_its_channels(tmp_path, name):
    """With --trust_pickle the original's slimmed checkpoint becomes our full-shape model with channel masks:
    the same outputs, BN statistics in the right channels (vgg16's biased convs, AlexNet's 4 columns per
    channel through the flatten included)."""
    gran, masked, path, _ = _original(tmp_path, name)
    loaded = _load_original(tmp_path, name, path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), masked(x))
    assert all(torch.equal(gran.masks(loaded)[r], m) for r, m in gran.masks(masked).items())
    bns = [n for n, m in masked.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        live = gran.masks(masked)[next(g.root for g in gran.groups if any(s.module == bn for s in g.slices))]
        for stat in ("running_mean", "running_var"):
            assert torch.equal(getattr(dict(loaded.named_modules())[bn], stat)[live],
                               getattr(dict(masked.named_modules())[bn], stat)[live])
    with pytest.raises(UsageError, match="--trust_pickle"):
        _load_original(tmp_path, name, path, trust=False)


def test_bad_original_maps_and_dead_regrowth_are_refused(tmp_path):
    gran, masked, path, index_map = _original(tmp_path, "resnet20")
    bad = dict(index_map)
    bad["conv1"] = bad["conv1"][:-1] + [bad["conv1"][0]]  # a channel listed twice
    torch.save({"model": torch.load(path, weights_only=False)["model"], "out_index_map": bad}, tmp_path / "dup.pth")
    with pytest.raises(UsageError, match="distinct"):
        _load_original(tmp_path, "resnet20", tmp_path / "dup.pth")
    torch.save({"model": torch.load(path, weights_only=False)["model"], "out_index_map": [1, 2]}, tmp_path / "l.pth")
    with pytest.raises(UsageError, match="index map"):
        _load_original(tmp_path, "resnet20", tmp_path / "l.pth")
    loaded = _load_original(tmp_path, "resnet20", path)  # its pruned slices are stored as zeros
    scores = {r: torch.rand(m.shape) for r, m in gran.masks(loaded).items()}
    with pytest.raises(UsageError, match="dead channel"):
        gran.regrow(loaded, {"layer1.0.conv1": 2}, scores, "magnitude")


def _ref(tmp_path: Path, name: str = "resnet20") -> Checkpoint:
    """A bridge-ckpt that names the model and class count (what prepare_model_only needs)."""
    path = tmp_path / f"ref_{name}.pth"
    save_checkpoint(path, create_model(name), model_name=name, dataset="synthetic", num_classes=10, meta={})
    return read_checkpoint(path)


def _digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha1((folder / f).read_bytes()).hexdigest() for f in tree(folder)}


def test_bad_inputs_of_the_channel_searches(start, tmp_path, capsys):
    save, dense, sparse = start
    weights = tmp_path / "w.pth"
    model = create_model("resnet20")
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.9)
    save_checkpoint(weights, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    (tmp_path / "no_structured").mkdir()
    save_checkpoint(tmp_path / "no_structured" / "w.pth", model, model_name="resnet20", dataset="synthetic",
                    num_classes=10, meta={})
    out = tmp_path / "runs"
    common = FAST + ["--save_dir", str(out), "--pretrained", str(dense)]
    cases = [
        (regrowth_structure_oneshot.main, ["--pruned_ckpt", str(weights)], "unstructured weight masks"),
        (regrowth_structure_oneshot.main, ["--pruned_ckpt", str(dense)], "has no masks"),
        (regrowth_structure_oneshot.main, ["--pruned_ckpt", str(sparse), "--sparsity_delta", "0.001"],
         "budget is 0"),
        (regrowth_structure_oneshot.main, ["--pruned_ckpt", str(sparse), "--init_strategy", "zero"], "dead"),
        (regrowth_structure_oneshot.main, ["--pruned_ckpt", str(sparse), "--init_strategy", "xavier"],
         "does not apply to channel"),
        (regrowth_structure_iterative.main, ["--pruned_ckpt", str(sparse), "--target_sparsity", "0.7",
                                             "--baseline_dir", str(tmp_path / "no_structured")],
         "no usable checkpoint"),
        (regrowth_greedy.main, ["--initial_ckpt", str(sparse), "--granularity", "channel", "--init_strategy",
                                "zero"], "dead"),
    ]
    before = _digest(save)
    for main, argv, needle in cases:
        code, _, err = run_main(main, common + argv, capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and needle in errors[0] and "Traceback" not in err, (argv, err)
        assert tree(out) == [] and _digest(save) == before, argv


def test_benchmark_regrowth_channel_breakdown(tmp_path):
    import benchmark_regrowth

    i, j = FAST.index("--taylor_batches"), FAST.index("--finetune_epochs")
    fast = [a for k, a in enumerate(FAST) if k not in (i, i + 1, j, j + 1)]  # it times one finetune epoch
    args = fast + ["--save_dir", str(tmp_path), "--skip_vgg", "--repeats", "1", "--granularity", "channel",
                   "--saliency_batches", "1"]
    assert benchmark_regrowth.main(args) == 0
    result = json.loads((tmp_path / "resnet20" / "benchmark" / "benchmark_resnet20_channel.json").read_text())
    assert {"selection", "mask_update_and_init", "finetune_epoch"} <= set(result["episode_s"])
    assert all(v >= 0 for v in result["episode_s"].values())


def test_oneshot_with_a_baseline_dir_rewards_against_the_interpolated_baseline(start, tmp_path):
    from utils.search.baseline import interpolate

    save, _, sparse = start
    baseline = tmp_path / "structured_oneshot"
    for amount in (0.6, 0.9):
        _channel_pruned(baseline / f"resnet20_ch{amount:.4f}.pth", amount, seed=2)
    assert regrowth_structure_oneshot.main(_oneshot(save, sparse, "b") + ["--baseline_dir", str(baseline)]) == 0
    cache = read_baseline_cache(baseline_cache(save, "resnet20", baseline))
    table = {e["sparsity"]: e["val_acc"] for e in cache["entries"].values()}
    for row in read_csv(save / "resnet20" / "regrowth_structure_oneshot" / "b" / "episodes.csv"):
        zero = interpolate(table, float(row["sparsity"]))
        assert float(row["acc_gain"]) == pytest.approx(float(row["val_acc"]) - zero, abs=1e-6)
