"""Images/s of one CIFAR-10 training epoch of augmentation + batching (no model).

Ours: the device-resident loader (batched crop/flip/normalise on the device).
Baseline: torchvision's DataLoader over PIL images with per-sample RandomCrop(32, 4),
RandomHorizontalFlip, ToTensor, Normalize, as the original repository does.

    python -m benchmarks.bench_data --data_dir ./data      # real CIFAR-10 files
    python -m benchmarks.bench_data --random_data          # same shapes, no files needed
"""
from __future__ import annotations

import argparse

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import cifar_like, machine, save_results, timed
from data import load_raw
from data.cifar10 import INFO
from data.loader import DeviceLoader
from utils.cli.types import non_negative_int, positive_int


class PilCifar(Dataset):
    """What torchvision's CIFAR10 does per sample: a PIL image through a transform pipeline."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def torchvision_epoch(images, labels, batch_size: int, workers: int) -> None:
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(INFO.mean, INFO.std)])
    loader = DataLoader(PilCifar(images, labels, transform), batch_size=batch_size, shuffle=True,
                        num_workers=workers)
    for _ in loader:
        pass


def device_epoch(loader: DeviceLoader) -> None:
    for _ in loader:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--random_data", action="store_true", help="random CIFAR-shaped data instead of files")
    parser.add_argument("--images", type=positive_int, default=45_000, help="training images per epoch")
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts to try")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if args.random_data:
        images, labels = cifar_like(args.images)
    else:
        raw = load_raw("cifar10", args.data_dir, download=False)
        images, labels = raw.train.images[: args.images], raw.train.labels[: args.images]
    device = torch.device(args.device)
    n = len(labels)
    loader = DeviceLoader(images, labels, batch_size=args.batch_size, mean=INFO.mean, std=INFO.std, device=device,
                          shuffle=True, augment=INFO.augment, generator=torch.Generator(device=device).manual_seed(0))
    device_epoch(loader)  # warm-up
    ours = n / timed(lambda: device_epoch(loader), device, repeats=3)
    results = {"images": n, "device": str(device), "ours_images_per_s": ours, "torchvision": {}}
    print(f"{machine()}: one epoch of {n} images, batch {args.batch_size}")
    print(f"  device-resident loader ({device}): {ours:12,.0f} images/s")
    for workers in args.workers:
        theirs = n / timed(lambda w=workers: torchvision_epoch(images, labels, args.batch_size, w), device)
        results["torchvision"][f"workers_{workers}"] = theirs
        print(f"  torchvision DataLoader, {workers} workers: {theirs:12,.0f} images/s   ratio {ours / theirs:6.1f}x")
    print(f"results: {save_results('bench_data', results)}")


if __name__ == "__main__":
    main()
