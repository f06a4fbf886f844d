"""Full finetune of any checkpoint (ours or the original's formats), masks untouched.

AdamW (lr 3e-4, weight decay 0.01) with a per-step schedule: linear warm-up over --warmup_frac (5%) of all
steps, then cosine decay; --epochs (400), early stop after --patience (50) epochs without val gain; the
best epoch is chosen on val. Pruned weights (and masked channels) stay exactly zero. Weight-pruned,
channel-pruned and exported checkpoints are all finetuned as they are (an export stays exported).

Example:
    python finetune.py --ckpt runs/resnet20/regrowth_oneshot/0.9900/best_grown_model.pth --epochs 400

Data-parallel under torchrun (--batch_size is the global batch):
    torchrun --nproc_per_node 4 finetune.py --ckpt ... --epochs 400
Swap cycles at constant density (RigL: every 100 steps, 30% of each layer's kept weights at first, none in the
last 25% of the steps; weight-pruned checkpoints):
    python finetune.py --ckpt ... --epochs 400 --swap_every 100

Writes --save_path (default: {ckpt stem}_finetuned.pth beside the checkpoint) and {save_path stem}_log.csv;
prints sparsity and val/test accuracy before and after. While it trains, {save_path stem}.resume.pt holds the
state after its first epoch, then at most once a minute: a killed finetune continues exactly with the same
command and --resume.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
from collections.abc import Sequence
from pathlib import Path

from utils.cli.flags import (
    add_common_args,
    add_run_flags,
    add_speed_args,
    add_swap_args,
    cli_main,
    finetune_settings,
    new_parser,
    swap_settings,
)
from utils.cli.prepare import checked_dataset, prepare
from utils.cli.settings_flags import add_settings_args
from utils.core.distributed import current_world
from utils.core.errors import UsageError
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import check_output_file, clean_stale_temps, finetuned_path
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.resume import ResumePoint, check_point, resume_point
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.stage import check_lineage, dense_checkpoint
from utils.runtime.train import evaluate_model, finetune_model
from utils.sparsity.swap import NEEDS_DENSE


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    parser.add_argument("--ckpt", required=True, help="checkpoint to finetune")
    parser.add_argument("--save_path", default=None, help="output checkpoint")
    add_settings_args(parser, FinetuneSettings, skip=("select_on",), names={"epochs": ("--epochs",)},
                      defaults={"epochs": 400, "warmup_frac": 0.05, "patience": 50},
                      helps={"epochs": "finetune epochs (best epoch on val)",
                             "lr": "AdamW learning rate (cosine decay)",
                             "warmup_frac": "share of steps for linear warm-up",
                             "patience": "early stop after N epochs without val gain"})
    add_run_flags(parser, {"trust_pickle": "allow a pickled nn.Module checkpoint"})
    add_run_flags(parser, {"overwrite": "replace an existing --save_path",
                           "resume": "continue a killed finetune from its resume point ({save_path stem}.resume.pt)"})
    add_run_flags(parser, {"pretrained": "the dense model (only --grow_score saliency reads it; default "
                             "{save_dir}/{m_name}/checkpoint/ckpt.pth)"})
    add_swap_args(parser)
    return parser.parse_args(argv)


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    swap = swap_settings(args)  # bad swap flags fail before any load
    ckpt = read_checkpoint(args.ckpt, trust_pickle=args.trust_pickle)
    wanted = Path(args.save_path or finetuned_path(args.ckpt))
    resumes = args.resume and resume_point(wanted).is_file()  # a point: the output may be saved, not yet its end
    if args.resume and not resumes:
        raise UsageError(f"--resume: no resume point {resume_point(wanted)}; run without --resume to start")
    save_path = check_output_file(wanted, inputs=[args.ckpt], overwrite=args.overwrite or resumes, what="--save_path")
    stage = prepare(args, args.m_name or ckpt.model, checked_dataset(args.dataset, ckpt.dataset, Path(args.ckpt)),
                    ckpt.granularity)
    model = stage.load_model(args.ckpt, exported=True)
    if swap is not None and stage.granularity.swap_refusal:
        raise UsageError(f"--swap_every: {args.ckpt} {stage.granularity.swap_refusal}")
    dense = None
    if swap is not None and swap.grow_score in NEEDS_DENSE:  # the dense model this checkpoint was pruned from
        dense_path = dense_checkpoint(stage.run, stage.model_name)
        dense = stage.layer_weights(dense_path)
        check_lineage(dense_path, stage.lineages.get(str(dense_path)), Path(args.ckpt),
                      stage.lineages.get(str(args.ckpt)), stage.run.allow_other_dense)
    stage.shard_training_data()  # under torchrun: data-parallel, each process on its shard
    sparsity, kind = stage.granularity.sparsity, stage.granularity.name
    resume = ResumePoint.of_stage(save_path, Path(args.ckpt), stage.run, stage.flags)
    check_point(resume.path, stage.run)
    clean_stale_temps(save_path.parent, recursive=False)  # a file's folder, not a run tree
    setup_logging(save_path.parent, f"{save_path.stem}_log.txt")
    _, val_before = evaluate_model(model, stage.data.val, amp=stage.amp)
    _, test_before = evaluate_model(model, stage.data.test, amp=stage.amp)
    world = current_world()
    LOG.info("before: %s sparsity %.4f  val %.2f%%  test %.2f%%%s", kind, sparsity(model), val_before, test_before,
             f"  ({world.size} processes, data-parallel)" if world.distributed else "")
    settings = finetune_settings(args)
    loop = LoopSettings(progress=not args.no_progress, csv_path=save_path.with_name(f"{save_path.stem}_log.csv"),
                        data_parallel_device=stage.device, **stage.speed)
    if resume.continues:
        LOG.info("continuing from the resume point %s", resume.path)
    state = finetune_model(model, stage.data.train, stage.data.val, settings, loop, dense=dense, resume=resume)
    if state.swaps:
        LOG.info("swap cycles: %d swaps moved %s weights (each layer's kept count unchanged)", state.swaps["swaps"],
                 f"{state.swaps['weights_moved']:,}")
    _, test_after = evaluate_model(model, stage.data.test, amp=stage.amp)
    meta = {"stage": "finetune", "parent": str(args.ckpt), "sparsity": sparsity(model), "epoch": state.best_epoch,
            "val_acc": state.best_val_acc, "test_acc": test_after, "val_acc_before": val_before,
            "test_acc_before": test_before, **({"swap": state.swaps} if state.swaps else {}),
            "precisions": state.precisions}
    stage.save(save_path, model, meta, export_history=ckpt.export_history)
    resume.path.unlink(missing_ok=True)  # saved: nothing to resume
    LOG.info("after:  %s sparsity %.4f  val %.2f%% (epoch %d)  test %.2f%%  (test %+.2f pp); saved %s",
             kind, sparsity(model), state.best_val_acc, state.best_epoch, test_after, test_after - test_before,
             save_path)
    log_outputs([save_path, *(save_path.with_name(f"{save_path.stem}_log{ext}") for ext in (".csv", ".txt"))],
                f"python evaluate.py --ckpt {save_path} --per_layer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
