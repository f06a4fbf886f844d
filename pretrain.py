"""Dense pretraining with SGD, best epoch chosen on the validation split.

Example:
    python pretrain.py --m_name resnet20 --dataset cifar10 --epochs 200
    # the short recipe (80 epochs): one-cycle, Nesterov, label smoothing (docs/results/dense_recipe.md):
    python pretrain.py --m_name resnet20 --dataset cifar10 --recipe short
    # killed? continue exactly where the last finished epoch left off (same flags):
    python pretrain.py --m_name resnet20 --dataset cifar10 --epochs 200 --resume

The default --lr_schedule cosine (the original's) sets the learning rate after e of E = --epochs epochs to
lr·½(1 + cos(π·e/E)), reaching 0 at the end and never restarting; onecycle and warmup_cosine move it after every
optimizer step (utils/runtime/schedules.py). --resume checks that the defining flags are unchanged; --epochs and
--patience may change: a longer --epochs recomputes the curve for the new length from the point reached (so a
finished run resumed with more epochs continues at lr·½(1 + cos(π·e/E_new)) and decays to 0 again), and a larger
--patience lets a run that stopped early continue.

Data-parallel on several GPUs (or CPU processes) with PyTorch's launcher; --batch_size stays the global batch:
    torchrun --nproc_per_node 4 pretrain.py --m_name resnet20 --dataset cifar10 --epochs 200

Writes to {save_dir}/{m_name}/checkpoint/:
    ckpt.pth            best-val model (bridge-ckpt; meta has val_acc, test_acc, epoch)
    last.pth            last finished epoch with optimizer/scheduler/RNG state, for --resume
    pretrain_log.csv    one row per epoch (lr: the learning rate at the epoch's first step)
    summary.json        headline numbers
    log.txt             the log
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from data import DataSettings
from utils.cli.flags import add_common_args, add_run_flags, add_speed_args, cli_main, new_parser
from utils.cli.prepare import prepare
from utils.cli.settings_flags import add_settings_args, settings_from_args
from utils.core.distributed import all_gather, current_world
from utils.core.errors import UsageError
from utils.core.fields import resumable_flags
from utils.core.files import check_same_run, trim_csv
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import check_output_dir, clean_stale_temps, pretrained_path
from utils.core.provenance import PROVENANCE_KEY
from utils.runtime.checkpoint import load_weights, read_checkpoint
from utils.runtime.resume import current_streams, restore_streams
from utils.runtime.schedules import lr_lambda
from utils.runtime.settings import PRETRAIN_RECIPES, LoopSettings, PretrainSettings, RunSettings
from utils.runtime.stage import Stage
from utils.runtime.train import EpochStats, FitSchedule, FitState, evaluate_model, fit, precision_name
from utils.sparsity.swap import RECOMMENDED_EVERY_EPOCHS

# flags a resumed pretraining may change: the resumable flags of its settings (where and how fast it runs, the length
# and stop, the recipe that only sets defaults: the values it gave are compared); every other flag must equal the one
# the run started with
MAY_CHANGE_ON_RESUME = resumable_flags(RunSettings, DataSettings, PretrainSettings)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_speed_args(parser)
    group = parser.add_argument_group("pretraining")
    add_settings_args(group, PretrainSettings)
    add_run_flags(group, {"resume": "continue from last.pth"}, names={"resume": ("--resume", "-r")})
    add_run_flags(group, {"overwrite": "start over even if a checkpoint exists"})
    recipe = parser.parse_known_args(argv)[0].recipe
    parser.set_defaults(**PRETRAIN_RECIPES[recipe])
    return parser.parse_args(argv)


def check_schedule_flags(train: PretrainSettings) -> None:
    """Refuse combinations of the optimiser and schedule flags that would be silently ignored or never decay."""
    if train.nesterov and train.momentum == 0:
        raise UsageError("--nesterov needs a --momentum above 0")
    if train.warmup_epochs and not train.per_step:
        raise UsageError(f"--warmup_epochs applies to the per-step schedules, not --lr_schedule {train.lr_schedule}: "
                         "pass --lr_schedule onecycle or warmup_cosine, or leave --warmup_epochs out")
    if train.warmup_epochs >= train.epochs:
        raise UsageError(f"--warmup_epochs {train.warmup_epochs:g} is not shorter than --epochs {train.epochs}: the "
                         "learning rate would never decay")


def _train_state(optimizer, scheduler, state: FitState, stage: Stage) -> dict:
    """What --resume needs; the RNG states of every process of a data-parallel run (rank order)."""
    rngs = all_gather(current_streams(stage.data.train))
    return {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "fit": state.summary(),
            "best_state": {k: v.cpu() for k, v in state.best_state.items()},
            "data_rng": rngs[0][0], "torch_rng": rngs[0][1], "rng_per_process": rngs,
            "device": stage.data.train.device.type}


def _restore(path: Path, model, optimizer, scheduler, stage: Stage, patience: int) -> FitState:
    """Load last.pth into the model, optimizer, scheduler and data RNG; return the fit progress.

    The run must have the same defining flags (``check_same_run``); --epochs and --patience may change:
    the cosine is recomputed for the new --epochs from the epoch reached, and the early stop for the new
    patience.
    """
    ckpt = read_checkpoint(path)
    if "train_state" not in ckpt.extra:
        raise UsageError(f"{path} has no training state to resume from")
    check_same_run(ckpt.meta.get("args") or {}, stage.flags, MAY_CHANGE_ON_RESUME)
    load_weights(model, ckpt, stage.model_name, path)
    saved = ckpt.extra["train_state"]
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict({"lr_lambdas": [None], **saved["scheduler"]})
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    rngs = saved.get("rng_per_process") or [(saved["data_rng"], saved["torch_rng"])]
    restore_streams(rngs, saved.get("device", stage.data.train.device.type), stage.data.train, path)
    best = {k: v.to(stage.device) for k, v in saved["best_state"].items()}
    fit_progress = dict(saved["fit"])
    if "precisions" not in fit_progress:  # a state written before the record existed: its checkpoint's precision
        made_in = (ckpt.meta.get(PROVENANCE_KEY) or {}).get("precision")
        fit_progress["precisions"] = [[made_in, 1]] if made_in else []
    state = FitState(**fit_progress, best_state=best)
    state.stopped_early = 0 < patience <= state.epochs_since_best
    return state


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    train = settings_from_args(PretrainSettings, args)
    stage = prepare(args)
    stage.shard_training_data()  # under torchrun: data-parallel, each process on its shard
    best_path = pretrained_path(args.save_dir, stage.model_name)
    out = best_path.parent
    last_path = out / "last.pth"
    check_output_dir(out, what="--save_dir")  # claims the folder before anything in it is compared
    if args.resume and not last_path.is_file():
        raise UsageError(f"--resume: {last_path} does not exist; run without --resume to start")
    if not args.resume and not args.overwrite and best_path.exists():
        raise UsageError(f"{best_path} exists; pass --resume to continue or --overwrite to start over")
    clean_stale_temps(out)

    model = stage.build_model()
    check_schedule_flags(train)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                weight_decay=train.weight_decay, nesterov=train.nesterov)
    per_step = train.per_step
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train.lr_schedule, train.epochs,
                                                                       len(stage.data.train), train.warmup_epochs))
    state = _restore(last_path, model, optimizer, scheduler, stage, train.patience) if args.resume else FitState()
    if args.resume and (state.epoch >= train.epochs or state.stopped_early) and (out / "summary.json").is_file():
        raise UsageError(f"--resume: the run in {out} finished (epoch {state.epoch}"
                         f"{', stopped early' if state.stopped_early else ''}); nothing to continue: pass a larger "
                         "--epochs (or --patience) to train on")
    if args.resume:  # rows a killed run logged after its last checkpoint would come twice
        trim_csv(out / "pretrain_log.csv", lambda row: int(row["epoch"]) <= state.epoch)
    elif current_world().is_main:
        (out / "pretrain_log.csv").unlink(missing_ok=True)
    setup_logging(out)
    world = current_world()
    LOG.info("pretrain %s on %s (%d train / %d val images) on %s (%s)%s, from epoch %d", stage.model_name,
             stage.dataset, stage.data.train.num_samples * world.size, stage.data.val.num_samples, stage.device,
             precision_name(stage.device, stage.amp),
             f" x {world.size} processes (data-parallel)" if world.distributed else "", state.epoch + 1)

    def checkpoint(fit_state: FitState, stats: EpochStats, improved: bool) -> None:
        meta = {"stage": "pretrain", "sparsity": 0.0, "epoch": stats.epoch, "val_acc": stats.val_acc}
        # the resume point first: a failure writing the best model (a full disk) still leaves a run --resume continues
        stage.save(last_path, model, meta, extra={"train_state": _train_state(optimizer, scheduler, fit_state, stage)})
        if improved:
            stage.save(best_path, model, meta)

    loop = LoopSettings(amp=stage.amp, compile=args.compile, progress=not args.no_progress,
                        csv_path=out / "pretrain_log.csv", data_parallel_device=stage.device)  # DDP under torchrun
    state = fit(model, stage.data.train, stage.data.val, optimizer,
                FitSchedule(train.epochs, patience=train.patience, scheduler=None if per_step else scheduler,
                            batch_scheduler=scheduler if per_step else None,
                            label_smoothing=train.label_smoothing), loop=loop, state=state,
                on_epoch_end=checkpoint)

    model.load_state_dict(state.best_state)
    _, test_acc = evaluate_model(model, stage.data.test, amp=stage.amp)
    stage.save(best_path, model, {"stage": "pretrain", "sparsity": 0.0, "epoch": state.best_epoch,
                                  "val_acc": state.best_val_acc, "test_acc": test_acc})
    stage.write_summary(out / "summary.json", {"model": stage.model_name, "dataset": stage.dataset,
                                               **state.summary(), "test_acc": test_acc, "checkpoint": str(best_path)})
    LOG.info("best val %.2f%% at epoch %d; test %.2f%%; saved %s", state.best_val_acc, state.best_epoch,
             test_acc, best_path)
    log_outputs([best_path, last_path, out / "pretrain_log.csv", out / "summary.json", out / "log.txt"],
                f"python prune_unstructure.py {stage.repeat_flags()} --mode gradual --target_sparsity 0.98 "
                f"--finetune_epochs 20 --swap_every_epochs {RECOMMENDED_EVERY_EPOCHS}   (gradual pruning with swap "
                "cycles, the most accurate schedule measured so far; the original method prunes one-shot to 0.99 "
                "and regrows: docs/usage/pruning.md)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
