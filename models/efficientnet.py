"""EfficientNet-B0 for CIFAR-10 (``effnet``) and Tiny-ImageNet (``effnetTinyImageNet``).

Blocks are expand 1x1 -> depthwise kxk -> squeeze-excitation (two biased 1x1 convs ``se.se1``/``se.se2``)
-> project 1x1, with a skip when stride is 1 and widths match. As in the original, block 0 has
``expand_ratio=1`` yet still creates ``layers.0.conv1``/``bn1``, which forward never uses (they get
no gradient). Drop-connect grows linearly to 0.2 with block index; dropout 0.2 before the head.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register_model

# (expansion, out channels, blocks, kernel, stride) per stage
B0_STAGES = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 2), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
             (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]
DROP_CONNECT = 0.2
DROPOUT = 0.2


def _drop_connect(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Drop whole samples of a residual branch with probability ``rate`` (stochastic depth)."""
    keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(1.0 - rate)
    return x * keep / (1.0 - rate)


class SE(nn.Module):
    """Squeeze-excitation with swish: global pool -> 1x1 conv -> swish -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, se_channels: int) -> None:
        super().__init__()
        self.se1 = nn.Conv2d(channels, se_channels, 1, bias=True)
        self.se2 = nn.Conv2d(se_channels, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.silu(self.se1(F.adaptive_avg_pool2d(x, 1)))
        return x * self.se2(gate).sigmoid()


class Block(nn.Module):
    """MBConv block with SE ratio 0.25 of the block's input width."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        self.expand_ratio = expand
        self.drop_rate = drop_rate
        channels = expand * in_ch
        self.conv1 = nn.Conv2d(in_ch, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel, stride=stride, padding=kernel // 2,
                               groups=channels, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.se = SE(channels, int(in_ch * 0.25))
        self.conv3 = nn.Conv2d(channels, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand_ratio == 1 else F.silu(self.bn1(self.conv1(x)))
        out = self.se(F.silu(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out))
        if not self.has_skip:
            return out
        if self.training and self.drop_rate > 0:
            out = _drop_connect(out, self.drop_rate)
        return out + x


class EfficientNet(nn.Module):
    """EfficientNet-B0 with a stride-1 3x3 stem (3 -> 32) and ``Linear(320, classes)`` named ``linear``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.layers = self._make_layers(32)
        self.linear = nn.Linear(B0_STAGES[-1][1], num_classes)

    @staticmethod
    def _make_layers(in_ch: int) -> nn.Sequential:
        total = sum(stage[2] for stage in B0_STAGES)
        blocks = []
        for expand, out_ch, count, kernel, stride in B0_STAGES:
            for i in range(count):
                rate = DROP_CONNECT * len(blocks) / total
                blocks.append(Block(in_ch, out_ch, kernel, stride if i == 0 else 1, expand, rate))
                in_ch = out_ch
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.silu(self.bn1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(F.dropout(out, p=DROPOUT, training=self.training))


register_model("effnet", num_classes=10, input_size=32)(EfficientNet)
register_model("effnetTinyImageNet", num_classes=200, input_size=64)(EfficientNet)
