"""Seconds for SSIM scores of every vgg16 layer over 8 val batches and for saliency over 8 train batches.

Also checks that SSIM capture holds a fixed amount of extra memory whatever the number of batches: the
bytes held by the hooks' running sums after 1, 4 and 8 batches (and, on CUDA, the peak allocation above
the forward passes themselves). Random CIFAR-shaped data and weights: the cost does not depend on them.

    python -m benchmarks.bench_layer_scores
    python -m benchmarks.bench_layer_scores --device cuda
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from benchmarks.common import cifar_like, machine, save_results, timed
from data.cifar10 import INFO
from data.loader import DeviceLoader
from models import create_model
from utils.cli.types import positive_int
from utils.prune.pruners import get_pruner
from utils.runtime.train import use_channels_last
from utils.scoring.saliency import saliency
from utils.scoring.ssim import layer_similarity, recording
from utils.sparsity.masks import add_reparam, prunable_modules


def _loader(n: int, batch: int, device: torch.device, train: bool) -> DeviceLoader:
    images, labels = cifar_like(n, seed=1 if train else 2)
    return DeviceLoader(images, labels, batch_size=batch, mean=INFO.mean, std=INFO.std, device=device,
                        shuffle=train, augment=INFO.augment if train else None,
                        generator=torch.Generator(device=device).manual_seed(0))


@torch.no_grad()
def held_bytes(model: torch.nn.Module, loader: DeviceLoader, batches: int) -> int:
    """Bytes the SSIM hooks hold after ``batches`` batches (their running sums)."""
    with recording(model, list(prunable_modules(model))) as rec:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
        return sum(t.numel() * t.element_size() for t in rec.sums.values())


def peak_cuda_extra(model: torch.nn.Module, loader: DeviceLoader, batches: int, capture: bool) -> int:
    """Peak CUDA memory during ``batches`` forward passes, with or without SSIM capture."""
    torch.cuda.reset_peak_memory_stats()
    ctx = recording(model, list(prunable_modules(model))) if capture else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x)
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=positive_int, default=8)
    parser.add_argument("--batch_size", type=positive_int, default=128)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    dense = use_channels_last(create_model("vgg16").to(device)).eval()
    sparse = use_channels_last(create_model("vgg16").to(device))
    sparse.load_state_dict(dense.state_dict())
    add_reparam(sparse)
    get_pruner("lamp").prune(sparse, 0.99)
    val = _loader(args.batches * args.batch_size, args.batch_size, device, train=False)
    train = _loader(args.batches * args.batch_size, args.batch_size, device, train=True)

    layer_similarity(dense, sparse, val, 1)  # warm-up
    ssim_s = timed(lambda: layer_similarity(dense, sparse, val, args.batches), device, repeats=2)
    sal_s = timed(lambda: saliency(dense, train, args.batches), device, repeats=2)
    held = {b: held_bytes(sparse, val, b) for b in (1, 4, args.batches)}
    results = {"ssim_seconds": ssim_s, "saliency_seconds": sal_s, "ssim_held_bytes": held,
               "batches": args.batches, "batch_size": args.batch_size}
    print(f"{machine()}: vgg16, {args.batches} batches of {args.batch_size}")
    print(f"  SSIM scores, all {len(prunable_modules(sparse))} layers (dense + sparse pass): {ssim_s:.2f} s")
    print(f"  saliency (dense model):                                 {sal_s:.2f} s")
    counts = " / ".join(f"{v:,}" for v in held.values())
    print(f"  bytes held by SSIM capture after 1 / 4 / {args.batches} batches:  {counts}")
    if device.type == "cuda":
        plain = peak_cuda_extra(sparse, val, args.batches, capture=False)
        hooked = {b: peak_cuda_extra(sparse, val, b, capture=True) - plain for b in (1, args.batches)}
        results["cuda_peak_extra_bytes"] = hooked
        print(f"  CUDA peak extra with capture, 1 / {args.batches} batches: {hooked[1]:,} / {hooked[args.batches]:,}")
    print(f"results: {save_results('bench_layer_scores', results)}")


if __name__ == "__main__":
    main()
