"""Structured (channel) pruning with finetuning: whole channels of Torch-Pruning's coupled groups are masked
(the model keeps its shape, so channels can be regrown later; export.py makes it physically smaller).

Channel sparsity = masked channels / all groupable channels. Every group keeps at least one channel and
the classifier's outputs are never pruned. Channel scores (--pruner) are summed over every slice of a
group (conv rows and biases, BN gamma/beta, consumer columns, depthwise convs); --scope local takes the
same fraction from every group, global one threshold over group-normalised scores. Counts are exact.

Examples:
    # the original's schedule: 30% of each group's live channels per step, 15 steps, finetune after each
    python prune_structure.py --m_name vgg16 --pruner l1 --mode iterative --ratio_per_step 0.3 --iterative_steps 15
    # continue an interrupted run from step 6 (starts from step 5's checkpoint)
    python prune_structure.py --m_name vgg16 --mode iterative --iter_start 6
    # one-shot from the dense model to several channel sparsities, global Taylor scores
    python prune_structure.py --m_name resnet56 --mode oneshot --target_sparsity 0.5 0.7 --pruner taylor --scope global

Writes to {save_dir}/{m_name}/structured_{iterative|oneshot}/:
    {m_name}_ch{sparsity:.4f}.pth  one checkpoint per step (channel masks; best-val epoch of its finetune)
    prune_log.csv                  step, amount, sparsity (channel), weight_sparsity, params, macs (of the
                                   exported model), val_acc, test_acc, checkpoint
    sparsity_vs_accuracy.png, log.txt, finetune_step{k}.csv (iterative) or finetune_{checkpoint stem}.csv (one-shot)
Finetuning after each prune: AdamW (lr 3e-4, weight decay 0.01), --finetune_epochs (40 iterative, 400
one-shot), best epoch chosen on the validation split.
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
    cli_main,
    finetune_settings,
    finish_schedule_args,
    new_parser,
    schedule_settings,
)
from utils.cli.prepare import prepare
from utils.cli.types import positive_int
from utils.core.paths import prune_dir
from utils.prune.loop import PruneRun
from utils.prune.pruners import get_pruner, list_pruners
from utils.prune.weight_pruners import PruneContext
from utils.runtime.stage import dense_checkpoint


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("channel pruning")
    group.add_argument("--pruner", default="l1", choices=list_pruners("channel"),
                       help="channel importance (see utils/prune/channel_pruners.py)")
    group.add_argument("--scope", default="local", choices=["local", "global"],
                       help="local: the same fraction of every group; global: one threshold over normalised scores")
    add_schedule_args(group, amount_flags=("--ratio_per_step",), end_flags=("--iterative_steps", "--iter_end"),
                      unit="channels")
    group.add_argument("--taylor_batches", type=positive_int, default=10,
                       help="train batches for the gradient scores (taylor, hessian)")
    add_checkpoint_args(parser, pairs=False)
    add_finetune_args(parser, None, "finetune epochs after each prune (default 40 iterative, 400 oneshot)")
    add_prune_finetune_args(parser)
    return finish_schedule_args(parser, parser.parse_args(argv))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage = prepare(args, granularity="channel")
    pruner = get_pruner(args.pruner, stage.granularity, args.scope)
    pretrained = dense_checkpoint(stage.run, stage.model_name)
    context = PruneContext.of_run(args.seed, stage.data.train, args.taylor_batches)
    out = prune_dir(args.save_dir, stage.model_name, stage.granularity, args.mode)
    PruneRun(stage, pruner, context, out, schedule_settings(args), finetune_settings(args),
             search_script=commands(stage.granularity).search_script).run(pretrained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
