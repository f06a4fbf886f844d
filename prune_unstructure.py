"""Unstructured weight pruning with finetuning: iterative (a fixed fraction of the survivors per step)
or one-shot (straight to a target sparsity), starting from the pretrained dense model.

Examples:
    # Setting A: 15 iterations of 30% -> sparsity 1 - 0.7^k, up to 99.53%
    python prune_unstructure.py --m_name vgg16 --pruner lamp --mode iterative --sparsity 0.3 --iter_end 15
    # continue an interrupted run from iteration 9 (starts from iteration 8's checkpoint)
    python prune_unstructure.py --m_name vgg16 --mode iterative --iter_start 9
    # Setting B: one-shot to each target sparsity from the dense model
    python prune_unstructure.py --m_name vgg16 --mode oneshot --target_sparsity 0.94 0.95 0.96 0.97 0.98 0.99 0.995

Writes to {save_dir}/{m_name}/{iterative|oneshot}/:
    {m_name}_{sparsity:.4f}.pth   one checkpoint per step (best-val epoch of its finetune)
    prune_log.csv                 step, amount, sparsity, params_nonzero, val_acc, test_acc, checkpoint
    sparsity_vs_accuracy.png      val/test accuracy against sparsity
    log.txt, finetune_step{k}.csv
Finetuning after each prune: AdamW (lr 3e-4, weight decay 0.01), --finetune_epochs (40 iterative, 400
one-shot, as in the original), best epoch chosen on the validation split.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from utils.cli import (
    add_checkpoint_args,
    add_common_args,
    add_finetune_args,
    add_prune_finetune_args,
    add_speed_args,
    cli_main,
    fraction,
    new_parser,
    open_fraction,
    positive_int,
)
from utils.paths import pretrained_path, prune_dir
from utils.pruners import PruneContext, get_pruner, list_pruners
from utils.pruning import DEFAULT_FINETUNE_EPOCHS, MODE_ALIASES, PruneRun, previous_checkpoint
from utils.run import LOG, make_generator
from utils.stage import prepare


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("pruning")
    group.add_argument("--pruner", default="lamp", help=" | ".join(list_pruners("weight")))
    group.add_argument("--mode", "--m_prune", dest="mode", default="iterative", choices=sorted(MODE_ALIASES),
                       help="iterative (alias iterate) or oneshot")
    group.add_argument("--sparsity", type=open_fraction, default=0.3,
                       help="iterative: fraction of the surviving weights removed per iteration")
    group.add_argument("--iter_start", type=positive_int, default=1, help="first iteration (resume point)")
    group.add_argument("--iter_end", type=positive_int, default=15, help="last iteration (inclusive)")
    group.add_argument("--target_sparsity", "--oneshot", dest="target_sparsity", type=fraction, nargs="+",
                       default=None, help="oneshot: target sparsity (one or more, each from the pretrained model)")
    add_checkpoint_args(parser)
    add_finetune_args(parser, None, "finetune epochs after each prune (default 40 iterative, 400 oneshot)")
    add_prune_finetune_args(parser)
    args = parser.parse_args(argv)
    args.mode = MODE_ALIASES[args.mode]
    if args.finetune_epochs is None:
        args.finetune_epochs = DEFAULT_FINETUNE_EPOCHS[args.mode]
    if args.mode == "oneshot" and not args.target_sparsity:
        parser.error("--mode oneshot needs --target_sparsity (e.g. 0.99)")
    if args.iter_start > args.iter_end:
        parser.error(f"--iter_start {args.iter_start} is after --iter_end {args.iter_end}")
    return args


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pruner = get_pruner(args.pruner)
    stage = prepare(args)
    pretrained = Path(args.pretrained or pretrained_path(args.save_dir, stage.model_name))
    run = PruneRun(stage, pruner, PruneContext(make_generator(args.seed, "pruner")),
                   prune_dir(args.save_dir, stage.model_name, "weight", args.mode))
    if args.mode == "iterative":
        parent = pretrained if args.iter_start == 1 else previous_checkpoint(run.out, args.iter_start - 1)
        run.run_iterative(parent, args.sparsity, args.iter_start, args.iter_end)
    else:
        run.run_oneshot(pretrained, args.target_sparsity)
    LOG.info("done: %s", run.out / "prune_log.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
