"""Data set registry: ``get_data(name, ...)`` returns train / val / test loaders on the training device.

The val split is carved from the training set with a generator seeded from the run seed (role
'val_split') and uses the test pipeline (no augmentation). Every decision is made on val; test
accuracy is only reported.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from data.loader import Augment, DeviceLoader
from utils.errors import UsageError
from utils.run import make_generator


@dataclass
class ImageSet:
    """A split held in memory: images uint8 [N, 3, H, W], labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def subset(self, idx: torch.Tensor) -> ImageSet:
        """The images at indices ``idx`` (int64 [M])."""
        return ImageSet(self.images[idx], self.labels[idx])


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set."""

    name: str
    num_classes: int
    image_size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augment: Augment


@dataclass
class RawDataset:
    """What a data set reader returns: its info plus the full train and test splits."""

    info: DatasetInfo
    train: ImageSet
    test: ImageSet


@dataclass
class DataBundle:
    """Loaders of one run. ``train`` shuffles and augments; ``val`` and ``test`` do neither."""

    info: DatasetInfo
    train: DeviceLoader
    val: DeviceLoader
    test: DeviceLoader


Reader = Callable[[Path, bool], RawDataset]  # (data_dir, download allowed) -> data
_READERS: dict[str, Reader] = {}
_ALIASES = {"CIFAR10": "cifar10", "cifar-10": "cifar10", "tiny-imagenet": "tiny_imagenet"}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering ``reader(data_dir, download) -> RawDataset`` under ``name``."""

    def wrap(reader: Reader) -> Reader:
        _READERS[name] = reader
        return reader

    return wrap


def list_datasets() -> list[str]:
    """Registered data set names."""
    return list(_READERS)


def canonical_dataset(name: str) -> str:
    """The registry name for ``name`` (aliases such as 'CIFAR10' accepted); unknown names are usage errors."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _READERS:
        raise UsageError(f"unknown dataset '{name}'; choose one of: {', '.join(list_datasets())}")
    return canonical


def load_raw(name: str, data_dir: str | Path, download: bool = True) -> RawDataset:
    """Read the full data set ``name`` from ``data_dir`` into CPU memory."""
    return _READERS[canonical_dataset(name)](Path(data_dir), download)


def split_train_val(train: ImageSet, val_split: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Hold out ``round(val_split * N)`` (at least 1) training images as val, drawn by the 'val_split' stream."""
    n = len(train.labels)
    n_val = max(1, round(val_split * n))
    if n_val >= n:
        raise UsageError(f"--val_split {val_split} leaves no training images out of {n}")
    order = torch.randperm(n, generator=make_generator(seed, "val_split"))
    return train.subset(order[n_val:]), train.subset(order[:n_val])


def _first(split: ImageSet, n: int) -> ImageSet:
    """The first ``n`` images of ``split`` (all of them when it has fewer)."""
    return split.subset(torch.arange(min(n, len(split.labels))))


def get_data(name: str, data_dir: str | Path, *, device: torch.device, seed: int = 42, val_split: float = 0.1,
             batch_size: int = 128, eval_batch_size: int = 500, train_subset: int | None = None,
             eval_subset: int | None = None, download: bool = True, channels_last: bool = True,
             augment: bool = True) -> DataBundle:
    """Load ``name`` and wrap its splits in device-resident loaders.

    ``train_subset`` keeps only the first N images of the training split (after the val split is carved,
    so val stays the same); ``eval_subset`` keeps only the first N images of val and of test (quick runs:
    every evaluation costs less, and its accuracy is measured on fewer images). Shuffling and augmentation
    (off with ``augment=False``) draw from the 'data_order' stream of ``seed``.
    """
    raw = load_raw(name, data_dir, download)
    train, val = split_train_val(raw.train, val_split, seed)
    if train_subset is not None:
        train = _first(train, train_subset)
    test = raw.test
    if eval_subset is not None:
        val, test = _first(val, eval_subset), _first(test, eval_subset)
    info = raw.info
    common = dict(mean=info.mean, std=info.std, device=device, channels_last=channels_last)
    return DataBundle(
        info=info,
        train=DeviceLoader(train.images, train.labels, batch_size=batch_size, shuffle=True,
                           augment=info.augment if augment else None,
                           generator=make_generator(seed, "data_order", device), **common),
        val=DeviceLoader(val.images, val.labels, batch_size=eval_batch_size, **common),
        test=DeviceLoader(test.images, test.labels, batch_size=eval_batch_size, **common),
    )


# Importing the readers fills the registry.
from data import cifar10, synthetic, tiny_imagenet  # noqa: E402,F401
