"""What one swap cycle costs against one training step (issue goal: well under one step at VGG-16 size).

A model pruned by LAMP to --sparsity (masks on every conv and linear layer) trains with AdamW on random
CIFAR-shaped batches through the toolkit's own ``train_epoch``. Three timings, best of --repeats:

* ``step``: one optimizer step (forward, backward, AdamW), no swap;
* ``swap step``: the same step on a swap step (each layer's dense gradient kept by the hook) plus the swap of
  every layer (``SwapCycles.after_step``);
* ``swap``: the difference, i.e. what a swap adds to its step; amortised over --every steps, its share of the
  finetune's time.

    python -m benchmarks.bench_swap                     # vgg16, 99%, CPU
    python -m benchmarks.bench_swap --device cuda --model resnet20
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from benchmarks.common import cifar_like, machine, save_results, timed
from data.cifar10 import INFO
from data.loader import DeviceLoader
from models import create_model
from utils.core.seeds import resolve_device
from utils.prune.pruners import get_pruner
from utils.runtime.train import train_epoch, use_channels_last
from utils.sparsity.masks import add_reparam
from utils.sparsity.swap import SwapCycles, SwapSettings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the best counts)")
    parser.add_argument("--every", type=int, default=100, help="swap period, for the amortised share")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model)
    add_reparam(model)
    get_pruner("lamp").prune(model, args.sparsity)
    model = use_channels_last(model.to(device))
    images, labels = cifar_like(args.batch_size)
    loader = DeviceLoader(images, labels, batch_size=args.batch_size, mean=INFO.mean, std=INFO.std, device=device,
                          channels_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    amp = device.type == "cuda"
    # every step a swap step (a long finetune keeps the fraction near its start); the hook is on for all of them
    cycles = SwapCycles(model, SwapSettings(every=1, fraction=0.3, until=1.0), 10**9, optimizer)
    swap_step = timed(lambda: train_epoch(model, loader, optimizer, amp=amp, progress=False,
                                          after_step=cycles.after_step), device, args.repeats + 1)
    cycles.close()
    step = timed(lambda: train_epoch(model, loader, optimizer, amp=amp, progress=False), device, args.repeats + 1)
    swap = max(swap_step - step, 0.0)
    result = {"model": args.model, "sparsity": args.sparsity, "batch_size": args.batch_size, "device": str(device),
              "step_ms": 1000 * step, "swap_step_ms": 1000 * swap_step, "swap_ms": 1000 * swap,
              "swap_per_step": swap / step, "every": args.every, "amortised_share": swap / (args.every * step)}
    path = save_results(f"bench_swap_{args.model}_{device.type}", result)
    print(f"{machine()}: {args.model} at {args.sparsity:.0%}, batch {args.batch_size}: one step {1000 * step:.1f} ms, "
          f"a swap step {1000 * swap_step:.1f} ms, so a swap adds {1000 * swap:.1f} ms ({swap / step:.2f} of a step; "
          f"{100 * result['amortised_share']:.2f}% of the time when it comes every {args.every} steps) -> {path}")
    return result


if __name__ == "__main__":
    main()
