"""Non-RL regrowth baselines at the same budget and finetune as the RL search (the original's greedy
baselines, fixed).

--greedy_mode:
    fill     most damaged layers first (ascending SSIM), each filled to capacity
    prop     shares proportional to max(1 - SSIM, 1e-6), capped by capacity, leftovers filled by SSIM order
    uniform  shares proportional to capacity
    random   random pruned positions anywhere in the model (random layers and random positions)
    topk     the K pruned positions with the highest --selection scores over the units of --units (a global
             top-K; saliency by default: the allocation with the largest summed saliency)
    (random search over the RL controller's action space: the search scripts' --random_search)
--granularity channel does the same with channels of coupled groups (scores: fisher over each group's
slices on --taylor_batches (10) batches; init default dense). Every mode spends exactly the budget
min(--regrow_step · N_tot, total capacity) per iteration, over the units that run: a unit whose layer no forward
pass reaches (e.g. EfficientNet's layers.0.conv1) has a NaN SSIM and gets nothing, and the log names it. fill,
prop, uniform and topk regrow the positions inside each unit that --selection ranks first (saliency by default;
reference, magnitude, random). Each iteration finetunes with AdamW (best epoch on val) and carries the model
forward.

Example:
    python regrowth_greedy.py --m_name resnet20 --initial_ckpt runs/resnet20/oneshot/resnet20_0.9900.pth \\
        --greedy_mode prop --regrow_step 0.01 --finetune_epochs 50

Writes to {save_dir}/{m_name}/greedy_{mode}/ (channels: greedy_channel_{mode}/; --units ssim adds _ssim):
iter_{i}/best_grown_model.pth, greedy_log.csv, summary.json.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from utils.cli.commands import commands
from utils.cli.flags import (
    INIT_HELP,
    add_checkpoint_args,
    add_common_args,
    add_finetune_args,
    add_run_flags,
    add_scoring_args,
    add_selection_args,
    add_speed_args,
    add_units_arg,
    cli_main,
    finetune_settings,
    new_parser,
    scoring_settings,
    selection_settings,
)
from utils.cli.prepare import prepare_dense_sparse
from utils.cli.settings_flags import add_settings_args
from utils.cli.types import open_fraction, positive_int
from utils.core.files import write_csv
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import BEST_MODEL, SUMMARY, check_output_dir, clean_stale_temps, greedy_dir, iteration_dir
from utils.core.seeds import make_generator
from utils.core.timer import Timer
from utils.regrow.allocation import GREEDY_ALLOCATIONS, allocation_lines, greedy_allocation, runnable
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation
from utils.results.records import RegrowthOutcome, pruning_schedule
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.stage import finetune_suggestion
from utils.runtime.train import evaluate_model
from utils.scoring.layer_scores import silent_units, ssim_scores
from utils.scoring.selection import init_source, load_reference, selection_scores
from utils.search.episodes import search_space
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.granularity import list_granularities
from utils.sparsity.grow import random_scores_like

SSIM_MODES = ("fill", "prop")  # the others ignore SSIM


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_checkpoint_args(parser)
    add_finetune_args(parser, 50, "finetune epochs after each regrowth (best epoch on val)")
    parser.add_argument("--initial_ckpt", "--pruned_ckpt", dest="initial_ckpt", required=True,
                        help="sparse starting checkpoint (with masks)")
    parser.add_argument("--granularity", choices=list_granularities(), default=None,
                        help="regrow weights (layers are units) or channels (coupled channel groups are units); "
                             "default: the checkpoint's own")
    parser.add_argument("--greedy_mode", default="prop", choices=list(GREEDY_ALLOCATIONS),
                        help="split of the budget over the units of --units: prop (in proportion to 1 - SSIM), fill "
                             "(lowest SSIM first, each up to its capacity), uniform (in proportion to capacity), "
                             "random, topk (the budget's highest --selection scores over those units); prop is the "
                             "original's default, uniform ended best in the measurements (docs/results)")
    parser.add_argument("--regrow_step", "--sparsity_delta", dest="regrow_step", type=open_fraction, default=0.01,
                        help="budget per iteration / N_tot (all weights, or all groupable channels)")
    parser.add_argument("--num_iters", type=positive_int, default=1, help="regrowth rounds of --regrow_step each")
    add_settings_args(parser, FinetuneSettings, only=("patience",), defaults={"patience": 40},
                      helps={"patience": "finetune early stop (epochs without val gain)"})
    parser.add_argument("--init_strategy", default=None,
                        help=f"{INIT_HELP}; default: the granularity's, or dense with --selection reference")
    add_selection_args(parser)
    add_units_arg(parser, "all")
    add_run_flags(parser, {"overwrite": "replace the results of an earlier run"})
    return parser.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True, granularity=args.granularity)
    gran = stage.granularity
    selection = selection_settings(args, gran.default_init)
    scoring = replace(scoring_settings(args), saliency_batches=args.saliency_batches or commands(gran).score_batches)
    gran.check_init(selection.init_strategy)
    args.init_strategy, args.saliency_batches = selection.init_strategy, scoring.saliency_batches  # as recorded
    folder = args.greedy_mode + ("" if args.units == "all" else f"_{args.units}")  # the default keeps its name
    out = check_output_dir(greedy_dir(args.save_dir, stage.model_name, gran, folder),
                           products=["greedy_log.csv", SUMMARY, str(iteration_dir(Path(), 0) / BEST_MODEL)],
                           overwrite=args.overwrite)
    regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(gran.capacity(pair.sparse).values()))  # not 0
    reference = load_reference(stage, pair, selection)
    clean_stale_temps(out)
    setup_logging(out)
    selected = None if args.greedy_mode == "random" else selection_scores(stage, pair, reference, selection, scoring)
    source = init_source(pair, reference)
    init_rng = make_generator(args.seed, "regrowth_init", stage.device)
    layer_rng = make_generator(args.seed, "greedy")  # CPU: random layers / positions
    model, parent, rows = pair.sparse, pair.sparse_path, []
    start = {"start_sparsity": gran.sparsity(model),
             "start_val_acc": evaluate_model(model, stage.data.val, amp=stage.amp)[1],
             "start_test_acc": evaluate_model(model, stage.data.test, amp=stage.amp)[1]}
    LOG.info("start: %s sparsity %.4f, val %.2f%% (%s); greedy %s over %s units, %d iteration(s) of --regrow_step %g",
             gran.name, start["start_sparsity"], start["start_val_acc"], pair.sparse_path, args.greedy_mode,
             args.units, args.num_iters, args.regrow_step)
    timer = Timer()
    for it in range(args.num_iters):
        needs_ssim = args.greedy_mode in SSIM_MODES or args.units == "ssim"
        ssim = ssim_scores(stage, scoring, pair.dense, model) if needs_ssim else silent_units(stage, model)
        caps = runnable(ssim, {n: c for n, c in gran.capacity(model).items() if c > 0})  # NaN SSIM: never runs
        if args.units == "ssim":  # the units an RL search of the same flags would search
            caps = {n: caps[n] for n in search_space(ssim, caps, scoring.ssim_threshold, args.units).layers}
        budget = regrowth_budget(gran.total(model), args.regrow_step, sum(caps.values()))
        allocation = greedy_allocation(args.greedy_mode, ssim, caps, budget, layer_rng, selected, gran.masks(model))
        scores = random_scores_like(gran.masks(model), layer_rng) if selected is None else selected
        loop = LoopSettings(progress=not args.no_progress, csv_path=iteration_dir(out, it) / "finetune_log.csv",
                            **stage.speed)
        applied = apply_allocation(gran, model, Regrowth(allocation, scores, selection.init_strategy, source, init_rng),
                                   Finetuning(finetune_settings(args), stage.data.train, stage.data.val, loop),
                                   copy=False, test=stage.data.test)  # in place: the model carries forward
        regrown, state, test_acc = applied.regrown, applied.fit, applied.test_acc
        row = {"iteration": it, "mode": args.greedy_mode, "budget": budget, "regrown": regrown,
               "sparsity": gran.sparsity(model), "val_acc": state.best_val_acc, "test_acc": test_acc}
        rows.append(row)
        path = iteration_dir(out, it) / BEST_MODEL
        stage.save(path, model, {"stage": f"greedy_{args.greedy_mode}", **row, "allocation": allocation,
                                 "parent": str(parent)})
        parent = path
        LOG.info("iteration %d: %s split of %d %ss", it, args.greedy_mode, budget, gran.name)
        for line in allocation_lines(allocation, caps, ssim, gran.name):
            LOG.info(line)
        LOG.info("iteration %d: %s regrew %d -> sparsity %.4f  val %.2f%%  test %.2f%%", it, args.greedy_mode,
                 regrown, row["sparsity"], row["val_acc"], test_acc)
    write_csv(out / "greedy_log.csv", rows)
    seconds, last_row = timer.seconds, rows[-1]
    outcome = RegrowthOutcome(f"greedy {args.greedy_mode}", "oneshot" if len(rows) == 1 else "iterative", gran.name,
                              start["start_sparsity"], start["start_test_acc"], last_row["sparsity"],
                              last_row["val_acc"], last_row["test_acc"], None, args.finetune_epochs, seconds,
                              args.units, pruning_schedule(pair.sparse_meta))
    stage.write_summary(out / SUMMARY, {"model": stage.model_name, "dataset": stage.dataset, "granularity": gran.name,
                               "mode": args.greedy_mode, **start, "final_epochs": args.finetune_epochs,
                               "seconds": seconds, "iterations": rows, **outcome.fields()})
    last = iteration_dir(out, len(rows) - 1) / BEST_MODEL
    log_outputs([out / "greedy_log.csv", out / SUMMARY, f"iter_*/{BEST_MODEL} in {out}/ (one per iteration)"],
                finetune_suggestion(stage, last, pair.sparse_meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
