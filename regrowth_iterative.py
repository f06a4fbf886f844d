"""Iterative RL regrowth (spec §8): repeat searches, each regrowing a budget the controller picks
(--min_budget_frac .. --max_budget_frac of N_tot, --budget_space_size options) until --target_sparsity.

Every iteration recomputes SSIM and capacities on the current model, trains a fresh controller, rewards
an episode by its val-accuracy gain over the **pruning baseline** interpolated at its new sparsity (the
checkpoints in --baseline_dir, evaluated once on val and cached), and carries the best post-finetune
model forward. Saliency is computed once on the dense model (or the starting sparse one).

Example:
    python regrowth_iterative.py --m_name resnet20 --initial_ckpt runs/resnet20/iterative/resnet20_0.9953.pth \\
        --baseline_dir runs/resnet20/iterative --target_sparsity 0.98 --num_iters 10
    # killed? continue (finished iterations are kept, the running search resumes):
    python regrowth_iterative.py ... --resume

Writes to {save_dir}/{m_name}/regrowth_iterative/: iter_{i}/ (best_grown_model.pth, best_pre_finetune.pth,
episodes.csv, reward_curve.png, search_state.pt, summary.json) and summary.json over all iterations.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.baseline import baseline_table, interpolate
from utils.budget import regrowth_budget
from utils.cli import (
    add_common_args,
    add_controller_args,
    add_scoring_args,
    add_speed_args,
    cli_main,
    fraction,
    new_parser,
    open_fraction,
    positive_int,
)
from utils.errors import UsageError
from utils.paths import BEST_MODEL, SEARCH_STATE, SUMMARY, iteration_dir, prune_dir, regrowth_dir
from utils.run import LOG, setup_logging, write_json
from utils.scores import saliency_scores, ssim_scores
from utils.search import Search, check_search_dir, config_from_args, search_space, trainer_from_args
from utils.stage import DenseSparse, Stage, prepare_dense_sparse
from utils.train import evaluate


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_controller_args(parser, episodes=300, action_space_size=10, finetune_epochs=40, patience=40)
    parser.add_argument("--baseline_dir", default=None,
                        help="pruning checkpoints for the reward baseline (default {save_dir}/{m_name}/iterative)")
    parser.add_argument("--target_sparsity", type=fraction, required=True, help="stop at or below this sparsity")
    parser.add_argument("--num_iters", type=positive_int, default=10, help="maximum regrowth iterations")
    parser.add_argument("--budget_space_size", type=positive_int, default=5, help="B budget options")
    parser.add_argument("--min_budget_frac", type=open_fraction, default=0.001, help="smallest budget / N_tot")
    parser.add_argument("--max_budget_frac", type=open_fraction, default=0.005, help="largest budget / N_tot")
    return parser.parse_args(argv)


def pruning_baseline(stage: Stage, folder: Path) -> dict[float, float]:
    """{sparsity: val acc} of the plain-pruning checkpoints in ``folder`` (cached beside them)."""
    def measure(path: Path) -> tuple[float, float]:
        model = stage.load_model(path, sparse=True)
        return stage.granularity.sparsity(model), evaluate(model, stage.data.val, amp=stage.amp)[1]

    settings = {"model": stage.model_name, "dataset": stage.dataset, "seed": stage.args.seed,
                "val_split": stage.args.val_split}
    return baseline_table(folder, measure, settings)


def budget_options(args: argparse.Namespace, n_tot: int, total_capacity: int) -> list[int]:
    """The B budgets the controller chooses from: linspace(min, max) fractions of N_tot, capped by capacity."""
    fracs = np.linspace(args.min_budget_frac, args.max_budget_frac, args.budget_space_size)
    return [regrowth_budget(n_tot, float(f), total_capacity) for f in fracs]


def run_iteration(stage: Stage, pair: DenseSparse, current: nn.Module, current_path: Path,
                  saliency: dict[str, torch.Tensor], table: dict[float, float], it: int, out: Path) -> dict:
    """One search from ``current``; writes ``out`` and returns the iteration's summary row."""
    args, gran = stage.args, stage.granularity
    space = search_space(ssim_scores(stage, pair.dense, current), gran.capacity(current), args.ssim_threshold)
    options = budget_options(args, gran.total(current), sum(space.capacities))
    LOG.info("iteration %d: sparsity %.4f; budgets %s; searching %s", it, gran.sparsity(current), options,
             space.layers)
    search = Search(stage, current, saliency, pair.dense, space,
                    trainer_from_args(args, args.budget_space_size, temperature=None, clip=10.0),
                    config_from_args(args), zero_point=lambda s: interpolate(table, s), out=out,
                    parent=current_path, budget_options=options)
    if args.resume and (out / SEARCH_STATE).is_file():
        search.resume()
    best = search.run()
    row = {"iteration": it, **vars(best), "baseline_acc": interpolate(table, best.sparsity)}
    write_json(out / SUMMARY, row)
    LOG.info("iteration %d: sparsity %.4f  val %.2f%%  (%+.2f pp over the pruning baseline)", it, best.sparsity,
             best.val_acc, best.acc_gain)
    return row


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True)
    gran = stage.granularity
    start = gran.sparsity(pair.sparse)
    if args.target_sparsity >= start:
        raise UsageError(f"--target_sparsity {args.target_sparsity} is not below the start sparsity {start:.4f}")
    if args.min_budget_frac > args.max_budget_frac:
        raise UsageError("--min_budget_frac is larger than --max_budget_frac")
    root = regrowth_dir(args.save_dir, stage.model_name, "weight", "iterative")
    check_search_dir(iteration_dir(root, 0), args)
    table = pruning_baseline(stage, Path(args.baseline_dir or prune_dir(args.save_dir, stage.model_name, "weight",
                                                                        "iterative")))
    budget_options(args, gran.total(pair.sparse), sum(gran.capacity(pair.sparse).values()))  # none of them 0
    setup_logging(root)
    saliency = saliency_scores(stage, pair)
    current, current_path, summary = pair.sparse, pair.sparse_path, []
    for it in range(args.num_iters):
        out = iteration_dir(root, it)
        if args.resume and (out / SUMMARY).is_file():  # finished before the interruption
            row = json.loads((out / SUMMARY).read_text())
        else:
            row = run_iteration(stage, pair, current, current_path, saliency, table, it, out)
        summary.append(row)
        current_path = out / BEST_MODEL
        current = stage.load_model(current_path, reparam=True)
        if gran.sparsity(current) <= args.target_sparsity:
            break
    _, test_acc = evaluate(current, stage.data.test, amp=stage.amp)
    write_json(root / SUMMARY, {"model": stage.model_name, "start_sparsity": start,
                                "final_sparsity": gran.sparsity(current), "final_checkpoint": str(current_path),
                                "final_test_acc": test_acc, "iterations": summary})
    LOG.info("final: sparsity %.4f, test %.2f%% (%s)", gran.sparsity(current), test_acc, current_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
