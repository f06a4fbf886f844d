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
from utils.core.errors import UsageError
from utils.core.fields import setting
from utils.core.provenance import data_fingerprint
from utils.core.registry import Registry
from utils.core.seeds import make_generator
from utils.core.values import BATCH_LIMIT, int_up_to


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
    record: dict | None = None  # {name, train, val, test: image counts, fingerprint: of the whole data set read}


Reader = Callable[[Path, bool], RawDataset]  # (data_dir, download allowed) -> data
_READERS: Registry[Reader] = Registry("dataset", aliases={"CIFAR10": "cifar10", "cifar-10": "cifar10",
                                                          "tiny-imagenet": "tiny_imagenet"})


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    """Decorator registering ``reader(data_dir, download) -> RawDataset`` under ``name``."""

    def wrap(reader: Reader) -> Reader:
        return _READERS.add(name, reader)

    return wrap


def list_datasets() -> list[str]:
    """Registered data set names."""
    return _READERS.names()


def canonical_dataset(name: str) -> str:
    """The registry name for ``name`` (aliases such as 'CIFAR10' accepted); unknown names are usage errors."""
    return _READERS.canonical(name)


def load_raw(name: str, data_dir: str | Path, download: bool = True) -> RawDataset:
    """Read the full data set ``name`` from ``data_dir`` into CPU memory."""
    return _READERS.get(name)(Path(data_dir), download)


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


@dataclass(frozen=True)
class DataSettings:
    """Where a data set lives and how its splits are cut and batched (the flags ``--data_dir`` ... ``--no_augment``).

    ``train_subset`` keeps only the first N images of the training split (after the val split is carved, so val
    stays the same); ``eval_subset`` keeps only the first N images of val and of test (quick runs: every
    evaluation costs less, and its accuracy is measured on fewer images)."""

    data_dir: str | Path = setting("./data", "folder holding the data sets", resumable=True)
    # the next seven are set from the run's settings (``RunSettings`` carries their flags, with these defaults)
    seed: int = 42  # run seed: the val split and the 'data_order' stream (shuffling, augmentation)
    val_split: float = 0.1  # fraction of the training split held out as val, in (0, 1)
    batch_size: int = 128  # training batch
    train_subset: int | None = None  # first N training images (None: all)
    eval_subset: int | None = None  # first N val and N test images (None: all)
    channels_last: bool = True  # batches in channels_last memory layout
    augment: bool = True  # the data set's training augmentation (crop, flip, ...)
    eval_batch_size: int = setting(500, "evaluation batch size", parse=int_up_to(BATCH_LIMIT), resumable=True)
    download: bool = setting(True, "never try to download a missing data set", names=("--no_download",),
                             negated=True, resumable=True)


def data_order(seed: int, device: torch.device | str, rank: int = 0) -> torch.Generator:
    """The 'data_order' stream of run seed ``seed`` (shuffling and augmentation of the training batches) from its
    start; process ``rank`` > 0 of a data-parallel run draws from its own stream."""
    return make_generator(seed, "data_order" if rank == 0 else f"data_order/rank{rank}", device)


def get_data(name: str, settings: DataSettings = DataSettings(), *, device: torch.device) -> DataBundle:
    """Load ``name`` and wrap its splits in device-resident loaders on ``device``. Shuffling and augmentation
    draw from the 'data_order' stream of ``settings.seed``."""
    s = settings
    raw = load_raw(name, s.data_dir, s.download)
    train, val = split_train_val(raw.train, s.val_split, s.seed)
    if s.train_subset is not None:
        train = _first(train, s.train_subset)
    test = raw.test
    if s.eval_subset is not None:
        val, test = _first(val, s.eval_subset), _first(test, s.eval_subset)
    info = raw.info
    record = {"name": info.name, "train": len(train.labels), "val": len(val.labels), "test": len(test.labels),
              "fingerprint": data_fingerprint(raw.train.images, raw.train.labels, raw.test.images, raw.test.labels)}
    common = dict(mean=info.mean, std=info.std, device=device, channels_last=s.channels_last)
    return DataBundle(
        info=info,
        train=DeviceLoader(train.images, train.labels, batch_size=s.batch_size, shuffle=True,
                           augment=info.augment if s.augment else None,
                           generator=data_order(s.seed, device), **common),
        val=DeviceLoader(val.images, val.labels, batch_size=s.eval_batch_size, **common),
        test=DeviceLoader(test.images, test.labels, batch_size=s.eval_batch_size, **common),
        record=record,
    )


# Importing the readers fills the registry.
from data import cifar10, synthetic, tiny_imagenet  # noqa: E402,F401
