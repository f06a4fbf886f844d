"""RL regrowth scripts end to end on synthetic data: outputs, resume = uninterrupted, bad inputs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import regrowth_oneshot
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.core.files import read_csv
from utils.core.paths import baseline_cache
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint, save_checkpoint
from utils.search.episodes import Search
from utils.sparsity.masks import add_reparam, num_prunable

FAST = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64",
        "--eval_batch_size", "250", "--ssim_num_batches", "1", "--saliency_batches", "2", "--finetune_epochs", "1",
        "--device", "cpu", "--no_progress", "--ssim_threshold", "0.9"]


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(save_dir, dense checkpoint, 95%-sparse checkpoint) of resnet20."""
    save = tmp_path_factory.mktemp("runs")
    return (save, *save_dense_and_sparse(save, 0.95, "lamp"))


def _oneshot_args(save: Path, sparse: Path, label: str, episodes: int = 3) -> list[str]:
    return FAST + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--num_epochs", str(episodes),
                   "--label", label]


def test_oneshot_search_writes_every_output(start):
    save, _, sparse = start
    assert regrowth_oneshot.main(_oneshot_args(save, sparse, "a")) == 0
    out = save / "resnet20" / "regrowth_oneshot" / "a"
    assert {"best_grown_model.pth", "best_pre_finetune.pth", "episodes.csv", "summary.json", "reward_curve.png",
            "search_state.pt", "log.txt"} <= set(tree(out))
    rows = read_csv(out / "episodes.csv")
    assert len(rows) == 3 and list(rows[0])[:5] == ["episode", "reward", "acc_gain", "bonus", "val_acc"]
    summary = json.loads((out / "summary.json").read_text())
    k = int(0.01 * num_prunable(create_model("resnet20")))
    assert summary["budget"] == k and summary["episodes"] == 3
    for row in rows:
        assert int(row["regrown"]) <= k
        assert sum(json.loads(row["allocation"]).values()) == int(row["regrown"])
    best = read_checkpoint(out / "best_grown_model.pth")
    assert best.meta["allocation"] == summary["best"]["allocation"] and best.meta["finetuned"] is True
    pre = read_checkpoint(out / "best_pre_finetune.pth")
    assert pre.meta["finetuned"] is False
    assert summary["best"]["reward"] == pytest.approx(max(float(r["reward"]) for r in rows))
    log = (out / "log.txt").read_text()  # the decision, shown: one table row per searched layer, and the total
    best_ep = summary["best"]
    assert f"best episode {best_ep['episode']} of 3" in log and "budget bonus" in log
    for layer in summary["searched_layers"]:
        assert re.search(rf"{re.escape(layer)} +-?\d\.\d{{3}} +[\d,]+ +{best_ep['allocation'].get(layer, 0):,}\n", log)
    assert re.search(rf"total +[\d,]+ +{sum(best_ep['allocation'].values()):,}\n", log)


def test_resume_equals_uninterrupted(start, monkeypatch):
    save, _, sparse = start
    assert regrowth_oneshot.main(_oneshot_args(save, sparse, "full", episodes=4)) == 0
    real_episode = Search.evaluate

    def killed_at_third(self, index, ep):
        if index == 2:
            raise KeyboardInterrupt
        return real_episode(self, index, ep)

    monkeypatch.setattr(Search, "evaluate", killed_at_third)
    assert regrowth_oneshot.main(_oneshot_args(save, sparse, "cut", episodes=4)) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(Search, "evaluate", real_episode)
    cut = save / "resnet20" / "regrowth_oneshot" / "cut"
    assert len(read_csv(cut / "episodes.csv")) == 2
    assert regrowth_oneshot.main(_oneshot_args(save, sparse, "cut", episodes=4) + ["--resume"]) == 0
    full = save / "resnet20" / "regrowth_oneshot" / "full"
    assert read_csv(cut / "episodes.csv") == read_csv(full / "episodes.csv")
    stretches = [json.loads((d / "summary.json").read_text())["precisions"] for d in (full, cut)]
    assert stretches[0] == stretches[1] and len(stretches[0]) == 1  # resumed in the same precision: one stretch
    a, b = (read_checkpoint(d / "best_grown_model.pth").state_dict for d in (full, cut))
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_rerun_without_resume_is_refused(start, capsys):
    save, _, sparse = start
    code, _, err = run_main(regrowth_oneshot.main, _oneshot_args(save, sparse, "a"), capsys)
    assert code == 2 and "--resume" in err


@pytest.mark.parametrize("case", ["no-masks", "regrow-step", "dense-of-other-model"])
def test_bad_inputs(start, tmp_path, capsys, case):
    save, dense, sparse = start
    other = tmp_path / "alex.pth"
    save_checkpoint(other, create_model("alexnet"), model_name="alexnet", dataset="synthetic", num_classes=10,
                    meta={})
    args, needle = {
        "no-masks": (["--initial_ckpt", str(dense)], "has no masks"),
        "regrow-step": (["--initial_ckpt", str(sparse), "--regrow_step", "1.5"], "strictly between 0 and 1"),
        "dense-of-other-model": (["--initial_ckpt", str(sparse), "--pretrained", str(other)], "holds a 'alexnet'"),
    }[case]
    out = tmp_path / "runs"
    pretrained = [] if "--pretrained" in args else ["--pretrained", str(dense)]
    code, stdout, err = run_main(regrowth_oneshot.main, FAST + ["--save_dir", str(out)] + pretrained + args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert tree(out) == []


def test_iterative_search_carries_the_model_forward(start, tmp_path):
    import regrowth_iterative

    save, dense, sparse = start
    baseline = tmp_path / "baseline"
    torch.manual_seed(1)
    for amount in (0.9, 0.97):  # two plain-pruning checkpoints around the start
        model = create_model("resnet20")
        add_reparam(model)
        get_pruner("lamp").prune(model, amount)
        save_checkpoint(baseline / f"resnet20_{amount:.4f}.pth", model, model_name="resnet20", dataset="synthetic",
                        num_classes=10, meta={})
    args = FAST + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--baseline_dir", str(baseline),
                   "--target_sparsity", "0.9", "--num_iters", "2", "--num_epochs", "2"]
    before_baseline = tree(baseline)
    assert regrowth_iterative.main(args) == 0
    root = save / "resnet20" / "regrowth_iterative"
    summary = json.loads((root / "summary.json").read_text())
    assert [r["iteration"] for r in summary["iterations"]] == [0, 1]
    s0, s1 = (r["sparsity"] for r in summary["iterations"])
    assert s1 <= s0 < 0.95  # each iteration regrows from the previous one's best model
    assert read_checkpoint(root / "iter_1" / "best_grown_model.pth").meta["parent"].endswith(
        "iter_0/best_grown_model.pth")
    rows = read_csv(root / "iter_0" / "episodes.csv")
    budgets = {int(r["budget"]) for r in rows}
    n_tot = num_prunable(create_model("resnet20"))
    assert budgets <= {int(n_tot * f) for f in (0.001, 0.002, 0.003, 0.004, 0.005)}
    assert baseline_cache(save, "resnet20", baseline).is_file() and tree(baseline) == before_baseline


@pytest.mark.parametrize("case", ["target-not-below", "empty-baseline"])
def test_iterative_bad_inputs(start, tmp_path, capsys, case):
    import regrowth_iterative

    save, dense, sparse = start
    (tmp_path / "empty").mkdir()
    args, needle = {
        "target-not-below": (["--target_sparsity", "0.96", "--baseline_dir", str(tmp_path / "empty")],
                             "not below the start sparsity"),
        "empty-baseline": (["--target_sparsity", "0.9", "--baseline_dir", str(tmp_path / "empty")],
                           "no usable checkpoint"),
    }[case]
    out = tmp_path / "runs"
    code, _, err = run_main(regrowth_iterative.main, FAST + ["--save_dir", str(out), "--pretrained", str(dense),
                                                             "--initial_ckpt", str(sparse)] + args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert tree(out) == []


@pytest.mark.parametrize("mode", ["prop", "random", "topk"])
def test_greedy_spends_the_budget(start, mode):
    import regrowth_greedy

    save, _, sparse = start
    args = FAST + ["--save_dir", str(save), "--initial_ckpt", str(sparse), "--greedy_mode", mode]
    assert regrowth_greedy.main(args) == 0
    out = save / "resnet20" / f"greedy_{mode}"
    row = read_csv(out / "greedy_log.csv")[0]
    k = int(0.01 * num_prunable(create_model("resnet20")))
    assert int(row["budget"]) == int(row["regrown"]) == k
    ckpt = read_checkpoint(out / "iter_0" / "best_grown_model.pth")
    assert ckpt.meta["sparsity"] == pytest.approx(0.95 - k / num_prunable(create_model("resnet20")), abs=1e-5)
    assert sum(ckpt.meta["allocation"].values()) == k
    log = (out / "log.txt").read_text()  # the greedy split per layer, with its total
    assert f"{mode} split of {k} weights" in log and re.search(rf"total +[\d,]+ +{k:,}\n", log)


def test_benchmark_regrowth_writes_breakdown(tmp_path):
    import benchmark_regrowth

    i = FAST.index("--finetune_epochs")
    fast = FAST[:i] + FAST[i + 2:]  # it times one finetune epoch by design
    args = fast + ["--save_dir", str(tmp_path), "--skip_vgg", "--repeats", "1", "--sparsity", "0.95"]
    assert benchmark_regrowth.main(args) == 0
    out = tmp_path / "resnet20" / "benchmark"
    result = json.loads((out / "benchmark_resnet20.json").read_text())
    assert set(result["episode_s"]) == {"ssim_preprocessing", "saliency_preprocessing", "allocation_sampling",
                                        "selection", "mask_update_and_init", "finetune_epoch", "evaluation"}
    assert all(v >= 0 for v in result["episode_s"].values()) and (out / "benchmark_resnet20.png").is_file()


def test_per_element_reference_matches_apply_regrowth():
    from benchmark_regrowth import per_element_regrowth
    from utils.sparsity.grow import apply_regrowth

    torch.manual_seed(0)
    a = create_model("resnet20")
    add_reparam(a)
    get_pruner("glob").prune(a, 0.9)
    b = create_model("resnet20")
    add_reparam(b)
    b.load_state_dict(a.state_dict())
    scores = {n: torch.rand(m.weight_orig.shape) for n, m in a.named_modules() if hasattr(m, "weight_orig")}
    allocation = {"layer2.0.conv1": 100, "linear": 20}
    apply_regrowth(a, allocation, scores)
    per_element_regrowth(b, allocation, scores)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_iterative_resume_equals_uninterrupted(start, tmp_path, monkeypatch):
    import regrowth_iterative

    save, dense, sparse = start
    baseline = tmp_path / "baseline"
    (baseline).mkdir()
    save_checkpoint(baseline / "resnet20_0.9500.pth", read_weights_model(sparse), model_name="resnet20",
                    dataset="synthetic", num_classes=10, meta={})

    def args(save_dir: Path) -> list[str]:
        return FAST + ["--save_dir", str(save_dir), "--pretrained", str(dense), "--initial_ckpt", str(sparse),
                       "--baseline_dir", str(baseline), "--target_sparsity", "0.5", "--num_iters", "2",
                       "--num_epochs", "2"]

    assert regrowth_iterative.main(args(tmp_path / "a")) == 0
    real_episode = Search.evaluate

    def killed(self, index, ep):
        if "iter_1" in str(self.out) and index == 1:
            raise KeyboardInterrupt
        return real_episode(self, index, ep)

    monkeypatch.setattr(Search, "evaluate", killed)
    assert regrowth_iterative.main(args(tmp_path / "b")) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(Search, "evaluate", real_episode)
    assert regrowth_iterative.main(args(tmp_path / "b") + ["--resume"]) == 0
    runs = [tmp_path / d / "resnet20" / "regrowth_iterative" for d in "ab"]
    for it in (0, 1):
        assert read_csv(runs[0] / f"iter_{it}" / "episodes.csv") == read_csv(runs[1] / f"iter_{it}" / "episodes.csv")
    summaries = [json.loads((r / "summary.json").read_text())["iterations"] for r in runs]
    for row in summaries[0] + summaries[1]:
        row.pop("search_seconds")  # wall-clock time, the one thing a resumed run does not repeat
    assert summaries[0] == summaries[1]


def read_weights_model(path: Path):
    """The model stored at ``path`` (resnet20 with masks)."""
    from utils.runtime.checkpoint import load_weights

    model = create_model("resnet20")
    load_weights(model, read_checkpoint(path), "resnet20", path)
    return model


def test_greedy_iterations_chain_their_parents(start, tmp_path):
    import regrowth_greedy

    save, dense, sparse = start
    args = FAST + ["--save_dir", str(tmp_path), "--pretrained", str(dense), "--initial_ckpt", str(sparse),
                   "--greedy_mode", "uniform", "--num_iters", "2"]
    assert regrowth_greedy.main(args) == 0
    out = tmp_path / "resnet20" / "greedy_uniform"
    first, second = (read_checkpoint(out / f"iter_{i}" / "best_grown_model.pth").meta for i in (0, 1))
    assert first["parent"] == str(sparse) and second["parent"] == str(out / "iter_0" / "best_grown_model.pth")
    assert second["sparsity"] < first["sparsity"] < 0.95


def test_greedy_and_the_search_share_the_unit_set(start, tmp_path):
    """--units is one choice for every allocator: greedy with ssim spends its budget on the units the RL search
    searches (same SSIM rule and capacities), and the search with all searches every unit with room."""
    import regrowth_greedy

    save, dense, sparse = start
    common = FAST + ["--save_dir", str(tmp_path), "--pretrained", str(dense), "--initial_ckpt", str(sparse)]
    assert regrowth_oneshot.main(common + ["--num_epochs", "1", "--label", "ssim"]) == 0
    searched = json.loads((tmp_path / "resnet20" / "regrowth_oneshot" / "ssim" / "summary.json").read_text())
    assert searched["units"] == "ssim" and 0 < len(searched["searched_layers"]) < 22
    assert regrowth_greedy.main(common + ["--greedy_mode", "uniform", "--units", "ssim"]) == 0
    out = tmp_path / "resnet20" / "greedy_uniform_ssim"  # beside a default (all units) run, never over it
    allocation = read_checkpoint(out / "iter_0" / "best_grown_model.pth").meta["allocation"]
    assert set(allocation) <= set(searched["searched_layers"])  # the same units, whatever the split rule
    assert sum(allocation.values()) == searched["budget"]
    assert json.loads((out / "summary.json").read_text())["units"] == "ssim"
    assert regrowth_oneshot.main(common + ["--num_epochs", "1", "--label", "all", "--units", "all"]) == 0
    every = json.loads((tmp_path / "resnet20" / "regrowth_oneshot" / "all" / "summary.json").read_text())
    assert every["units"] == "all" and len(every["searched_layers"]) == 22  # every layer of resnet20 has room
