"""Training images/s for resnet20 and vgg16 with and without channels_last / bf16, and a full-epoch time.

Each configuration runs ``--steps`` SGD steps at batch ``--batch_size`` after warm-up, through the
toolkit's own ``train_epoch`` and device-resident loader (random CIFAR-shaped data: the cost does not
depend on pixel values). bf16 means autocast; on a CPU it is measured for completeness, though the
toolkit only enables it on CUDA. ``--epoch_model`` also times one full epoch of ``--epoch_images``
(45,000 = CIFAR-10 train split) with the default settings.

    python -m benchmarks.bench_train                       # CPU figures
    python -m benchmarks.bench_train --device cuda --steps 200 --epoch_model vgg16
"""
from __future__ import annotations

import argparse
import contextlib
from itertools import product

import torch
import torch.nn.functional as F

from benchmarks.common import cifar_like, machine, save_results, sync, timed
from data.cifar10 import INFO
from data.loader import DeviceLoader
from models import create_model
from utils.runtime.train import train_epoch, use_channels_last


def _loader(n: int, batch_size: int, device: torch.device, channels_last: bool) -> DeviceLoader:
    images, labels = cifar_like(n)
    return DeviceLoader(images, labels, batch_size=batch_size, mean=INFO.mean, std=INFO.std, device=device,
                        shuffle=True, augment=INFO.augment, generator=torch.Generator(device=device).manual_seed(0),
                        channels_last=channels_last)


def _steps(model, loader: DeviceLoader, optimizer, bf16: bool) -> None:
    """One pass over ``loader`` with autocast as asked (also on CPU, unlike the toolkit's own loop)."""
    device = loader.device
    for x, y in loader:
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def images_per_second(name: str, device: torch.device, channels_last: bool, bf16: bool, steps: int,
                      batch_size: int) -> float:
    model = use_channels_last(create_model(name).to(device), channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    _steps(model, _loader(3 * batch_size, batch_size, device, channels_last), optimizer, bf16)  # warm-up
    loader = _loader(steps * batch_size, batch_size, device, channels_last)
    return steps * batch_size / timed(lambda: _steps(model, loader, optimizer, bf16), device)


def epoch_seconds(name: str, device: torch.device, images: int, batch_size: int, compile_model: bool) -> float:
    """Wall-clock seconds of one ``train_epoch`` with the toolkit defaults (channels_last, bf16 where native)."""
    model = use_channels_last(create_model(name).to(device))
    forward = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    loader = _loader(images, batch_size, device, True)
    train_epoch(forward, loader, optimizer, progress=False)  # warm-up (and compilation)
    sync(device)
    return timed(lambda: train_epoch(forward, loader, optimizer, progress=False), device, repeats=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epoch_model", default=None, help="also time one full epoch of this model")
    parser.add_argument("--epoch_images", type=int, default=45_000)
    parser.add_argument("--compile", action="store_true", help="torch.compile for the epoch timing")
    args = parser.parse_args()
    device = torch.device(args.device)

    print(f"{machine()}: training images/s, batch {args.batch_size}, {args.steps} steps")
    rows = []
    for name, channels_last, bf16 in product(args.models, (False, True), (False, True)):
        speed = images_per_second(name, device, channels_last, bf16, args.steps, args.batch_size)
        rows.append({"model": name, "channels_last": channels_last, "bf16": bf16, "images_per_s": speed})
        print(f"  {name:<9} channels_last={channels_last!s:<5} bf16={bf16!s:<5} {speed:10,.0f} images/s")
    results = {"device": str(device), "batch_size": args.batch_size, "throughput": rows}
    if args.epoch_model:
        seconds = epoch_seconds(args.epoch_model, device, args.epoch_images, args.batch_size, args.compile)
        results["epoch"] = {"model": args.epoch_model, "images": args.epoch_images, "seconds": seconds,
                            "compile": args.compile}
        print(f"  one epoch of {args.epoch_images} images, {args.epoch_model}"
              f"{' (compiled)' if args.compile else ''}: {seconds:.2f} s")
    print(f"results: {save_results('bench_train', results)}")


if __name__ == "__main__":
    main()
