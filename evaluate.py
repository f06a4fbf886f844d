"""Accuracy and sparsity of any checkpoint: ours (weight-pruned, channel-pruned or exported), a packed file
(export.py --format: the model read back from its storage format) or the original repository's formats.

Examples:
    python evaluate.py --m_name resnet20 --ckpt runs/resnet20/checkpoint/ckpt.pth
    python evaluate.py --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth --per_layer
    python evaluate.py --ckpt runs/resnet20/structured_oneshot/resnet20_ch0.5000.pth
    python evaluate.py --m_name vgg16 --ckpt old_repo/iterate_0.9903.pth --json
    python evaluate.py --ckpt runs/resnet20/oneshot/resnet20_0.9900_bitmap_int8.bsparse

Sparsity counts pruned prunable weights (every Conv2d and Linear weight): ``params_total`` is their
number, ``params_nonzero`` the kept ones (mask == 1, or nonzero where a layer has no mask), and
``sparsity = 1 - params_nonzero / params_total``. A channel-pruned checkpoint also reports its channel
sparsity (masked channels / groupable channels) and the params and MACs (per image) of its physical
export next to the dense model's; an exported checkpoint reports its own params and MACs. Val accuracy
uses the checkpoint's own seed, val split and --eval_subset unless --seed / --val_split / --eval_subset are
given (``--eval_subset all``: every val and test image, whatever the checkpoint used). With --json, stdout is
exactly one JSON object. --device_profile (or --max_bytes / --max_macs / --max_latency_ms / --storage) says
whether the model fits a device, with the margin of each limit (see utils/device/profiles.py), and whether its
ONNX file (what export.py --onnx writes) fits the byte limit beside the packed format; when it fits, it names
the command that writes the packed file (export.py --format). Writes nothing.

    python evaluate.py --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth --device_profile profiles/mcu_64kb.json
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from utils.cli.flags import add_common_args, add_device_args, add_run_flags, cli_main, new_parser, profile_from_args
from utils.cli.prepare import checked_dataset, prepare
from utils.core.fields import help_of
from utils.core.log import LOG
from utils.core.values import positive_int_or_all
from utils.device.packed import FORMAT as PACKED
from utils.device.packed import packed_command, read_model_file, stage_model
from utils.device.profiles import check_fit, model_costs, onnx_fit
from utils.runtime.checkpoint import Checkpoint
from utils.runtime.settings import RunSettings
from utils.runtime.stage import Stage, recorded_eval_flags, resolve_names
from utils.runtime.train import evaluate_model
from utils.sparsity.granularity import granularity_class
from utils.sparsity.macs import params_and_macs
from utils.sparsity.masks import LayerCount, layer_counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    own = " (default: the checkpoint's own)"
    add_common_args(parser, m_name_default=None, training=False,
                    defaults={"seed": None, "val_split": None, "eval_subset": None},
                    helps={"seed": help_of(RunSettings, "seed") + own,
                           "val_split": help_of(RunSettings, "val_split") + own,
                           "eval_subset": "evaluate on only the first N val and N test images, or 'all'" + own},
                    parses={"eval_subset": positive_int_or_all})
    parser.add_argument("--ckpt", required=True, help="checkpoint to evaluate")
    parser.add_argument("--per_layer", action="store_true", help="also report sparsity per prunable layer")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_run_flags(parser, {"trust_pickle": "allow checkpoints that are pickled nn.Modules (runs code from the file)"})
    add_device_args(parser)
    return parser.parse_args(argv)


def _fill_from_checkpoint(args: argparse.Namespace, saved: dict) -> None:
    """Use the seed / val split / eval subset the checkpoint was trained with unless given on the command line
    (so val and test accuracy are measured on the images its training measured them on; ``saved``: its
    ``recorded_eval_flags``)."""
    if args.seed is None:
        args.seed = int(saved.get("seed", 42))
    elif "seed" in saved and int(saved["seed"]) != args.seed:
        LOG.warning("--seed %d carves another val split than the checkpoint's training used (seed %s): its val "
                    "images may include images it trained on, so val accuracy reads high; leave --seed out",
                    args.seed, saved["seed"])
    if args.val_split is None:
        args.val_split = float(saved.get("val_split", 0.1))
    elif "val_split" in saved and float(saved["val_split"]) != args.val_split:
        LOG.warning("--val_split %g differs from the checkpoint's training (%s): the val images may include "
                    "training images", args.val_split, saved["val_split"])
    if args.eval_subset is None:
        args.eval_subset = saved.get("eval_subset")
    elif args.eval_subset == "all":
        args.eval_subset = None


def _layer_rows(counts: list[LayerCount]) -> list[dict]:
    return [{"layer": c.name, "shape": list(c.shape), "total": c.total, "nonzero": c.kept,
             "sparsity": c.sparsity} for c in counts]


def _print_text(report: dict, per_layer: bool) -> None:
    print(f"checkpoint  {report['checkpoint']} ({report['format']})")
    print(f"model       {report['model']} on {report['dataset']}")
    if report["exported"]:  # a physical export: no masks, its pruned channels are gone
        source = report["exported_from"]
        at = (f" at channel sparsity {source['channel_sparsity']:.4f}" if source["channel_sparsity"] is not None
              else "")
        print(f"export      of {source['checkpoint'] or 'a channel-pruned checkpoint'}{at}: every remaining weight "
              "kept (no masks)")
    else:
        print(f"sparsity    {report['sparsity']:.4f}  ({report['params_nonzero']:,} of {report['params_total']:,} "
              f"prunable weights kept)")
    if not granularity_class(report["granularity"]).counts_weights and not report["exported"]:
        print(f"{report['granularity'] + 's':<12}{report['unit_sparsity']:.4f} {report['granularity']} sparsity")
    if "macs" in report:
        dense = (f" (dense {report['params_dense']:,} params, {report['macs_dense'] / 1e6:.2f}M MACs)"
                 if "macs_dense" in report else "")
        print(f"exported    {report['params']:,} params, {report['macs'] / 1e6:.2f}M MACs per image{dense}")
    if per_layer:
        print(f"\n{'layer':<28} {'shape':<20} {'total':>10} {'nonzero':>10} {'sparsity':>9}")
        for row in report["layers"]:
            shape = "x".join(map(str, row["shape"]))
            print(f"{row['layer']:<28} {shape:<20} {row['total']:>10,} {row['nonzero']:>10,} {row['sparsity']:>9.4f}")
        print()
    print(f"val acc     {report['val_acc']:.2f}%  ({report['val_images']} images)")
    print(f"test acc    {report['test_acc']:.2f}%  ({report['test_images']} images)")
    if "device" in report:
        _print_fit(report["device"])


def _print_fit(device: dict) -> None:
    profile = device["profile"]
    print(f"\ndevice      {profile['name']} (storage {profile['storage']}): "
          f"{'FITS' if device['fits'] else 'DOES NOT FIT'}")
    if "packed_by" in device:
        print(f"  {'file':<11} {device['packed_by']} (the bytes below plus a header)")
    units = {"bytes": "bytes", "macs": "MACs", "latency_ms": "ms"}
    for key, row in device["limits"].items():
        print(f"  {key:<11} {row['cost']:>14,.1f} of {row['limit']:>14,.1f} {units[key]:<5}  margin "
              f"{row['margin']:>+14,.1f} ({row['margin_pct']:+.1f}%)  {'ok' if row['fits'] else 'over'}")
    if "onnx" in device:
        row = device["onnx"]
        print(f"  {'onnx file':<11} {row['cost']:>14,.1f} of {row['limit']:>14,.1f} {'bytes':<5}  margin "
              f"{row['margin']:>+14,.1f} ({row['margin_pct']:+.1f}%)  {'ok' if row['fits'] else 'over'}  (pruned "
              "weights stored as zeros; not part of FITS)")


def structure(stage: Stage, model, ckpt: Checkpoint) -> dict:
    """Granularity, its sparsity and its own figures (channels: the export's params and MACs, with the
    dense model's); for an exported checkpoint its own params and MACs."""
    gran, size = stage.granularity, stage.data.info.image_size
    out = {"granularity": gran.name, "unit_sparsity": gran.sparsity(model), "exported": ckpt.export_history is not None}
    if out["exported"]:  # what it was exported from, from the export's meta (its own masks are gone)
        out["params"], out["macs"] = params_and_macs(model, size)
        out["params_dense"], out["macs_dense"] = params_and_macs(stage.build_model().cpu(), size)
        out["exported_from"] = {"checkpoint": ckpt.meta.get("parent"),
                                "channel_sparsity": ckpt.meta.get("channel_sparsity")}
        return out
    out.update(gran.describe(model))
    if "macs" in out:
        out["params_dense"], out["macs_dense"] = params_and_macs(stage.build_model().cpu(), size)
    return out


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = profile_from_args(args)  # a bad profile fails before anything loads
    ckpt = read_model_file(args.ckpt, trust_pickle=args.trust_pickle)
    recorded = checked_dataset(args.dataset, ckpt.dataset, Path(args.ckpt))
    model_name, dataset = resolve_names(args.m_name or ckpt.model, recorded)
    _fill_from_checkpoint(args, recorded_eval_flags(ckpt))
    stage = prepare(args, model_name, dataset, ckpt.granularity)
    model = stage_model(stage, args.ckpt, ckpt)
    counts = layer_counts(model)
    total, kept = sum(c.total for c in counts), sum(c.kept for c in counts)
    _, val_acc = evaluate_model(model, stage.data.val, amp=stage.amp)
    _, test_acc = evaluate_model(model, stage.data.test, amp=stage.amp)
    source = f"{PACKED} {ckpt.meta['storage']}" if ckpt.source == PACKED else ckpt.source
    report = {"checkpoint": args.ckpt, "format": source, "model": stage.model_name, "dataset": stage.dataset,
              "sparsity": 1 - kept / total, "params_total": total, "params_nonzero": kept,
              "model_params": sum(p.numel() for p in model.parameters()), "val_acc": val_acc, "test_acc": test_acc,
              "val_images": stage.data.val.num_samples, "test_images": stage.data.test.num_samples,
              "seed": args.seed, "val_split": args.val_split,
              "eval_subset": args.eval_subset, **structure(stage, model, ckpt)}
    if args.per_layer:
        report["layers"] = _layer_rows(counts)
    if profile is not None:
        is_export = ckpt.export_history is not None
        report["device"] = check_fit(profile, model_costs(profile, stage.granularity, model, stage.device,
                                                          is_export=is_export))
        onnx = onnx_fit(profile, stage.granularity, model, is_export=is_export)
        if onnx is not None:  # beside the packed format: the file an ONNX runtime would load
            report["device"]["onnx"] = onnx
        if report["device"]["fits"]:
            report["device"]["packed_by"] = packed_command(args.ckpt, ckpt, profile.storage)
    if args.json:
        print(json.dumps(report))
    else:
        _print_text(report, args.per_layer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
