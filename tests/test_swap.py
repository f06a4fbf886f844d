"""Swap cycles at constant density (RigL / GraNet): exact counts, zeros, fresh state, the schedule, the CLI."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn

import finetune
import pipeline
import prune_structure
import prune_unstructure
from data.loader import DeviceLoader
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.prune.gradual import cubic_plan
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.train import finetune_model
from utils.sparsity.masks import add_reparam, get_masks, prunable_modules
from utils.sparsity.swap import SwapCycles, SwapSettings, swap_layer

CPU = torch.device("cpu")
QUIET = LoopSettings(progress=False, verbose=False)
QUICK = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64", "--device",
         "cpu", "--no_progress"]


def _sparse_net(amount: float = 0.8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
    add_reparam(model)
    get_pruner("glob").prune(model, amount)
    return model


def _loader(n: int = 96, seed: int = 0) -> DeviceLoader:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=gen)
    images = (labels.view(-1, 1, 1, 1) * 60 + torch.randint(0, 20, (n, 3, 8, 8), generator=gen)).to(torch.uint8)
    return DeviceLoader(images, labels, batch_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, device=CPU,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_swap_moves_the_weakest_kept_to_the_strongest_pruned(channels_last):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, generator=gen)
    mask = (torch.rand(8, 4, 3, 3, generator=gen) < 0.3).float()
    if channels_last:
        weight, mask = (t.to(memory_format=torch.channels_last) for t in (weight, mask))
    grow = torch.rand(8, 4, 3, 3, generator=gen) * (1 - mask)  # no kept weight would come straight back
    param = nn.Parameter(weight.clone())
    optimizer = torch.optim.Adam([param])
    param.grad = torch.ones_like(param)
    optimizer.step()  # Adam moments are nonzero everywhere
    before, kept = mask.clone(), mask.bool()
    n = swap_layer(param, mask, grow, param.detach().abs(), 0.25, optimizer)
    assert n == round(0.25 * int(kept.sum())) > 0
    assert int(mask.sum()) == int(before.sum())  # the layer's kept count is exact
    dropped, grown = kept & ~mask.bool(), ~kept & mask.bool()
    assert int(dropped.sum()) == int(grown.sum()) == n
    survivors = weight.abs()[kept & mask.bool()]
    assert weight.abs()[dropped].max() <= survivors.min()  # the smallest |θ| among kept went
    assert grow[grown].min() >= grow[~kept & ~mask.bool()].max()  # the largest scores among the pruned came
    assert torch.all(param.data[grown] == 0) and torch.all(param.data[dropped] == 0)  # zero in, zero out
    state = optimizer.state[param]
    for moment in (state["exp_avg"], state["exp_avg_sq"]):
        assert torch.all(moment[grown | dropped] == 0) and torch.all(moment[kept & mask.bool()] != 0)


def test_a_dropped_weight_may_grow_back_at_zero_in_the_same_swap_as_in_rigl():
    weight = torch.tensor([[0.1, 5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    grow = torch.tensor([[100.0, 0.0, 2.0, 1.0]])  # the dropped weight has the largest grow score
    assert swap_layer(weight, mask, grow, weight.abs(), 0.5, None) == 1
    assert mask.tolist() == [[1.0, 1.0, 0.0, 0.0]] and weight.tolist() == [[0.0, 5.0, 0.0, 0.0]]  # back, at zero
    grow = torch.tensor([[0.0, 0.0, 2.0, 1.0]])  # otherwise the largest grow score among the pruned positions
    weight, mask = torch.tensor([[0.1, 5.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert swap_layer(weight, mask, grow, weight.abs(), 0.5, None) == 1
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_the_fraction_follows_a_cosine_and_stops_at_until():
    settings = SwapSettings(every=10, fraction=0.3, until=0.75)
    assert settings.fraction_at(0, 400) == pytest.approx(0.3)
    assert settings.fraction_at(150, 400) == pytest.approx(0.15)  # half way to step 300
    assert settings.fraction_at(299, 400) > 0 and settings.fraction_at(300, 400) == 0
    values = [settings.fraction_at(t, 400) for t in range(0, 300, 10)]
    assert values == sorted(values, reverse=True)
    assert settings.fraction_at(100, 400) == pytest.approx(0.15 * (1 + math.cos(math.pi / 3)))


def test_a_finetune_with_swaps_keeps_every_layer_count_and_the_pruned_zeros():
    model = _sparse_net()
    counts = {n: int(m.sum()) for n, m in get_masks(model).items()}
    start = {n: m.clone() for n, m in get_masks(model).items()}
    train, val = _loader(), _loader(48, seed=1)  # 6 steps per epoch, 4 epochs: 24 steps, swaps until step 18
    settings = FinetuneSettings(epochs=4, lr=0.01, swap=SwapSettings(every=4, fraction=0.3, until=0.75))
    seen = []
    original = SwapCycles.after_step

    def check(self):  # every step: counts unchanged; on a swap step the grown weights start at exactly zero
        before = {n: m.weight_mask.clone() for n, m in self.layers.items()}
        original(self)
        for name, module in self.layers.items():
            grown = module.weight_mask.bool() & ~before[name].bool()
            seen.append((int(module.weight_mask.sum()) == int(before[name].sum()),
                         bool(torch.all(module.weight_orig[grown] == 0)), int(grown.sum())))

    SwapCycles.after_step = check
    try:
        state = finetune_model(model, train, val, settings, QUIET)
    finally:
        SwapCycles.after_step = original
    assert len(seen) == 24 * len(counts) and all(same and zero for same, zero, _ in seen)
    # what moved is what the meta says, less the weights dropped and grown back in the same swap (RigL's rule)
    assert 0 < sum(n for _, _, n in seen) <= state.swaps["weights_moved"]
    assert state.swaps["swaps"] == 4 and state.swaps["weights_moved"] > 0  # steps 4, 8, 12, 16 (< 18)
    assert state.swaps["every"] == 4 and state.swaps["grow_score"] == "gradient"
    masks = get_masks(model)  # the best epoch's masks, loaded back
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert any(not torch.equal(masks[n], start[n]) for n in masks)  # positions did move
    for module in prunable_modules(model).values():
        assert not module._forward_pre_hooks or len(module._forward_pre_hooks) == 1  # only the mask's hook is left


def test_swap_every_zero_is_the_plain_finetune():
    results, start = [], {k: v.clone() for k, v in _sparse_net().state_dict().items()}
    for swap in (None, SwapSettings(every=0)):
        model = _sparse_net()
        torch.manual_seed(0)
        state = finetune_model(model, _loader(), _loader(48, seed=1), FinetuneSettings(epochs=2, lr=0.01, swap=swap),
                               QUIET)
        results.append((state.best_val_acc, model.state_dict(), state.swaps))
    (acc_a, sd_a, swaps_a), (acc_b, sd_b, swaps_b) = results
    assert acc_a == acc_b and swaps_a == swaps_b == {}
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["0.weight_orig"], start["0.weight_orig"])  # both took optimizer steps


def test_saliency_grow_score_needs_the_dense_weights():
    model = _sparse_net()
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(UsageError, match="--pretrained"):
        SwapCycles(model, SwapSettings(every=1, grow_score="saliency"), 10, optimizer)


def test_finetune_script_swaps_and_records_them(tmp_path):
    _, sparse = save_dense_and_sparse(tmp_path, 0.9)
    assert finetune.main(QUICK + ["--ckpt", str(sparse), "--epochs", "2", "--swap_every", "1", "--save_dir",
                                  str(tmp_path), "--grow_score", "saliency"]) == 0
    ckpt = read_checkpoint(sparse.with_name(f"{sparse.stem}_finetuned.pth"))
    assert ckpt.meta["swap"]["swaps"] >= 1 and ckpt.meta["swap"]["weights_moved"] > 0
    assert ckpt.meta["swap"]["grow_score"] == "saliency"
    assert ckpt.meta["sparsity"] == pytest.approx(0.9, abs=1e-4)
    model = create_model("resnet20")
    add_reparam(model)
    model.load_state_dict(ckpt.state_dict)
    before = read_checkpoint(sparse).state_dict
    for name, mask in get_masks(model).items():
        assert int(mask.sum()) == int(before[f"{name}.weight_mask"].sum())


@pytest.mark.parametrize("extra, message", [
    (["--compile"], "--compile"),
    (["--swap_fraction", "1.5"], "--swap_fraction"),
])
def test_finetune_script_refuses_bad_swap_flags(tmp_path, capsys, extra, message):
    _, sparse = save_dense_and_sparse(tmp_path, 0.9)
    files = tree(tmp_path)
    code, _, err = run_main(finetune.main, QUICK + ["--ckpt", str(sparse), "--swap_every", "5", *extra], capsys)
    assert code == 2 and err.startswith("error:") and message in err and tree(tmp_path) == files


def test_swap_benchmark_times_a_step_with_and_without_a_swap(tmp_path, monkeypatch):
    from benchmarks import bench_swap, common

    monkeypatch.setattr(common, "ROOT", tmp_path)
    result = bench_swap.main(["--model", "resnet20", "--batch_size", "8", "--repeats", "1", "--device", "cpu"])
    assert result["step_ms"] > 0 and result["swap_step_ms"] > 0 and result["swap_ms"] >= 0
    assert (tmp_path / "benchmarks" / "results" / "bench_swap_resnet20_cpu.json").is_file()


def test_prune_unstructure_swaps_in_its_finetune_and_records_them(tmp_path):
    save_dense_and_sparse(tmp_path, 0.9)
    assert prune_unstructure.main(QUICK + ["--save_dir", str(tmp_path), "--mode", "oneshot", "--target_sparsity",
                                           "0.95", "--finetune_epochs", "1", "--swap_every", "1"]) == 0
    ckpt = read_checkpoint(tmp_path / "resnet20" / "oneshot" / "resnet20_0.9500.pth")
    assert ckpt.meta["swap"]["swaps"] >= 1 and ckpt.meta["sparsity"] == pytest.approx(0.95, abs=1e-4)


def test_pipeline_refuses_swaps_on_channels_before_any_work(tmp_path, capsys):
    code, _, err = run_main(pipeline.main, ["--preset", "smoke", "--granularity", "channel", "--save_dir",
                                            str(tmp_path / "run"), "--swap_every", "10"], capsys)
    assert code == 2 and err.startswith("error: --swap_every") and not (tmp_path / "run").exists()


# ---- gradual pruning (Zhu & Gupta's cubic schedule; GraNet with swaps) ---------------------------------------

def test_the_cubic_plan_removes_most_early_and_ends_exactly_at_the_target():
    plan = cubic_plan(alive=10_000, remove=9_000, steps=5, end_step=100)
    assert [t for t, _ in plan] == [20, 40, 60, 80, 100]
    kept = [k for _, k in plan]
    assert kept[-1] == 1_000 and kept == sorted(kept, reverse=True)
    removed = [10_000 - kept[0]] + [a - b for a, b in zip(kept, kept[1:], strict=False)]
    assert removed == sorted(removed, reverse=True) and removed[0] == round(9_000 * (1 - 0.8 ** 3))
    assert cubic_plan(100, 10, 4, 2)[-1] == (2, 90)  # more pruning steps than optimizer steps: several per step


def test_gradual_pruning_reaches_the_exact_target_with_swaps_and_picks_a_final_epoch(tmp_path):
    save_dense_and_sparse(tmp_path, 0.9)
    common = QUICK + ["--save_dir", str(tmp_path), "--target_sparsity", "0.95", "--finetune_epochs", "3"]
    assert prune_unstructure.main(common + ["--mode", "oneshot"]) == 0
    assert prune_unstructure.main(common + ["--mode", "gradual", "--gradual_steps", "3", "--gradual_until", "0.6",
                                            "--swap_every", "1"]) == 0
    oneshot = read_checkpoint(tmp_path / "resnet20" / "oneshot" / "resnet20_0.9500.pth")
    gradual = read_checkpoint(tmp_path / "resnet20" / "gradual" / "resnet20_0.9500.pth")
    kept = [sum(int(v.sum()) for k, v in c.state_dict.items() if k.endswith("weight_mask")) for c in (oneshot, gradual)]
    assert kept[0] == kept[1]  # the same exact count as the one-shot pruner's
    record = gradual.meta["gradual"]
    assert record["done"] == record["pruning_steps"] == 3 and record["plan"][-1][1] == kept[1]
    steps_per_epoch = 2  # 128 training images, batch 64
    assert record["last_step"] == round(0.6 * 3 * steps_per_epoch)  # step 4: the end of epoch 2
    rows = read_csv(tmp_path / "resnet20" / "gradual" / "finetune_resnet20_0.9500.csv")
    best = max(rows[1:], key=lambda r: float(r["val_acc"]))  # epoch 1 ends before the last pruning step
    assert gradual.meta["val_acc"] == pytest.approx(float(best["val_acc"]), abs=1e-6)  # the best of epochs 2-3
    assert gradual.meta["swap"]["swaps"] >= 1
    # each epoch's row says how far the schedule got and what the swaps did so far (also in the log line)
    assert [float(r["sparsity"]) for r in rows][-1] == pytest.approx(0.95, abs=1e-4)
    assert float(rows[0]["sparsity"]) < 0.95 and int(rows[-1]["swaps"]) == gradual.meta["swap"]["swaps"]
    assert int(rows[-1]["weights_moved"]) == gradual.meta["swap"]["weights_moved"]
    log = (tmp_path / "resnet20" / "gradual" / "log.txt").read_text()
    assert re.search(r"epoch 3/3 .* sparsity 0\.9500 .*swaps \d+ .*weights moved [\d,]+", log)
    # its figure is the schedule (sparsity and val accuracy per epoch), not a one-point accuracy-vs-sparsity curve
    files = tree(tmp_path / "resnet20" / "gradual")
    assert "gradual_schedule.png" in files and "sparsity_vs_accuracy.png" not in files
    plan = read_csv(tmp_path / "resnet20" / "gradual" / "schedule_resnet20_0.9500.csv")  # the plan in optimizer steps
    assert [int(r["step"]) for r in plan] == [0, *(t for t, _ in record["plan"])]
    assert float(plan[0]["sparsity"]) == 0.0 and float(plan[-1]["sparsity"]) == pytest.approx(
        0.95, abs=1e-4) and float(plan[-1]["epoch"]) == pytest.approx(record["last_step"] / steps_per_epoch)


def test_gradual_mode_is_for_weights_and_one_target(tmp_path, capsys):
    code, _, err = run_main(prune_structure.main, QUICK + ["--save_dir", str(tmp_path), "--mode", "gradual",
                                                           "--target_sparsity", "0.5"], capsys)
    assert code == 2 and "gradual" in err
    code, _, err = run_main(prune_unstructure.main, QUICK + ["--save_dir", str(tmp_path), "--mode", "gradual",
                                                             "--target_sparsity", "0.5", "0.6"], capsys)
    assert code == 2 and "one --target_sparsity" in err and tree(tmp_path) == []
    save_dense_and_sparse(tmp_path, 0.9)
    before = tree(tmp_path)
    code, _, err = run_main(prune_unstructure.main, QUICK + ["--save_dir", str(tmp_path), "--mode", "gradual",
                                                             "--pruner", "unifplus", "--target_sparsity", "0.999"],
                            capsys)  # infeasible for unifplus: said before the finetune, not at its last step
    assert code == 2 and "--target_sparsity 0.999" in err and tree(tmp_path) == before


def test_saliency_swaps_refuse_a_dense_model_the_checkpoint_was_not_pruned_from(tmp_path, capsys):
    save_dense_and_sparse(tmp_path, 0.9)
    assert prune_unstructure.main(QUICK + ["--save_dir", str(tmp_path), "--mode", "oneshot", "--target_sparsity",
                                           "0.95", "--finetune_epochs", "1"]) == 0
    other = tmp_path / "other.pth"
    save_dense_and_sparse(tmp_path / "other_run", 0.9, seed=1)  # another dense model
    (tmp_path / "other_run" / "resnet20" / "checkpoint" / "ckpt.pth").rename(other)
    ckpt = tmp_path / "resnet20" / "oneshot" / "resnet20_0.9500.pth"
    code, _, err = run_main(finetune.main, QUICK + ["--ckpt", str(ckpt), "--swap_every", "1", "--grow_score",
                                                    "saliency", "--pretrained", str(other)], capsys)
    assert code == 2 and "pruned from another dense model" in err
    assert not ckpt.with_name("resnet20_0.9500_finetuned.pth").exists()


def test_a_swap_interval_in_epochs_becomes_steps_of_the_run_and_swaps_as_often():
    assert SwapSettings(every_epochs=0.5).in_steps(6).every == 3
    assert SwapSettings(every_epochs=0.01).in_steps(6).every == 1  # at least every step
    assert SwapSettings(every=7).in_steps(6).every == 7  # an interval in steps stays as it is
    model = _sparse_net()
    counts = {n: int(m.sum()) for n, m in get_masks(model).items()}
    train, val = _loader(), _loader(48, seed=1)  # 6 steps per epoch, 4 epochs: 24 steps, swaps until step 18
    settings = FinetuneSettings(epochs=4, lr=0.01, swap=SwapSettings(every_epochs=0.5, fraction=0.3, until=0.75))
    state = finetune_model(model, train, val, settings, QUIET)
    assert state.swaps["every"] == 3 and state.swaps["every_epochs"] == 0.5  # both recorded
    assert state.swaps["swaps"] == 5  # steps 3, 6, 9, 12, 15 (< 18)
    assert {n: int(m.sum()) for n, m in get_masks(model).items()} == counts


def test_finetune_script_takes_the_swap_interval_in_epochs(tmp_path, capsys):
    _, sparse = save_dense_and_sparse(tmp_path, 0.9)
    out = tmp_path / "tuned.pth"
    code, _, err = run_main(finetune.main, QUICK + ["--ckpt", str(sparse), "--save_path", str(out), "--epochs", "2",
                                                    "--swap_every_epochs", "0.5", "--swap_every", "2"], capsys)
    assert code == 2 and "pass one" in err and not out.exists()
    assert finetune.main(QUICK + ["--ckpt", str(sparse), "--save_path", str(out), "--epochs", "2",
                                  "--swap_every_epochs", "1"]) == 0
    swap = read_checkpoint(out).meta["swap"]
    # 2 steps an epoch (128 images, batch 64), 4 in all: one swap at step 2 (swaps end at 0.75 · 4 = 3)
    assert swap["every_epochs"] == 1 and swap["every"] == 2 and swap["swaps"] == 1
