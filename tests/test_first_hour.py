"""What a new user meets first: --help that shows every default, checkpoints that know their dense parent,
pipeline logs that say what ran, and plots whose axes stay inside the valid range."""
from __future__ import annotations

import argparse
import importlib
import shlex
from pathlib import Path

import pytest
import torch

import analyze_layers
import evaluate as evaluate_script
import finetune
import pretrain
import prune_unstructure
import regrowth_oneshot
import utils.results.plots as plots
from models import create_model
from tests.conftest import run_main, save_dense_and_sparse, tree
from utils.cli.flags import ArgumentParser
from utils.runtime.checkpoint import LINEAGE_KEY, read_checkpoint, save_checkpoint
from utils.runtime.stage import finetune_suggestion

SCRIPTS = ["analyze_layers", "benchmark_regrowth", "evaluate", "export", "find_drop_point", "finetune", "pipeline",
           "pretrain", "prune_structure", "prune_unstructure", "regrowth_greedy", "regrowth_iterative",
           "regrowth_oneshot", "regrowth_structure_iterative", "regrowth_structure_oneshot", "report",
           "single_layer_regrowth_analysis"]
QUICK = ["--dataset", "synthetic", "--train_subset", "128", "--eval_subset", "250", "--batch_size", "64", "--device",
         "cpu", "--no_progress"]


class _Captured(Exception):
    pass


def script_parser(name: str, monkeypatch) -> ArgumentParser:
    """The parser a script's parse_args builds (caught where it would parse)."""
    found = {}

    def capture(self, args=None, namespace=None):
        found["parser"] = self
        raise _Captured

    monkeypatch.setattr(ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured):
        importlib.import_module(name).parse_args([])
    return found["parser"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_describes_every_flag_and_shows_its_default(name, monkeypatch):
    parser = script_parser(name, monkeypatch)
    text = " ".join(parser.format_help().split())  # argparse wraps lines; compare with single spaces
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flag = "/".join(action.option_strings) or action.dest
        assert action.help, f"{name} {flag} has no help text"
        if action.option_strings and action.default not in (None, False):
            shown = (" ".join(map(str, action.default)) if isinstance(action.default, (list, tuple))
                     else str(action.default))
            assert f"(default: {shown})" in text or "%(default)" in action.help, f"{name} {flag}: no default"
    required = [a for a in parser._actions if a.required and a.option_strings]
    if required:  # listed first: the "required" section comes before every optional flag
        assert text.index("required:") < text.index("-h, --help")


def test_evaluate_help_lists_only_what_evaluation_uses(monkeypatch):
    text = script_parser("evaluate", monkeypatch).format_help()
    assert not [f for f in ("--batch_size", "--train_subset", "--no_augment", "--save_dir", "--lr") if f in text]
    assert all(f in text for f in ("--ckpt", "--eval_batch_size", "--per_layer", "--device_profile"))


@pytest.fixture()
def pruned(tmp_path) -> tuple[Path, Path, Path]:
    """(save_dir, dense, 90% one-shot pruned) written by the stage scripts themselves."""
    torch.manual_seed(0)
    dense = tmp_path / "resnet20" / "checkpoint" / "ckpt.pth"
    save_checkpoint(dense, create_model("resnet20"), model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "pretrain"})
    assert prune_unstructure.main(QUICK + ["--save_dir", str(tmp_path), "--mode", "oneshot", "--target_sparsity",
                                           "0.9", "--finetune_epochs", "1"]) == 0
    return tmp_path, dense, tmp_path / "resnet20" / "oneshot" / "resnet20_0.9000.pth"


def test_sparse_checkpoints_record_their_dense_parent(pruned):
    save, dense, sparse = pruned
    fingerprint = read_checkpoint(dense).lineage
    assert len(fingerprint) == 16 and read_checkpoint(sparse).meta[LINEAGE_KEY] == fingerprint
    tuned = save / "tuned.pth"  # carried on through later stages
    assert finetune.main(QUICK + ["--ckpt", str(sparse), "--save_path", str(tuned), "--epochs", "1"]) == 0
    assert read_checkpoint(tuned).meta[LINEAGE_KEY] == fingerprint


def test_a_retrained_dense_model_is_refused_unless_allowed(pruned, capsys):
    save, dense, sparse = pruned
    torch.manual_seed(1)  # "pretrain.py --overwrite": other weights at the same path
    save_checkpoint(dense, create_model("resnet20"), model_name="resnet20", dataset="synthetic", num_classes=10,
                    meta={"stage": "pretrain"})
    args = QUICK + ["--save_dir", str(save), "--ckpt", str(sparse), "--ssim_num_batches", "1",
                    "--saliency_batches", "1"]
    code, _, err = run_main(analyze_layers.main, args, capsys)
    assert code == 2 and err.count("\n") == 1 and "was pruned from another dense model" in err
    assert "--allow_other_dense" in err and tree(save / "resnet20" / "analysis") == []
    code, _, _ = run_main(analyze_layers.main, args + ["--allow_other_dense"], capsys)
    assert code == 0


def test_files_without_a_recorded_parent_are_not_refused(pruned, capsys):
    """A raw state dict with merged masks (the original code's format) records no parent and is not a dense
    model of its own; a finetuned dense model is a new dense model (its own fingerprint, no parent entry)."""
    save, dense, sparse = pruned
    ckpt = read_checkpoint(sparse)
    merged = {k.replace("_orig", ""): v * ckpt.state_dict[k.replace("_orig", "_mask")] if k.endswith("_orig") else v
              for k, v in ckpt.state_dict.items() if not k.endswith("_mask")}
    raw = save / "raw_sparse.pth"
    torch.save(merged, raw)
    assert read_checkpoint(raw).lineage is None
    code, _, err = run_main(analyze_layers.main, QUICK + ["--m_name", "resnet20", "--save_dir", str(save), "--ckpt",
                                                          str(raw), "--ssim_num_batches", "1", "--saliency_batches",
                                                          "1"], capsys)
    assert code == 0, err
    tuned = save / "dense_tuned.pth"
    assert finetune.main(QUICK + ["--ckpt", str(dense), "--save_path", str(tuned), "--epochs", "1"]) == 0
    tuned_ckpt = read_checkpoint(tuned)
    assert LINEAGE_KEY not in tuned_ckpt.meta and tuned_ckpt.lineage not in (None, read_checkpoint(dense).lineage)


@pytest.fixture()
def captured_axes(monkeypatch) -> list:
    """The figures the plot functions would save (still open), in order."""
    figures = []
    original = plots._save

    def keep(fig, path):
        figures.append(fig.axes[0])
        original(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_one_point_curves_stay_inside_zero_to_hundred_percent(tmp_path, captured_axes):
    log = tmp_path / "prune_log.csv"
    log.write_text("sparsity,val_acc,test_acc\n0.99,70.0,69.5\n")
    plots.plot_sparsity_accuracy(log, tmp_path / "a.png", "one point")
    plots.plot_report({"one-shot": [(0.999, 50.0, 0.0)]}, [], "report", tmp_path / "b.png")
    for ax, point in zip(captured_axes, (99.0, 99.9), strict=True):
        low, high = ax.get_xlim()
        assert 0.0 <= low < point < high <= 100.0 and ax.get_title()


def test_counts_get_whole_ticks_and_decades_get_log_scales(tmp_path, captured_axes):
    history = [{"episode": i, "reward": 0.01 * i} for i in (1, 2, 3)]
    plots.plot_reward_curve(history, tmp_path / "r.png", "search")
    plots.plot_layer_bars(["a", "b", "c"], [1e-4, 1e-2, 0.5], "density", tmp_path / "d.png", "density")
    plots.plot_heatmap([[1e-9, 1e-3], [1e-6, 0.0]], ["l1", "l2"], ["0", "1"], "saliency", tmp_path / "h.png", "heat")
    reward, bars, heat = captured_axes
    ticks = [t for t in reward.get_xticks() if reward.get_xlim()[0] <= t <= reward.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks) and reward.get_title() == "search"
    assert bars.get_yscale() == "log" and bars.get_xlabel() and bars.get_title()
    assert heat.images[0].norm.__class__.__name__ == "LogNorm" and heat.get_xlabel() == "class"


def test_results_figure_gives_each_model_its_line_with_sparsity_and_epochs(tmp_path, captured_axes):
    rows = [{"model": "dense", "sparsity": 0.0, "epochs": 0, "val_acc": 80.0, "test_acc": 79.0},
            {"model": "pruned straight", "sparsity": 0.98, "epochs": 6, "val_acc": 60.0, "test_acc": 59.0},
            {"model": "gradual + swaps", "sparsity": 0.98, "epochs": 6, "val_acc": 60.0, "test_acc": 59.0}]
    plots.plot_results(rows, "weight", "final models", tmp_path / "p.png")
    (ax,) = captured_axes
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == 3 and "98.00%, 6 epochs" in labels[1] and labels[0].startswith("dense")  # one line each:
    assert len(ax.get_legend().get_texts()) == 2  # two models at one sparsity never hide each other
    assert "not from 0" in ax.get_xlabel()


def test_a_search_from_a_model_at_chance_or_past_its_capacity_says_so(tmp_path):
    _, sparse = save_dense_and_sparse(tmp_path, 0.99)  # untrained: at chance
    assert regrowth_oneshot.main(QUICK + ["--save_dir", str(tmp_path), "--initial_ckpt", str(sparse), "--num_epochs",
                                          "2", "--episode_steps", "1", "--ssim_num_batches", "1",
                                          "--saliency_batches", "1", "--label", "chance", "--regrow_step",
                                          "0.995"]) == 0
    log = (tmp_path / "resnet20" / "regrowth_oneshot" / "chance" / "log.txt").read_text()
    assert "within 5 points of chance" in log
    assert "--regrow_step 0.995 asks for" in log and "K is cut to" in log  # more than the 99% model's pruned
    assert "on 1 val batch ..." in log  # not "1 val batches"


def _next_command(err: str) -> list[str]:
    """The ``next:`` suggestion a stage logged, as argv (its trailing comment dropped)."""
    line = next(line for line in err.splitlines() if " next: python " in line)
    return shlex.split(line.split(" next: python ", 1)[1].split("   (")[0])


def test_next_commands_carry_the_runs_flags_and_run(tmp_path, capsys):
    flags = QUICK + ["--save_dir", str(tmp_path)]
    code, _, err = run_main(pretrain.main, flags + ["--m_name", "resnet20", "--epochs", "1"], capsys)
    assert code == 0
    argv = _next_command(err)  # the recommended schedule: gradual pruning with swap cycles
    assert argv[0] == "prune_unstructure.py" and "--train_subset" in argv and "--finetune_epochs" in argv
    assert argv[argv.index("--mode") + 1] == "gradual" and "--swap_every_epochs" in argv
    assert argv[argv.index("--save_dir") + 1] == str(tmp_path)
    prune_epochs = int(argv[argv.index("--finetune_epochs") + 1])
    code, _, err = run_main(prune_unstructure.main, argv[1:] + ["--no_progress"], capsys)  # pasted as printed
    assert code == 0, err
    argv = _next_command(err)  # then evaluate (or finetune, export) what it made
    assert argv[:2] == ["evaluate.py", "--ckpt"] and Path(argv[2]).is_file()
    code, _, _ = run_main(evaluate_script.main, argv[1:] + ["--device", "cpu"], capsys)
    assert code == 0
    line = next(line for line in err.splitlines() if " next: python " in line)  # the original method, offered
    argv = shlex.split(line.split("regrowth search: python ", 1)[1].rstrip(")"))
    assert argv[0] == "regrowth_oneshot.py" and Path(argv[argv.index("--initial_ckpt") + 1]).is_file()
    args = regrowth_oneshot.parse_args(argv[1:])  # the search's flags as printed parse
    assert args.episode_steps == 30 and args.train_subset == 128 and args.dataset == "synthetic"
    code, _, err = run_main(regrowth_oneshot.main, argv[1:] + ["--num_epochs", "1", "--episode_steps", "1",
                                                               "--ssim_num_batches", "1", "--saliency_batches", "1",
                                                               "--no_progress"], capsys)  # a short search
    assert code == 0, err
    argv = _next_command(err)  # the final finetune, as long as the start's pruning finetune (not the method's 400)
    assert argv[0] == "finetune.py" and Path(argv[argv.index("--ckpt") + 1]).is_file()
    assert argv[argv.index("--epochs") + 1] == str(prune_epochs) and "--train_subset" in argv


@pytest.mark.parametrize("meta, epochs", [
    ({"stage": "prune_oneshot", "args": {"finetune_epochs": 4}}, "4"),
    ({"stage": "prune_gradual", "args": {"finetune_epochs": 1}}, "1"),
    ({"stage": "prune_iterative", "args": {"finetune_epochs": 40}}, "400"),  # per step, not the whole finetune
    ({"stage": "regrowth", "args": {"finetune_epochs": 1}}, "400"),  # an episode's mini-finetune
    ({"stage": "greedy_prop", "args": {"finetune_epochs": 1}}, "400"),
    ({}, "400"),  # the original repository's files have no meta
])
def test_the_final_finetune_suggestion_is_as_long_as_a_one_step_pruning_finetune(meta, epochs):
    class FakeStage:
        def repeat_flags(self) -> str:
            return "--m_name resnet20 --dataset synthetic"

    argv = shlex.split(finetune_suggestion(FakeStage(), Path("best.pth"), meta).split("   (")[0])
    assert argv[:4] == ["python", "finetune.py", "--ckpt", "best.pth"] and argv[argv.index("--epochs") + 1] == epochs
    assert "1 epochs" not in finetune_suggestion(FakeStage(), Path("b.pth"), meta)
