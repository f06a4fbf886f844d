"""Do the two Fisher estimates of the saliency pick the same weights to regrow?

From a dense model (--dense) pruned one-shot by LAMP to --sparsity, the saliency ``F · θ²`` of every pruned
position is computed on the dense model (the method's default) over the same --batches training batches with
``F`` the batch-level Fisher (``--fisher batch``, the original's: squares of batch-mean gradients) and with the
empirical Fisher (``--fisher per_sample``: the mean of per-image squared gradients). Reported: the overlap of the
two global top-K sets (K = --regrow_step · N_tot, the regrowth budget), the Kendall tau of the two scores over
the union of those sets and over every pruned position (Spearman there too), the per-layer split of each
top-K, and the seconds of each estimate.

    python -m benchmarks.bench_fisher --dataset cifar10 --data_dir DATA \\
        --dense docs/results/data/dense/resnet20_cifar10_seed1.pth --sparsity 0.99 --batches 40
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
from scipy.stats import kendalltau, spearmanr

from benchmarks.common import machine, save_results
from data import DataSettings, get_data
from models import create_model
from utils.cli.flags import cli_main
from utils.cli.types import fraction, positive_int, seed_int
from utils.core.seeds import make_generator
from utils.core.timer import Timer
from utils.prune.pruners import get_pruner
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.train import use_channels_last
from utils.scoring.saliency import FISHER_ESTIMATORS, saliency
from utils.sparsity.masks import add_reparam, get_masks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense", required=True, help="the dense checkpoint")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--seed", type=seed_int, default=1, help="the val split and the batches' order")
    parser.add_argument("--sparsity", type=fraction, default=0.99)
    parser.add_argument("--regrow_step", type=fraction, default=0.01, help="K as a fraction of all weights")
    parser.add_argument("--batches", type=positive_int, default=40, help="training batches for both estimates")
    parser.add_argument("--batch_size", type=positive_int, default=128)
    return parser.parse_args(argv)


def pruned_flat(scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scores of every pruned position, layer by layer in one vector [P]."""
    return torch.cat([scores[name].reshape(-1)[~masks[name].reshape(-1).bool()] for name in masks])


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt = read_checkpoint(args.dense)
    device = torch.device("cpu")
    data = get_data(args.dataset, DataSettings(data_dir=args.data_dir, seed=args.seed, batch_size=args.batch_size,
                                               augment=False), device=device)
    dense = use_channels_last(create_model(ckpt.model, num_classes=ckpt.num_classes))
    dense.load_state_dict(ckpt.state_dict)
    sparse = create_model(ckpt.model, num_classes=ckpt.num_classes)
    sparse.load_state_dict(ckpt.state_dict)
    add_reparam(sparse)
    get_pruner("lamp").prune(sparse, args.sparsity)
    masks = get_masks(sparse)
    total = sum(m.numel() for m in masks.values())
    k = int(args.regrow_step * total)
    flat, seconds = {}, {}
    for name in FISHER_ESTIMATORS:  # the same batches for both: a fresh data-order generator each time
        batches = data.train.with_generator(make_generator(args.seed, "bench_fisher", device))
        with Timer() as timer:
            scores = saliency(dense, batches, args.batches, layers=list(masks), fisher=name)
        flat[name], seconds[name] = pruned_flat(scores, masks), timer.seconds
    batch, sample = flat["batch"], flat["per_sample"]
    top_b, top_s = set(batch.topk(k).indices.tolist()), set(sample.topk(k).indices.tolist())
    union = torch.tensor(sorted(top_b | top_s))
    sizes = [int((~m.bool()).sum()) for m in masks.values()]
    layer_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    split = {name: torch.bincount(layer_of[torch.tensor(sorted(top))], minlength=len(sizes)).tolist()
             for name, top in (("batch", top_b), ("per_sample", top_s))}
    result = {"dense": args.dense, "dataset": args.dataset, "sparsity": args.sparsity, "k": k,
              "pruned_positions": len(batch), "batches": args.batches, "batch_size": args.batch_size,
              "top_k_overlap": len(top_b & top_s) / k,
              "kendall_tau_top_k_union": float(kendalltau(batch[union], sample[union]).statistic),
              "kendall_tau_all_pruned": float(kendalltau(batch, sample).statistic),
              "spearman_all_pruned": float(spearmanr(batch, sample).statistic),
              "per_layer_top_k": {"layers": list(masks), **split}, "seconds": seconds,
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps({k: v for k, v in result.items() if k != "per_layer_top_k"}, indent=2))
    print(f"results: {save_results('bench_fisher', result)} ({machine()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
