"""Device-resident data loading: a split lives as one uint8 tensor on the training device.

Shuffling, random crop with zero padding, horizontal flip, optional colour jitter and normalisation run
batched on that device, so an epoch costs a few tensor ops per batch instead of per-sample Python
transforms. All randomness comes from the loader's own seeded ``torch.Generator``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Training augmentation: crop with ``padding`` px, flip with p=0.5, optional colour jitter.

    ``jitter`` = (brightness, contrast, saturation, hue) strengths as in torchvision's ColorJitter.
    """

    padding: int = 4
    flip: bool = True
    jitter: tuple[float, float, float, float] | None = None


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch. x: [B, C, H, W] (any dtype) -> same shape and dtype."""
    batch, channels, height, width = x.shape
    padded = F.pad(x, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=gen, device=x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # [B, H]
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # [B, W]
    b = torch.arange(batch, device=x.device)[:, None, None, None]
    c = torch.arange(channels, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5. x: [B, C, H, W] -> same."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def color_jitter(x: torch.Tensor, strengths: tuple[float, float, float, float], gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast, saturation and hue jitter of x: [B, 3, H, W] floats in [0, 1].

    Factors are drawn uniformly from [1 - s, 1 + s] (hue: a shift in [-s, s] of a full turn) and applied
    in that fixed order. Hue is rotated in YIQ space, a linear stand-in for torchvision's HSV shift.
    """
    b_s, c_s, s_s, h_s = strengths
    u = torch.rand(4, x.shape[0], 1, 1, 1, generator=gen, device=x.device) * 2 - 1  # [-1, 1]
    gray_w = _RGB_TO_YIQ[0].to(x.device).view(1, 3, 1, 1)
    x = x * (1 + b_s * u[0])
    mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * (1 + c_s * u[1]) + mean
    gray = (x * gray_w).sum(1, keepdim=True)
    x = (x - gray) * (1 + s_s * u[2]) + gray
    angle = h_s * u[3].view(-1) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    to_yiq = _RGB_TO_YIQ.to(x.device)
    mix = torch.linalg.inv(to_yiq) @ rot @ to_yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", mix, x).clamp_(0, 1)


class DeviceLoader:
    """Batches of (images [B, 3, H, W] float32 normalised, labels [B] int64) from tensors on ``device``.

    ``shuffle=False, augment=None`` is the evaluation pipeline: fixed order, test transforms only.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 shuffle: bool = False, augment: Augment | None = None,
                 generator: torch.Generator | None = None,
                 channels_last: bool = True) -> None:
        self.images = images.to(device)  # uint8 [N, 3, H, W]
        self.labels = labels.to(device)  # int64 [N]
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator if generator is not None else torch.Generator(device=device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.device) if self.shuffle
                 else torch.arange(n, device=self.device))
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.transform(self.images[idx]), self.labels[idx]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> augmented (when training), normalised float32 in ``memory_format``."""
        if self.augment is not None:
            if self.augment.padding:
                x = random_crop(x, self.augment.padding, self.generator)
            if self.augment.flip:
                x = random_flip(x, self.generator)
        x = x.float().div_(255)
        if self.augment is not None and self.augment.jitter is not None:
            x = color_jitter(x, self.augment.jitter, self.generator)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)
