"""Seconds per search episode at two reward fidelities: today's whole-epoch mini-finetune rewarded on every val
image, against a step-budgeted one (``--episode_steps``) rewarded on a val subset (``--episode_val_subset``).

One episode is what ``Search.evaluate`` does: regrow K = 1% of N_tot into a copy of a 99%-sparse (one-shot
LAMP) model, finetune it with AdamW and measure its val accuracy. The models are freshly initialised: the cost
of an episode does not depend on how accurate they are. Run it alone on the machine (timings of two
processes sharing the cores mean nothing).

    python -m benchmarks.bench_episode_cost --dataset cifar10 --data_dir ./data --steps 30 --val_subset 1000

Prints seconds per episode, episodes per minute and the ratio; writes benchmarks/results/bench_episode_cost.json.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from benchmarks.common import machine, save_results, timed
from data import DataSettings, get_data
from models import create_model
from utils.cli.types import positive_int
from utils.prune.pruners import get_pruner
from utils.regrow.allocation import allocate_uniform
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.granularity import get_granularity
from utils.sparsity.grow import random_scores_like
from utils.sparsity.masks import add_reparam


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="synthetic", help="synthetic | cifar10 (needs --data_dir)")
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--train_subset", type=positive_int, default=None,
                        help="first N training images (default: all)")
    parser.add_argument("--steps", type=positive_int, default=30, help="optimizer steps of the cheap episode")
    parser.add_argument("--val_subset", type=positive_int, default=1000,
                        help="val images of the cheap episode's reward")
    parser.add_argument("--repeats", type=positive_int, default=2,
                        help="timings of the cheap episode (the best counts)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device("cpu")
    data = get_data(args.dataset, DataSettings(args.data_dir, train_subset=args.train_subset, download=False),
                    device=device)
    gran = get_granularity("weight", args.model, data.info.num_classes)
    sparse = create_model(args.model, data.info.num_classes)
    add_reparam(sparse)
    get_pruner("lamp").prune(sparse, 0.99)
    caps = gran.capacity(sparse)
    allocation = allocate_uniform({}, caps, regrowth_budget(gran.total(sparse), 0.01, sum(caps.values())))
    regrowth = Regrowth(allocation, random_scores_like(gran.masks(sparse), torch.Generator().manual_seed(0)), "zero")
    quiet = LoopSettings(progress=False, verbose=False)

    def episode(train, val) -> None:
        apply_allocation(gran, sparse, regrowth, Finetuning(FinetuneSettings(epochs=1), train, val, quiet))

    full = timed(lambda: episode(data.train, data.val), device, 1)
    cheap = timed(lambda: episode(data.train.steps(args.steps), data.val.first(args.val_subset)), device,
                  args.repeats)
    result = {"model": args.model, "dataset": args.dataset, "train_images": data.train.num_samples,
              "val_images": data.val.num_samples, "epoch_steps": len(data.train), "steps": args.steps,
              "val_subset": min(args.val_subset, data.val.num_samples), "epoch_episode_s": full,
              "cheap_episode_s": cheap, "speedup": full / cheap}
    print(f"{machine()}; {args.model} on {args.dataset}, {result['train_images']:,} training images")
    print(f"  1-epoch episode ({len(data.train)} steps, {result['val_images']:,} val images): {full:8.1f} s  "
          f"({60 / full:.2f} episodes/min)")
    print(f"  {args.steps}-step episode ({result['val_subset']:,} val images):{'':>11}{cheap:8.1f} s  "
          f"({60 / cheap:.2f} episodes/min)")
    print(f"  {result['speedup']:.1f}x more episodes per minute; results: "
          f"{save_results('bench_episode_cost', result)}")
    return result


if __name__ == "__main__":
    main()
