"""A procedural 10-class 32x32 RGB data set that needs no files (demos, tests, CPU quick starts).

Each class is an oriented sinusoidal grating (orientation ``k * 18°``, one of two frequencies) with
its own colour tint, shown through a Gaussian window at a random position. Samples jitter orientation,
frequency, phase and colour, carry a weaker grating of another class as a distractor, and get pixel
noise, so neighbouring classes overlap: a small CNN learns it well above chance in a few epochs but not
perfectly, and pruning visibly costs accuracy. The data are fixed (like a real data set): train and
test come from fixed seeds; the run seed only picks the val split.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from data import DatasetInfo, ImageSet, RawDataset, register_dataset
from data.loader import Augment

NUM_CLASSES = 10
SIZE = 32
N_TRAIN, N_TEST = 10_000, 2_000
TRAIN_SEED, TEST_SEED, CLASS_SEED = 1, 2, 0
INFO = DatasetInfo("synthetic", NUM_CLASSES, SIZE, mean=(0.5, 0.5, 0.5), std=(0.19, 0.19, 0.19),
                   augment=Augment(padding=4, flip=False))


def _class_table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class orientation [C] (radians), spatial frequency [C] (cycles/px) and tint [C, 3]."""
    gen = torch.Generator().manual_seed(CLASS_SEED)
    orientation = torch.arange(NUM_CLASSES) * math.pi / NUM_CLASSES
    frequency = torch.tensor([0.09, 0.14])[torch.arange(NUM_CLASSES) % 2]
    tint = 0.75 + 0.25 * torch.rand(NUM_CLASSES, 3, generator=gen)
    return orientation, frequency, tint


def _gratings(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Jittered class gratings for ``labels`` [N] -> [N, 3, SIZE, SIZE] in [-1, 1] (tinted)."""
    orientation, frequency, tint = _class_table()
    n = len(labels)
    theta = orientation[labels] + 0.2 * torch.randn(n, generator=gen)
    freq = frequency[labels] * (1 + 0.15 * torch.randn(n, generator=gen))
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    coords = torch.arange(SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx * torch.cos(theta).view(-1, 1, 1) + yy * torch.sin(theta).view(-1, 1, 1)
    wave = torch.cos(2 * math.pi * freq.view(-1, 1, 1) * proj + phase.view(-1, 1, 1))
    colour = tint[labels] * (1 + 0.2 * torch.randn(n, 3, generator=gen))
    return wave[:, None] * colour[:, :, None, None]


def _window(n: int, gen: torch.Generator) -> torch.Tensor:
    """Gaussian windows at random centres with random widths -> [N, 1, SIZE, SIZE] in (0, 1]."""
    centre = 8 + 16 * torch.rand(n, 2, generator=gen)
    width = 6 + 6 * torch.rand(n, generator=gen)
    coords = torch.arange(SIZE, dtype=torch.float32)
    dy = (coords.view(1, -1, 1) - centre[:, 0].view(-1, 1, 1)) ** 2
    dx = (coords.view(1, 1, -1) - centre[:, 1].view(-1, 1, 1)) ** 2
    return torch.exp(-(dx + dy) / (2 * width.view(-1, 1, 1) ** 2))[:, None]


def make_images(n: int, seed: int) -> ImageSet:
    """``n`` images uint8 [n, 3, 32, 32] with labels int64 [n], fully determined by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    other = (labels + torch.randint(1, NUM_CLASSES, (n,), generator=gen)) % NUM_CLASSES
    signal = _gratings(labels, gen) * _window(n, gen)
    distractor = 0.8 * torch.rand(n, 1, 1, 1, generator=gen) * _gratings(other, gen) * _window(n, gen)
    noise = 0.55 * torch.randn(n, 3, SIZE, SIZE, generator=gen)
    images = 0.5 + 0.3 * (signal + distractor + noise)
    return ImageSet((images.clamp(0, 1) * 255).round().to(torch.uint8), labels)


@register_dataset("synthetic")
def load_synthetic(data_dir: Path, download: bool = True) -> RawDataset:
    """The synthetic data set (``data_dir`` and ``download`` are ignored); generated once per process."""
    return _generate()


@functools.lru_cache(maxsize=1)
def _generate() -> RawDataset:
    return RawDataset(INFO, make_images(N_TRAIN, TRAIN_SEED), make_images(N_TEST, TEST_SEED))
