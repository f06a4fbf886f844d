"""Tiny-ImageNet (200 classes, 64x64) from the standard ``tiny-imagenet-200/`` layout, read in place.

Train images come from ``train/<wnid>/images/*.JPEG``; the official ``val/`` split (labels in
``val/val_annotations.txt``) is the test split. Nothing in the data folder is moved or renamed: the
decoded images are cached once in ``{data_dir}/.cache/`` and the cache is keyed by the file listing.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data import DatasetInfo, ImageSet, RawDataset, register_dataset
from data.loader import Augment
from utils.core.cache import read_cache, write_cache
from utils.core.errors import UsageError

FOLDER = "tiny-imagenet-200"
INFO = DatasetInfo("tiny_imagenet", 200, 64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                   augment=Augment(padding=8, flip=True, jitter=(0.2, 0.2, 0.2, 0.1)))


def _listing(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(wnids, [(train image, class)], [(val image, class)]) read from the folder's text files."""
    wnids = (root / "wnids.txt").read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, index[w]) for w in wnids for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
    val = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            if fields[1] not in index:
                raise UsageError(f"{root}/val/val_annotations.txt names unknown class {fields[1]}")
            val.append((root / "val" / "images" / fields[0], index[fields[1]]))
    return wnids, train, val


def _decode(items: list[tuple[Path, int]], size: int) -> ImageSet:
    images = np.empty((len(items), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.uint8)
        except OSError as exc:
            raise UsageError(f"cannot decode {path}: {exc}") from exc
        images[i] = arr.transpose(2, 0, 1)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return ImageSet(torch.from_numpy(images), labels)


@register_dataset("tiny_imagenet")
def load_tiny_imagenet(data_dir: Path, download: bool = True) -> RawDataset:
    """Read Tiny-ImageNet (decoded once into a cache); it is never downloaded automatically."""
    root = data_dir / FOLDER
    needed = [root / "wnids.txt", root / "val" / "val_annotations.txt"]
    if not all(p.is_file() for p in needed):
        raise UsageError(f"Tiny-ImageNet not found at {root}: download tiny-imagenet-200.zip from "
                         f"http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into {data_dir}")
    wnids, train, val = _listing(root)
    if not train or not val:
        raise UsageError(f"Tiny-ImageNet at {root} has no {'train' if not train else 'val'} images")
    key = hashlib.sha1("\n".join(str(p.relative_to(root)) + f":{c}" for p, c in train + val).encode()).hexdigest()
    cache = data_dir / ".cache" / f"tiny_imagenet_{key[:16]}.pt"
    blob = read_cache(cache, "Tiny-ImageNet", _decoded(len(train), len(val)))
    if blob is not None:
        return RawDataset(_info(len(wnids)), ImageSet(*blob["train"]), ImageSet(*blob["test"]))
    train_set, test_set = _decode(train, INFO.image_size), _decode(val, INFO.image_size)
    write_cache(cache, {"train": [train_set.images, train_set.labels], "test": [test_set.images, test_set.labels]},
                "Tiny-ImageNet")
    return RawDataset(_info(len(wnids)), train_set, test_set)


def _decoded(train: int, test: int) -> Callable[[dict], bool]:
    """Whether a cache holds ``train`` and ``test`` decoded images with their labels (``_decode``'s uint8
    [N, 3, 64, 64] and N labels)."""
    def valid(cache: dict) -> bool:
        return all(isinstance(cache.get(split), list) and len(cache[split]) == 2
                   and all(isinstance(x, torch.Tensor) and len(x) == n for x in cache[split])
                   for split, n in (("train", train), ("test", test)))
    return valid


def _info(num_classes: int) -> DatasetInfo:
    """INFO with the class count of the folder (200 for the real data set)."""
    return DatasetInfo(INFO.name, num_classes, INFO.image_size, INFO.mean, INFO.std, INFO.augment)
