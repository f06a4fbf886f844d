"""Physical export of a channel-pruned checkpoint: a smaller plain model (masked channels removed with
Torch-Pruning) that gives the same outputs, with params, MACs and measured latency of all three models; and,
with --onnx, an ONNX file of any checkpoint (dense, weight-pruned with the masks folded into the weights, or
channel-pruned as its physical export) that ONNX Runtime has been checked to run with PyTorch's outputs; and,
with --format, a packed file of any checkpoint in one of the storage formats (utils/device/storage.py): a sparse
layout (bitmap, CSR) and fp32 / fp16 / int8 values, as many bytes as the formula counts plus a header
(utils/device/packed.py), which evaluate.py reads back.

The export is a bridge-ckpt whose state dict has the smaller shapes and whose ``export.history`` (Torch-
Pruning's pruning history: root layer, out-channel flag, channel indices) rebuilds them, so it loads
without pickles: evaluate.py and finetune.py take it like any checkpoint. No data set is needed: outputs
are compared on random images, latency is measured on random images.

Examples:
    python export.py --ckpt runs/resnet20/structured_oneshot/resnet20_ch0.5000.pth
    python export.py --ckpt runs/vgg16/structured_iterative/vgg16_ch0.8824.pth --device cuda --batch_sizes 1 256
    python export.py --ckpt runs/resnet20/structured_oneshot/resnet20_ch0.5000.pth --onnx   # + _exported.onnx
    python export.py --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth --onnx                # weights: .onnx only
    python export.py --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth --format bitmap_int8  # + _bitmap_int8.bsparse

Writes --out (default {ckpt stem}_exported.pth beside the checkpoint; channel-pruned checkpoints only) and
prints, for the dense, the masked and the exported model: parameters, MACs per image, and latency (median of
--repeats forward passes, in ms) at each --batch_sizes on --device; with --json, stdout is exactly one JSON
object with the same figures. --onnx also writes --onnx_out (default: the .pth output, or the checkpoint, with
.onnx) once ONNX Runtime gives PyTorch's logits within 1e-4 on random images (else no file and an error), and
adds its size beside the storage formats' bytes and its ONNX Runtime CPU latency to the table. --format also
writes --packed_out (default: the .pth output, or the checkpoint, as {stem}_{format}.bsparse; a channel-pruned
checkpoint's is its physical export) once it reads back as written (masks exact, values within the format's
rounding), and prints its size: the formula's bytes plus the header's.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.cli.commands import commands
from utils.cli.flags import add_run_flags, cli_main, new_parser
from utils.cli.prepare import prepare_model_only
from utils.cli.types import positive_int
from utils.core.errors import UsageError
from utils.core.files import atomic_write
from utils.core.log import log_outputs
from utils.core.paths import check_output_file, exported_path
from utils.device.latency import latencies_ms
from utils.device.onnx import OPSET, checked_onnx, ort_latency_ms
from utils.device.packed import check_round_trip, packed_file, packed_path, source_info, write_packed
from utils.device.storage import FORMATS, model_bytes
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.stage import Stage, recorded_eval_flags
from utils.runtime.train import use_channels_last
from utils.sparsity.granularity import default_granularity, granularity_class
from utils.sparsity.macs import params_and_macs
from utils.sparsity.physical import export_model, verify_export

NO_MASKS = ("has no masks (a dense model, or already exported): export takes the channel-pruned checkpoint that "
            "prune_structure.py writes")
SHOWN_FORMATS = ("dense_fp32", "bitmap_fp16", "csr16_fp16", "bitmap_int8")  # in the text table (all in --json)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint: channel-pruned (from prune_structure.py) for the "
                                                      "physical export; any with --onnx or --format")
    parser.add_argument("--out", default=None, help="exported checkpoint (default {ckpt stem}_exported.pth)")
    add_run_flags(parser, {"device": "auto | cpu | cuda | cuda:N (latency is measured here)"})
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[1, 128], help="latency batch sizes")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed forward passes per measurement")
    add_run_flags(parser, {"channels_last": "time in NCHW layout"})
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_run_flags(parser, {"overwrite": "replace an existing --out"})
    add_run_flags(parser, {"trust_pickle": "allow a pickled nn.Module checkpoint"})
    parser.add_argument("--onnx", action="store_true",
                        help="also write an ONNX file checked by ONNX Runtime (any checkpoint: dense, weight- or "
                             "channel-pruned, exported)")
    parser.add_argument("--onnx_out", default=None, help="the ONNX file (default: --out or --ckpt with .onnx)")
    parser.add_argument("--format", choices=FORMATS, default=None, metavar="FORMAT",
                        help="also write a packed file in this storage format, one of " + ", ".join(FORMATS) +
                             " (any checkpoint; channel-pruned: its physical export)")
    parser.add_argument("--packed_out", default=None,
                        help="the packed file (default: --out or --ckpt as {stem}_{format}.bsparse)")
    return parser.parse_args(argv)


def measure(stage: Stage, models: dict[str, torch.nn.Module], args: argparse.Namespace) -> dict[str, dict]:
    """Params, MACs and latency (ms per batch, per --batch_sizes, timed side by side) of each model on the
    stage's device; the masked model stores and computes what the dense one does, so it gets the dense counts."""
    size = stage.granularity.input_size
    rows = {label: dict(zip(("params", "macs"), params_and_macs(models["dense" if label == "masked" else label],
                                                                 size), strict=True), latency_ms={})
            for label in models}
    for batch in args.batch_sizes:
        try:
            timed = latencies_ms(models, batch, size, stage.device, args.repeats, channels_last=stage.channels_last)
        except (torch.OutOfMemoryError, RuntimeError) as exc:  # e.g. "DefaultCPUAllocator: can't allocate memory"
            if not isinstance(exc, torch.OutOfMemoryError) and "alloc" not in str(exc):
                raise
            raise UsageError(f"--batch_sizes {batch}: not enough memory on {stage.device} for a batch that size "
                             f"({batch * 3 * size * size * 4 / 2**30:.1f} GiB of input images alone); use smaller "
                             "batch sizes") from None
        for label, ms in timed.items():
            rows[label]["latency_ms"][str(batch)] = ms
    return rows


def print_table(rows: dict[str, dict], report: dict) -> None:
    batches = list(next(iter(rows.values()))["latency_ms"])
    detail = (f" (max |masked - exported| = {report['max_abs_diff']:.2e})" if "max_abs_diff" in report else "")
    print(f"{report['model']} at {report['granularity']} sparsity {report['sparsity']:.4f} on {report['device']}"
          f"{detail}")
    print(f"{'model':<10} {'params':>12} {'MACs':>12} " + " ".join(f"{'ms @ ' + b:>11}" for b in batches))
    for label, row in rows.items():
        print(f"{label:<10} {row['params']:>12,} {row['macs']:>12,} " +
              " ".join(f"{row['latency_ms'][b]:>11.2f}" for b in batches))
    if "onnx" in report:
        onnx, storage = report["onnx"], report["storage_bytes"]
        print(f"ONNX file {onnx['bytes']:,} bytes (max |ONNX Runtime - PyTorch| = {onnx['max_abs_diff']:.2e}); the "
              "storage formats: " + ", ".join(f"{k} {v:,}" for k, v in storage.items() if k in SHOWN_FORMATS))


def physical_export(stage: Stage, masked: torch.nn.Module) -> tuple[torch.nn.Module, list, dict]:
    """The channel export of ``masked`` (checked to give its outputs; not saved yet): (exported model, its
    pruning history, report fields)."""
    exported, history = export_model(stage.granularity, masked)
    exported = use_channels_last(exported.to(stage.device), stage.channels_last).eval()
    diff = verify_export(masked, exported, stage.granularity.input_size)
    return exported, history, {"max_abs_diff": diff, "channel_sparsity": stage.granularity.sparsity(masked)}


def save_export(stage: Stage, ckpt, exported: torch.nn.Module, history: list, fields: dict, out: Path,
                args: argparse.Namespace) -> None:
    """Write the export to ``out`` with its figures and the checkpoint's recorded accuracies in the meta."""
    params, macs = params_and_macs(exported, stage.granularity.input_size)
    stage.save(out, exported, {"stage": "export", "parent": str(args.ckpt), **fields, "params": params,
                               "macs": macs, "val_acc": ckpt.meta.get("val_acc"), "test_acc": ckpt.meta.get("test_acc"),
                               "eval_args": recorded_eval_flags(ckpt)}, export_history=history)


def onnx_file(runs: torch.nn.Module, stage: Stage) -> tuple[bytes, float]:
    """The ONNX file of ``runs`` and its max logit difference, checked by ONNX Runtime (a ``UsageError``, nothing
    written, when it differs)."""
    size = stage.granularity.input_size
    return checked_onnx(runs, size, torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0)))


def check_batches(batch_sizes: list[int], size: int, device: torch.device) -> None:
    """Refuse, before any work, a latency batch whose input images alone do not fit the device's free memory."""
    free = (torch.cuda.mem_get_info(device)[0] if device.type == "cuda"
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    for batch in batch_sizes:
        need = batch * 3 * size * size * 4
        if need > free:
            raise UsageError(f"--batch_sizes {batch}: its input images alone need {need / 2**30:.1f} GiB, more than "
                             f"the {free / 2**30:.1f} GiB free on {device}; use smaller batch sizes")


def outputs(args: argparse.Namespace, ckpt) -> tuple[Path | None, Path | None, Path | None]:
    """(the .pth export, the ONNX file, the packed file) this call writes, checked before any work; a checkpoint
    that has no physical export needs --onnx or --format."""
    kind = granularity_class(ckpt.granularity) if ckpt.granularity is not None else None
    physical = kind is not None and kind.exportable
    if not physical and not args.onnx and not args.format:
        refusal = NO_MASKS if kind is None else commands(kind).export_refusal
        raise UsageError(f"{args.ckpt} {refusal}; --onnx writes an ONNX file of it, --format FORMAT a packed file")
    out = (check_output_file(args.out or exported_path(args.ckpt), inputs=[args.ckpt], overwrite=args.overwrite,
                             what="--out") if physical else None)
    onnx = None
    if args.onnx:
        onnx = check_output_file(args.onnx_out or Path(out or args.ckpt).with_suffix(".onnx"), inputs=[args.ckpt],
                                 overwrite=args.overwrite, what="--onnx_out")
        if out is not None and onnx.resolve() == out.resolve():
            raise UsageError(f"--onnx_out {onnx} is the --out checkpoint: give the ONNX file its own name")
    packed = None
    if args.format:
        packed = check_output_file(args.packed_out or packed_path(out or args.ckpt, args.format), inputs=[args.ckpt],
                                   overwrite=args.overwrite, what="--packed_out")
        if any(other is not None and packed.resolve() == other.resolve() for other in (out, onnx)):
            raise UsageError(f"--packed_out {packed} is another output of this call: give the packed file its own name")
    return out, onnx, packed


def packed_export(stage: Stage, ckpt, runs: torch.nn.Module, history: list | None, fields: dict,
                  args: argparse.Namespace) -> tuple[bytes, dict]:
    """(the packed file of ``runs`` in --format, checked to read back as written; its report fields): its
    bytes, the storage formula's, the header's and the max |logit difference| of the model read back.
    ``history`` and ``fields``: a physical export's (its Torch-Pruning history, its channel sparsity)."""
    extra = {"channel_sparsity": fields["channel_sparsity"]} if "channel_sparsity" in fields else {}
    data = packed_file(runs, args.format, source_info(stage, ckpt, args.ckpt, history, extra))
    diff = check_round_trip(runs, data, stage.granularity.input_size)
    formula = model_bytes(runs, args.format)
    return data, {"storage": args.format, "bytes": len(data), "formula_bytes": formula,
                  "header_bytes": len(data) - formula, "max_abs_diff": diff}


def print_packed(packed: dict) -> None:
    print(f"packed file {packed['path']}: {packed['bytes']:,} bytes = {packed['formula_bytes']:,} of "
          f"{packed['storage']} (its storage formula) + {packed['header_bytes']:,} of header; max |read back - "
          f"model| = {packed['max_abs_diff']:.2e} (logits on random images)")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = read_checkpoint(args.ckpt, trust_pickle=args.trust_pickle)
    out, onnx_out, packed_out = outputs(args, ckpt)
    stage = prepare_model_only(args, ckpt, ckpt.granularity or default_granularity())
    model = stage.load_model(args.ckpt, exported=True).eval()
    gran = stage.granularity
    check_batches(args.batch_sizes, gran.input_size, stage.device)
    report = {"checkpoint": str(args.ckpt), "model": stage.model_name, "device": str(stage.device),
              "granularity": gran.name, "sparsity": gran.sparsity(model), "written": []}
    runs, history, fields = model, ckpt.export_history, {}
    if out is not None:  # channel-pruned: the physical export runs on the device
        runs, history, fields = physical_export(stage, model)
        report.update(fields, out=str(out))
    onnx = onnx_file(runs, stage) if onnx_out is not None else None  # every check before the first write
    packed = packed_export(stage, ckpt, runs, history, fields, args) if packed_out is not None else None
    if out is not None:
        save_export(stage, ckpt, runs, history, fields, out, args)
        report["written"].append(str(out))
        models = {"dense": stage.build_model(), "masked": model, "exported": runs}
    else:
        label = "exported" if ckpt.export_history is not None else "masked" if ckpt.granularity else "dense"
        models = {"dense": stage.build_model(), label: model} if label == "masked" else {label: model}
    report["models"] = measure(stage, models, args)
    if onnx is not None:
        data, diff = onnx
        atomic_write(onnx_out, lambda tmp: tmp.write_bytes(data))
        report["written"].append(str(onnx_out))
        latency = {str(b): ort_latency_ms(data, b, gran.input_size, args.repeats) for b in args.batch_sizes}
        report["onnx"] = {"path": str(onnx_out), "bytes": len(data), "max_abs_diff": diff, "opset": OPSET,
                          "latency_ms": latency}
        report["storage_bytes"] = {fmt: model_bytes(model if out is None else runs, fmt) for fmt in FORMATS}
        params, macs = params_and_macs(runs, gran.input_size)
        report["models"]["onnx (ORT)"] = {"params": params, "macs": macs, "latency_ms": latency}
    if packed is not None:
        data, figures = packed
        write_packed(packed_out, data)
        report["written"].append(str(packed_out))
        report["packed"] = {"path": str(packed_out), **figures}
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report["models"], report)
        if packed is not None:
            print_packed(report["packed"])
    log_outputs(report["written"], f"python evaluate.py --ckpt {packed_out or out or args.ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
