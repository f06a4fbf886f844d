"""Channel granularity speed: building the groups, computing a channel mask, and what masks vs export buy.

Part 1: seconds to trace the coupled groups (Torch-Pruning's dependency graph, once per architecture) and
to compute a 90% channel mask from dense with each non-gradient pruner, local and global (best of
--repeats after a warm-up), for vgg16 and effnet. Goal: under 1 s each on the 2-core CPU.

Part 2: latency (median of --repeats eval forward passes, ms) of the dense, the channel-masked and the
exported model of resnet20 and vgg16 at 50% and 90% channel sparsity (L1, local), at batch 1 and 128,
measured side by side (each timing round runs all three models, so machine drift hits them alike).
Goal: the export at least 3x faster than the masked model at 50%.

    python -m benchmarks.bench_structured                 # CPU
    python -m benchmarks.bench_structured --device cuda
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import machine, save_results, timed
from models import create_model, model_spec
from utils.device.latency import latencies_ms
from utils.prune.pruners import get_pruner
from utils.runtime.train import use_channels_last
from utils.sparsity.channels import ChannelGranularity
from utils.sparsity.granularity import get_granularity
from utils.sparsity.macs import params_and_macs
from utils.sparsity.physical import export_model

MASK_PRUNERS = ["l1", "l2", "lamp", "bn_scale", "random"]


def best_seconds(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    return timed(fn, device, repeats)


def mask_speed(name: str, device: torch.device, repeats: int) -> dict:
    """Seconds to build the groups and to compute a 90% mask with each pruner and scope."""
    spec = model_spec(name)
    result = {"groups_s": best_seconds(lambda: ChannelGranularity(spec.name, spec.num_classes, spec.input_size),
                                       device, repeats)}
    gran = get_granularity("channel", name)
    torch.manual_seed(0)
    model = create_model(name).to(device)
    gran.ensure_masks(model)
    dense = gran.masks(model)
    for pruner_name in MASK_PRUNERS:
        for scope in ("local", "global"):
            pruner = get_pruner(pruner_name, gran, scope)

            def prune(pruner=pruner):
                gran.set_masks(model, dense)
                pruner.prune(model, 0.9, torch.Generator().manual_seed(0))

            reset = best_seconds(lambda: gran.set_masks(model, dense), device, repeats)
            result[f"{pruner_name}_{scope}_s"] = best_seconds(prune, device, repeats) - reset
    result["channel_sparsity"] = gran.sparsity(model)
    return result


def latency(name: str, sparsity: float, device: torch.device, repeats: int, batches: list[int]) -> dict:
    """Params, MACs and latency of dense, masked and exported ``name`` at ``sparsity`` (L1, local)."""
    gran = get_granularity("channel", name)
    size = model_spec(name).input_size
    torch.manual_seed(0)
    dense = create_model(name)
    masked = create_model(name)
    masked.load_state_dict(dense.state_dict())
    get_pruner("l1", gran, "local").prune(masked, sparsity)
    exported, _ = export_model(gran, masked)
    counts = {"dense": params_and_macs(dense, size), "exported": params_and_macs(exported, size)}
    counts["masked"] = counts["dense"]
    models = {label: use_channels_last(m.to(device).eval()) for label, m in
              (("dense", dense), ("masked", masked), ("exported", exported))}
    out = {"channel_sparsity": gran.sparsity(masked)}
    timed = {b: latencies_ms(models, b, size, device, repeats) for b in batches}  # side by side
    for label in models:
        out[label] = {"params": counts[label][0], "macs": counts[label][1], "ms": {b: timed[b][label] for b in batches}}
    out["masked_over_exported"] = {b: out["masked"]["ms"][b] / out["exported"]["ms"][b] for b in batches}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
    args = parser.parse_args()
    device = torch.device(args.device)
    print(machine())
    results = {"masks": {}, "latency": {}}
    for name in ("vgg16", "effnet"):
        r = results["masks"][name] = mask_speed(name, device, args.repeats)
        print(f"{name}: groups {r['groups_s']:.3f} s; 90% mask: " +
              ", ".join(f"{k[:-2]} {v:.3f} s" for k, v in r.items() if k.endswith("_s") and k != "groups_s"))
    for name in ("resnet20", "vgg16"):
        for sparsity in (0.5, 0.9):
            r = results["latency"][f"{name}@{sparsity}"] = latency(name, sparsity, device, args.repeats, args.batches)
            print(f"{name} at {r['channel_sparsity']:.3f} channel sparsity:")
            for label in ("dense", "masked", "exported"):
                row = r[label]
                print(f"  {label:<9} {row['params']:>11,} params {row['macs'] / 1e6:>9.2f}M MACs  " +
                      "  ".join(f"b{b}: {ms:8.2f} ms" for b, ms in row["ms"].items()))
            print("  masked / exported: " + ", ".join(f"b{b}: {x:.2f}x" for b, x in r["masked_over_exported"].items()))
    results["median_speedup_50"] = statistics.median(
        x for key, r in results["latency"].items() if key.endswith("0.5") for x in r["masked_over_exported"].values())
    print(f"results: {save_results('bench_structured', results)}")


if __name__ == "__main__":
    main()
