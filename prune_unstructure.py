"""Unstructured weight pruning with finetuning: iterative (a fixed fraction of the survivors per step)
or one-shot (straight to a target sparsity), starting from the pretrained dense model.

Examples:
    # Setting A: 15 iterations of 30% -> sparsity 1 - 0.7^k, up to 99.53%
    python prune_unstructure.py --m_name vgg16 --pruner lamp --mode iterative --sparsity 0.3 --iter_end 15
    # continue an interrupted run from iteration 9 (starts from iteration 8's checkpoint)
    python prune_unstructure.py --m_name vgg16 --mode iterative --iter_start 9
    # Setting B: one-shot to each target sparsity from the dense model
    python prune_unstructure.py --m_name vgg16 --mode oneshot --target_sparsity 0.94 0.95 0.96 0.97 0.98 0.99 0.995
    # GraNet style: from dense to 98% along a cubic schedule during one finetune, with swap cycles
    python prune_unstructure.py --m_name vgg16 --mode gradual --target_sparsity 0.98 --swap_every 100

Writes to {save_dir}/{m_name}/{iterative|oneshot|gradual}/:
    {m_name}_{sparsity:.4f}.pth   one checkpoint per step (best-val epoch of its finetune)
    prune_log.csv                 step, amount, sparsity, params_nonzero, val_acc, test_acc, checkpoint
    sparsity_vs_accuracy.png      val/test accuracy against sparsity (gradual: gradual_schedule.png, the
                                  planned sparsity against optimizer steps, from schedule_{checkpoint stem}.csv,
                                  with the sparsity and val accuracy of each epoch of the finetune)
    log.txt, finetune_step{k}.csv (iterative) or finetune_{checkpoint stem}.csv (one-shot)
Finetuning after each prune: AdamW (lr 3e-4, weight decay 0.01), --finetune_epochs (40 iterative, 400
one-shot, as in the original), best epoch chosen on the validation split; --swap_every N adds swap cycles at
constant density to each finetune (RigL style, see finetune.py).
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
from collections.abc import Sequence

from utils.cli.commands import commands
from utils.cli.flags import (
    add_checkpoint_args,
    add_common_args,
    add_finetune_args,
    add_prune_finetune_args,
    add_schedule_args,
    add_speed_args,
    add_swap_args,
    cli_main,
    finetune_settings,
    finish_schedule_args,
    new_parser,
    schedule_settings,
)
from utils.cli.prepare import prepare
from utils.core.paths import prune_dir
from utils.prune.loop import PruneRun
from utils.prune.pruners import get_pruner, list_pruners
from utils.prune.weight_pruners import PruneContext
from utils.runtime.stage import dense_checkpoint
from utils.sparsity.swap import NEEDS_DENSE


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("pruning")
    group.add_argument("--pruner", default="lamp", help=" | ".join(list_pruners("weight")))
    add_schedule_args(group, amount_flags=("--sparsity",), end_flags=("--iter_end",), unit="weights", gradual=True)
    add_checkpoint_args(parser, pairs=False)
    add_finetune_args(parser, None, "finetune epochs after each prune (default 40 iterative, 400 oneshot)")
    add_prune_finetune_args(parser)
    add_swap_args(parser)
    return finish_schedule_args(parser, parser.parse_args(argv))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pruner = get_pruner(args.pruner)
    finetuning = finetune_settings(args)  # bad swap flags fail before any load
    stage = prepare(args)
    pretrained = dense_checkpoint(stage.run, stage.model_name)
    out = prune_dir(args.save_dir, stage.model_name, stage.granularity, args.mode)
    swap = finetuning.swap
    dense = stage.layer_weights(pretrained) if swap is not None and swap.grow_score in NEEDS_DENSE else None
    PruneRun(stage, pruner, PruneContext.of_run(args.seed), out, schedule_settings(args),
             finetuning, dense, commands(stage.granularity).search_script).run(pretrained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
