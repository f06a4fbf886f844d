"""ONNX Runtime against PyTorch on the CPU, and the ONNX file against the storage formats, for channel-pruned models.

Per model and channel sparsity (one-shot global L1, untrained weights: cost does not depend on values): the
masked model, its physical export and the export's ONNX file (checked by ONNX Runtime within 1e-4), latency at
each batch size (median of --repeats, PyTorch models timed side by side, then ONNX Runtime), and the bytes of
the ONNX file beside the dense-fp32 and packed formats of the export. Run it alone on the machine.

    python -m benchmarks.bench_onnx                                   # resnet20, vgg16 at 50% and 90%
    python -m benchmarks.bench_onnx --models resnet20 --sparsities 0.5 --batch_sizes 1 --repeats 1   # seconds
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from benchmarks.common import machine, save_results
from models import create_model
from utils.cli.types import fraction, positive_int
from utils.device.latency import latencies_ms
from utils.device.onnx import checked_onnx, ort_latency_ms
from utils.device.storage import model_bytes
from utils.prune.pruners import get_pruner
from utils.sparsity.granularity import get_granularity
from utils.sparsity.physical import export_model

FORMATS = ("dense_fp32", "dense_int8", "bitmap_fp16")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--sparsities", type=fraction, nargs="+", default=[0.5, 0.9], help="channel sparsities")
    parser.add_argument("--batch_sizes", type=positive_int, nargs="+", default=[1, 128])
    parser.add_argument("--repeats", type=positive_int, default=10)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    cpu, rows = torch.device("cpu"), []
    for name in args.models:
        for sparsity in args.sparsities:
            gran = get_granularity("channel", name)
            torch.manual_seed(0)
            masked = create_model(name).eval()
            get_pruner("l1", gran, "global").prune(masked, sparsity)
            exported = export_model(gran, masked)[0].eval()
            images = torch.randn(4, 3, gran.input_size, gran.input_size, generator=torch.Generator().manual_seed(0))
            data, diff = checked_onnx(exported, gran.input_size, images)
            row = {"model": name, "channel_sparsity": sparsity, "onnx_bytes": len(data), "max_abs_diff": diff,
                   **{f"{fmt}_bytes": model_bytes(exported, fmt) for fmt in FORMATS}, "latency_ms": {}}
            for batch in args.batch_sizes:
                ms = latencies_ms({"masked": masked, "exported": exported}, batch, gran.input_size, cpu, args.repeats)
                ms["onnxruntime"] = ort_latency_ms(data, batch, gran.input_size, args.repeats)
                row["latency_ms"][str(batch)] = ms
            rows.append(row)
            timing = "; ".join(f"batch {b}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in t.items())
                               for b, t in row["latency_ms"].items())
            print(f"{name} at {sparsity:.0%}: ONNX {len(data):,} bytes (dense fp32 {row['dense_fp32_bytes']:,}, "
                  f"bitmap fp16 {row['bitmap_fp16_bytes']:,}); max diff {diff:.1e}; {timing}", flush=True)
    result = {"threads": torch.get_num_threads(), "rows": rows}
    print(f"{machine()}: results {save_results('bench_onnx', result)}")
    return result


if __name__ == "__main__":
    main()
