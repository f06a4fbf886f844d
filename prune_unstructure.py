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

import torch
import torch.nn as nn

from utils.checkpoint import save_checkpoint
from utils.cli import (
    add_checkpoint_args,
    add_common_args,
    add_finetune_args,
    add_speed_args,
    cli_main,
    fraction,
    new_parser,
    open_fraction,
    positive_int,
)
from utils.errors import UsageError
from utils.masks import layer_counts, sparsity
from utils.plots import plot_sparsity_accuracy, read_csv
from utils.pruners import Pruner, get_pruner
from utils.run import LOG, make_generator, setup_logging, write_csv
from utils.stage import Stage, prepare, pretrained_path
from utils.train import evaluate, finetune

DEFAULT_FINETUNE_EPOCHS = {"iterative": 40, "oneshot": 400}
MODE_ALIASES = {"iterate": "iterative", "iterative": "iterative", "oneshot": "oneshot"}
LOG_FIELDS = ["step", "amount", "sparsity", "params_nonzero", "val_acc", "test_acc", "checkpoint"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("pruning")
    group.add_argument("--pruner", default="lamp", help="glob | unif | unifplus | lamp | erk | random")
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
    group.add_argument("--patience", type=int, default=50, help="stop a finetune after N epochs without val gain")
    group.add_argument("--select_on", choices=["val", "test"], default="val",
                       help="split that picks the best finetune epoch ('test' only to reproduce the original)")
    args = parser.parse_args(argv)
    args.mode = MODE_ALIASES[args.mode]
    if args.finetune_epochs is None:
        args.finetune_epochs = DEFAULT_FINETUNE_EPOCHS[args.mode]
    if args.mode == "oneshot" and not args.target_sparsity:
        parser.error("--mode oneshot needs --target_sparsity (e.g. 0.99)")
    if args.iter_start > args.iter_end:
        parser.error(f"--iter_start {args.iter_start} is after --iter_end {args.iter_end}")
    return args


def finetune_and_score(stage: Stage, model: nn.Module, csv_path: Path) -> tuple[float, float]:
    """AdamW finetune, best epoch chosen on --select_on; returns (val acc, test acc) of that state."""
    args = stage.args
    select = stage.data.test if args.select_on == "test" else stage.data.val
    finetune(model, stage.data.train, select, epochs=args.finetune_epochs, lr=args.lr,
             weight_decay=args.weight_decay, patience=args.patience, amp=stage.amp,
             progress=not args.no_progress, csv_path=csv_path)
    _, val_acc = evaluate(model, stage.data.val, amp=stage.amp)
    _, test_acc = evaluate(model, stage.data.test, amp=stage.amp)
    return val_acc, test_acc


def write_log_row(path: Path, row: dict, iterative: bool) -> None:
    """Add ``row`` to prune_log.csv, atomically. Iterative: rows of this step and later (an older run being
    redone) are dropped first; one-shot: a row for the same checkpoint is replaced."""
    if iterative:
        rows = [r for r in read_csv(path) if int(r["step"]) < int(row["step"])]
    else:
        rows = [r for r in read_csv(path) if r["checkpoint"] != row["checkpoint"]]
    rows.append({k: str(v) for k, v in row.items()})
    rows.sort(key=lambda r: (int(r["step"]), float(r["sparsity"])))
    write_csv(path, rows, LOG_FIELDS)


def prune_step(stage: Stage, model: nn.Module, pruner: Pruner, amount: float, step: int, out: Path,
               parent: Path, generator: torch.Generator) -> Path:
    """Prune ``amount`` of the survivors, finetune, save the checkpoint and log row; returns the checkpoint."""
    removed = pruner.prune(model, amount, generator)
    LOG.info("step %d: %s removed %d weights -> sparsity %.4f", step, pruner.name, removed, sparsity(model))
    val_acc, test_acc = finetune_and_score(stage, model, out / f"finetune_step{step}.csv")
    achieved = sparsity(model)
    path = out / f"{stage.model_name}_{achieved:.4f}.pth"
    meta = {"stage": f"prune_{stage.args.mode}", "step": step, "amount": amount, "pruner": pruner.name,
            "sparsity": achieved, "val_acc": val_acc, "test_acc": test_acc, "parent": str(parent),
            "args": vars(stage.args)}
    save_checkpoint(path, model, model_name=stage.model_name, dataset=stage.dataset,
                    num_classes=stage.data.info.num_classes, meta=meta)
    kept = sum(c.kept for c in layer_counts(model))
    write_log_row(out / "prune_log.csv", {"step": step, "amount": amount, "sparsity": achieved,
                                          "params_nonzero": kept, "val_acc": val_acc, "test_acc": test_acc,
                                          "checkpoint": path.name}, iterative=stage.args.mode == "iterative")
    plot_sparsity_accuracy(out / "prune_log.csv", out / "sparsity_vs_accuracy.png",
                           f"{stage.model_name} {stage.args.mode} {pruner.name} pruning")
    LOG.info("step %d: sparsity %.4f  val %.2f%%  test %.2f%%  -> %s", step, achieved, val_acc, test_acc, path)
    return path


def previous_checkpoint(out: Path, step: int) -> Path:
    """The checkpoint iteration ``step`` wrote, from prune_log.csv."""
    for row in read_csv(out / "prune_log.csv"):
        if int(row["step"]) == step and (out / row["checkpoint"]).is_file():
            return out / row["checkpoint"]
    raise UsageError(f"no checkpoint of iteration {step} in {out}: run iterations up to {step} first "
                     f"(or start with --iter_start 1)")


def oneshot_amount(current: float, target: float, path: Path) -> float:
    """Fraction of the survivors to remove to go from sparsity ``current`` to ``target``."""
    if target <= current:
        raise UsageError(f"--target_sparsity {target} is not above the sparsity of {path} ({current:.4f})")
    if target >= 1.0:
        raise UsageError("--target_sparsity must be below 1 (something has to survive)")
    return (target - current) / (1.0 - current)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pruner = get_pruner(args.pruner)
    stage = prepare(args)
    pretrained = Path(args.pretrained or pretrained_path(args.save_dir, stage.model_name))
    out = Path(args.save_dir) / stage.model_name / args.mode
    generator = make_generator(args.seed, "pruner")
    if args.mode == "iterative":
        parent = pretrained if args.iter_start == 1 else previous_checkpoint(out, args.iter_start - 1)
        model = stage.load_model(parent, reparam=True)
        setup_logging(out)
        for step in range(args.iter_start, args.iter_end + 1):
            parent = prune_step(stage, model, pruner, args.sparsity, step, out, parent, generator)
    else:
        dense = stage.load_model(pretrained, reparam=True)
        start = sparsity(dense)
        amounts = [oneshot_amount(start, t, pretrained) for t in args.target_sparsity]
        setup_logging(out)
        for amount in amounts:
            model = stage.load_model(pretrained, reparam=True)
            prune_step(stage, model, pruner, amount, 1, out, pretrained, generator)
    LOG.info("done: %s", out / "prune_log.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
