"""Physical export of a channel-pruned checkpoint: a smaller plain model (masked channels removed with
Torch-Pruning) that gives the same outputs, with params, MACs and measured latency of all three models.

The export is a bridge-ckpt whose state dict has the smaller shapes and whose ``export.history`` (Torch-
Pruning's pruning history: root layer, out-channel flag, channel indices) rebuilds them, so it loads
without pickles: evaluate.py and finetune.py take it like any checkpoint. No data set is needed: outputs
are compared on random images, latency is measured on random images.

Examples:
    python export.py --ckpt runs/resnet20/structured_oneshot/resnet20_ch0.5000.pth
    python export.py --ckpt runs/vgg16/structured_iterative/vgg16_ch0.8824.pth --device cuda --batch_sizes 1 256

Writes --out (default {ckpt stem}_exported.pth beside the checkpoint) and prints, for the dense, the masked
and the exported model: parameters, MACs per image, and latency (median of --repeats forward passes, in
ms) at each --batch_sizes on --device; with --json, stdout is exactly one JSON object with the same figures.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from utils.cli.flags import cli_main, new_parser, positive_int
from utils.cli.prepare import prepare_model_only
from utils.core.errors import UsageError
from utils.core.log import log_outputs
from utils.core.paths import check_output_file, exported_path
from utils.device.latency import latencies_ms
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.stage import Stage, recorded_eval_flags
from utils.runtime.train import use_channels_last
from utils.sparsity.granularity import granularity_class
from utils.sparsity.macs import params_and_macs
from utils.sparsity.physical import export_model, verify_export

NO_MASKS = ("has no masks (a dense model, or already exported): export takes the channel-pruned checkpoint that "
            "prune_structure.py writes")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--ckpt", required=True, help="channel-pruned checkpoint (from prune_structure.py)")
    parser.add_argument("--out", default=None, help="exported checkpoint (default {ckpt stem}_exported.pth)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (latency is measured here)")
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[1, 128], help="latency batch sizes")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed forward passes per measurement")
    parser.add_argument("--no_channels_last", action="store_true", help="time in NCHW layout")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--trust_pickle", action="store_true", help="allow a pickled nn.Module checkpoint")
    return parser.parse_args(argv)


def measure(stage: Stage, models: dict[str, torch.nn.Module], args: argparse.Namespace) -> dict[str, dict]:
    """Params, MACs and latency (ms per batch, per --batch_sizes, timed side by side) of each model on the
    stage's device; the masked model stores and computes what the dense one does, so it gets the dense counts."""
    size = stage.granularity.input_size
    rows = {label: dict(zip(("params", "macs"), params_and_macs(models["dense" if label == "masked" else label],
                                                                 size), strict=True), latency_ms={})
            for label in models}
    for batch in args.batch_sizes:
        timed = latencies_ms(models, batch, size, stage.device, args.repeats, channels_last=stage.channels_last)
        for label, ms in timed.items():
            rows[label]["latency_ms"][str(batch)] = ms
    return rows


def print_table(rows: dict[str, dict], report: dict) -> None:
    batches = list(next(iter(rows.values()))["latency_ms"])
    print(f"{report['model']} at channel sparsity {report['channel_sparsity']:.4f} on {report['device']} "
          f"(max |masked - exported| = {report['max_abs_diff']:.2e})")
    print(f"{'model':<10} {'params':>12} {'MACs':>12} " + " ".join(f"{'ms @ ' + b:>11}" for b in batches))
    for label, row in rows.items():
        print(f"{label:<10} {row['params']:>12,} {row['macs']:>12,} " +
              " ".join(f"{row['latency_ms'][b]:>11.2f}" for b in batches))
    print(f"wrote {report['out']}")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = read_checkpoint(args.ckpt, trust_pickle=args.trust_pickle)
    if ckpt.granularity is None:
        raise UsageError(f"{args.ckpt} {NO_MASKS}")
    if not granularity_class(ckpt.granularity).exportable:
        raise UsageError(f"{args.ckpt} {granularity_class(ckpt.granularity).export_refusal}")
    out = check_output_file(args.out or exported_path(args.ckpt), inputs=[args.ckpt], overwrite=args.overwrite,
                            what="--out")
    stage = prepare_model_only(args, ckpt, ckpt.granularity)
    masked = stage.load_model(args.ckpt).eval()
    exported, history = export_model(stage.granularity, masked)
    exported = use_channels_last(exported.to(stage.device), stage.channels_last).eval()
    diff = verify_export(masked, exported, stage.granularity.input_size)
    report = {"checkpoint": str(args.ckpt), "out": str(out), "model": stage.model_name, "device": str(stage.device),
              "channel_sparsity": stage.granularity.sparsity(masked), "max_abs_diff": diff}
    report["models"] = measure(stage, {"dense": stage.build_model(), "masked": masked, "exported": exported}, args)
    stage.save(out, exported, {"stage": "export", "parent": str(args.ckpt), **{k: report[k] for k in (
        "channel_sparsity", "max_abs_diff")}, "params": report["models"]["exported"]["params"],
        "macs": report["models"]["exported"]["macs"], "val_acc": ckpt.meta.get("val_acc"),
        "test_acc": ckpt.meta.get("test_acc"), "eval_args": recorded_eval_flags(ckpt)}, export_history=history)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report["models"], report)
    log_outputs([out], f"python evaluate.py --ckpt {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
