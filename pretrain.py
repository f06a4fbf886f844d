"""Dense pretraining with SGD and a cosine schedule, best epoch chosen on the validation split.

Example:
    python pretrain.py --m_name resnet20 --dataset cifar10 --epochs 200

Writes to {save_dir}/{m_name}/checkpoint/:
    ckpt.pth            best-val model (bridge-ckpt; meta has val_acc, test_acc, epoch)
    last.pth            last finished epoch with optimizer/scheduler/RNG state, for --resume
    pretrain_log.csv    one row per epoch
    summary.json        headline numbers
    log.txt             the log
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.checkpoint import load_weights, read_checkpoint
from utils.cli import (
    add_common_args,
    add_speed_args,
    cli_main,
    new_parser,
    non_negative_float,
    positive_float,
    positive_int,
)
from utils.errors import UsageError
from utils.paths import pretrained_path
from utils.run import LOG, setup_logging, write_json
from utils.stage import Stage, prepare
from utils.train import EpochStats, FitState, evaluate, fit


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("pretraining")
    group.add_argument("--epochs", type=positive_int, default=200, help="epochs; cosine schedule spans them")
    group.add_argument("--lr", type=positive_float, default=0.1, help="SGD learning rate")
    group.add_argument("--momentum", type=non_negative_float, default=0.9)
    group.add_argument("--weight_decay", type=non_negative_float, default=5e-4)
    group.add_argument("--patience", type=int, default=30, help="early stop after N epochs without val gain (0: off)")
    group.add_argument("--resume", "-r", action="store_true", help="continue from last.pth")
    group.add_argument("--overwrite", action="store_true", help="start over even if a checkpoint exists")
    return parser.parse_args(argv)


def _train_state(optimizer, scheduler, state: FitState, stage: Stage) -> dict:
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "fit": state.summary(),
            "best_state": {k: v.cpu() for k, v in state.best_state.items()},
            "data_rng": stage.data.train.generator.get_state(), "torch_rng": torch.get_rng_state()}


def _restore(path: Path, model, optimizer, scheduler, stage: Stage) -> FitState:
    """Load last.pth into the model, optimizer, scheduler and data RNG; return the fit progress."""
    ckpt = read_checkpoint(path)
    if "train_state" not in ckpt.extra:
        raise UsageError(f"{path} has no training state to resume from")
    load_weights(model, ckpt, stage.model_name, path)
    saved = ckpt.extra["train_state"]
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    stage.data.train.generator.set_state(saved["data_rng"])
    torch.set_rng_state(saved["torch_rng"])
    best = {k: v.to(stage.device) for k, v in saved["best_state"].items()}
    return FitState(**saved["fit"], best_state=best)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage = prepare(args)
    best_path = pretrained_path(args.save_dir, stage.model_name)
    out = best_path.parent
    last_path = out / "last.pth"
    if args.resume and not last_path.is_file():
        raise UsageError(f"--resume: {last_path} does not exist; run without --resume to start")
    if not args.resume and not args.overwrite and best_path.exists():
        raise UsageError(f"{best_path} exists; pass --resume to continue or --overwrite to start over")

    model = stage.build_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    state = _restore(last_path, model, optimizer, scheduler, stage) if args.resume else FitState()
    if not args.resume:
        (out / "pretrain_log.csv").unlink(missing_ok=True)
    setup_logging(out)
    LOG.info("pretrain %s on %s (%d train / %d val images) on %s, from epoch %d", stage.model_name, stage.dataset,
             stage.data.train.num_samples, stage.data.val.num_samples, stage.device, state.epoch + 1)

    def checkpoint(fit_state: FitState, stats: EpochStats, improved: bool) -> None:
        meta = {"stage": "pretrain", "sparsity": 0.0, "epoch": stats.epoch, "val_acc": stats.val_acc}
        if improved:
            stage.save(best_path, model, meta)
        stage.save(last_path, model, meta, extra={"train_state": _train_state(optimizer, scheduler, fit_state, stage)})

    forward = torch.compile(model) if args.compile else model
    state = fit(model, stage.data.train, stage.data.val, optimizer, epochs=args.epochs, scheduler=scheduler,
                patience=args.patience, amp=stage.amp, progress=not args.no_progress,
                csv_path=out / "pretrain_log.csv", state=state, forward_model=forward, on_epoch_end=checkpoint)

    model.load_state_dict(state.best_state)
    _, test_acc = evaluate(model, stage.data.test, amp=stage.amp)
    stage.save(best_path, model, {"stage": "pretrain", "sparsity": 0.0, "epoch": state.best_epoch,
                                  "val_acc": state.best_val_acc, "test_acc": test_acc})
    write_json(out / "summary.json", {"model": stage.model_name, "dataset": stage.dataset, **state.summary(),
                                      "test_acc": test_acc, "checkpoint": str(best_path)})
    LOG.info("best val %.2f%% at epoch %d; test %.2f%%; saved %s", state.best_val_acc, state.best_epoch,
             test_acc, best_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
