"""Device-resident data loading: a split lives as one tensor on the training device.

Shuffling, random crop with zero padding, horizontal flip, optional colour jitter and normalisation run
batched on that device, so an epoch costs a few tensor ops per batch instead of per-sample Python
transforms. All randomness comes from the loader's own seeded ``torch.Generator``.

Storage trick: each RGB pixel is packed with a zero fourth byte into one int32, in a zero-padded
[N, H + 2p, W + 2p] grid. Picking the batch's images, cropping and mirroring them is then a single
gather of H*W int32 values per image (4x faster on a CPU than indexing three separate bytes), and the
unpacked bytes come out channels-last, which is the layout the convolutions want.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augment:
    """Training augmentation: crop with ``padding`` px, flip with p=0.5, optional colour jitter.

    ``jitter`` = (brightness, contrast, saturation, hue) strengths as in torchvision's ColorJitter.
    """

    padding: int = 4
    flip: bool = True
    jitter: tuple[float, float, float, float] | None = None


def pack_pixels(images: torch.Tensor, padding: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> int32 [N, H + 2p, W + 2p], one RGB0 pixel per element, zeros in the border."""
    n, _, height, width = images.shape
    rgba = torch.zeros(n, height + 2 * padding, width + 2 * padding, 4, dtype=torch.uint8, device=images.device)
    rgba[:, padding:padding + height, padding:padding + width, :3] = images.permute(0, 2, 3, 1)
    return rgba.view(torch.int32).squeeze(-1)


def unpack_pixels(packed: torch.Tensor) -> torch.Tensor:
    """int32 [B, H, W] from ``pack_pixels`` -> uint8 [B, H, W, 3] (channels last)."""
    return packed.contiguous().view(torch.uint8).view(*packed.shape, 4)[..., :3]


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
                 generator: torch.Generator | None = None, channels_last: bool = True) -> None:
        self.padding = augment.padding if augment is not None else 0
        self.height, self.width = images.shape[2:]
        self.pixels = pack_pixels(images.to(device), self.padding)  # int32 [N, H + 2p, W + 2p]
        self.labels = labels.to(device)  # int64 [N]
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self._scale = [1 / (255 * s) for s in std]  # byte -> normalised value, per channel
        self._shift = [m / s for m, s in zip(mean, std, strict=True)]
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator if generator is not None else torch.Generator(device=device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.device = device
        self.shards = 1  # > 1: one rank's shard of a data-parallel split (see ``shard``)
        self.max_batches: int | None = None  # batches per iteration (None: one pass over the split; see ``steps``)
        self._rows = torch.arange(self.height, device=device)
        self._cols = torch.arange(self.width, device=device)

    def __len__(self) -> int:
        """Batches one iteration yields: one pass over the split, or ``steps``' count."""
        return self.max_batches if self.max_batches is not None else math.ceil(len(self.labels) / self.batch_size)

    def shard(self, rank: int, shards: int, generator: torch.Generator) -> DeviceLoader:
        """This rank's share for data-parallel training: images ``rank, rank + shards, ...`` (every shard
        the same size, so up to ``shards - 1`` images are left out), batches of ``batch_size // shards``
        (the global batch stays ``batch_size``), order and augmentation from ``generator``."""
        per_shard = len(self.labels) // shards
        view = copy.copy(self)
        view.pixels = self.pixels[rank::shards][:per_shard].contiguous()
        view.labels = self.labels[rank::shards][:per_shard].contiguous()
        view.batch_size = self.batch_size // shards
        view.generator = generator
        view.shards = shards
        return view

    def steps(self, batches: int) -> DeviceLoader:
        """A view (same tensors, no copy) whose iteration yields exactly ``batches`` batches (>= 1): fewer than one
        pass, or several passes, each reshuffled from the generator (a step-budgeted finetune: one "epoch" of it
        is ``batches`` optimizer steps)."""
        if batches < 1:
            raise ValueError(f"a steps view needs at least one batch, not {batches}")
        view = copy.copy(self)
        view.max_batches = batches
        return view

    def first(self, n: int) -> DeviceLoader:
        """A view of the first ``n`` images (all when the split has fewer), in the same order: the same images
        whenever it is asked for (e.g. the val images a search's rewards are measured on)."""
        view = copy.copy(self)
        view.pixels, view.labels = self.pixels[:n], self.labels[:n]
        return view

    def with_generator(self, generator: torch.Generator) -> DeviceLoader:
        """A view of this loader (same tensors, no copy) that draws order and augmentation from ``generator``."""
        view = copy.copy(self)
        view.generator = generator
        return view

    @property
    def num_samples(self) -> int:
        """Number of images in the split."""
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        left = len(self) if len(self.labels) else 0
        while left > 0:  # one pass unless ``steps`` asked for another count
            for batch in self._one_pass():
                yield batch
                left -= 1
                if left == 0:
                    return

    def _one_pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image once: shuffled by the generator (training) or in order."""
        n = len(self.labels)
        order = (torch.randperm(n, generator=self.generator, device=self.device) if self.shuffle
                 else torch.arange(n, device=self.device))
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield self.batch(idx), self.labels[idx]

    def _pixel_index(self, idx: torch.Tensor) -> torch.Tensor:
        """Flat positions into ``pixels`` of each output pixel: int64 [B, H, W] (crop and flip included)."""
        batch = len(idx)
        rows = self._rows.expand(batch, -1) + self.padding
        cols = self._cols.expand(batch, -1) + self.padding
        if self.augment is not None and self.augment.padding:
            shift = torch.randint(-self.padding, self.padding + 1, (2, batch, 1), generator=self.generator,
                                  device=self.device)
            rows, cols = rows + shift[0], cols + shift[1]
        if self.augment is not None and self.augment.flip:
            flip = torch.rand(batch, 1, generator=self.generator, device=self.device) < 0.5
            cols = torch.where(flip, cols.flip(1), cols)
        _, padded_h, padded_w = self.pixels.shape
        return (idx.view(-1, 1, 1) * padded_h + rows[:, :, None]) * padded_w + cols[:, None, :]

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` (int64 [B]) augmented (when training) and normalised: float32 [B, 3, H, W]."""
        pixels = unpack_pixels(torch.take(self.pixels, self._pixel_index(idx)))  # uint8 [B, H, W, 3]
        if self.augment is not None and self.augment.jitter is not None:
            x = color_jitter(pixels.float().div_(255).permute(0, 3, 1, 2), self.augment.jitter, self.generator)
            x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        else:
            x = self._normalise(pixels)
        return x.contiguous(memory_format=self.memory_format)

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> (x / 255 - mean) / std as float32 [B, 3, H, W] with channels-last strides.

        One scalar multiply-add per channel: on a CPU this is ~3x faster than broadcasting a [3] vector
        over the innermost (size-3) dimension.
        """
        out = torch.empty(pixels.shape, dtype=torch.float32, device=pixels.device)
        for c in range(pixels.shape[-1]):
            torch.sub(pixels[..., c] * self._scale[c], self._shift[c], out=out[..., c])
        return out.permute(0, 3, 1, 2)
