"""Seconds to compute the 99% mask of vgg16 (14.7M prunable weights) with each pruner, from dense.

Each pruner runs once to warm up, then three times from the same dense masks; the best time counts.

    python -m benchmarks.bench_prune                 # CPU
    python -m benchmarks.bench_prune --device cuda
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import machine, save_results, sync
from models import create_model
from utils.cli.types import open_fraction, positive_int
from utils.core.timer import Timer
from utils.prune.pruners import get_pruner, list_pruners
from utils.sparsity.masks import add_reparam, get_masks, num_prunable, set_masks, sparsity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--amount", type=open_fraction, default=0.99)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=positive_int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model).to(device)
    add_reparam(model)
    dense = get_masks(model)
    print(f"{machine()}: {args.model} ({num_prunable(model):,} prunable weights), mask at {args.amount:.0%} sparsity")
    results = {}
    for name in list_pruners():
        pruner = get_pruner(name)
        times = []
        for run in range(args.repeats + 1):
            set_masks(model, dense)
            generator = torch.Generator(device=device).manual_seed(0)
            sync(device)
            with Timer() as timer:
                pruner.prune(model, args.amount, generator)
                sync(device)
            if run:  # the first run warms up
                times.append(timer.seconds)
        results[name] = {"seconds": min(times), "sparsity": sparsity(model)}
        print(f"  {name:<9} {min(times):6.3f} s   sparsity {sparsity(model):.6f}")
    print(f"results: {save_results('bench_prune', {'model': args.model, 'amount': args.amount, **results})}")


if __name__ == "__main__":
    main()
