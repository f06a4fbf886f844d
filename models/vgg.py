"""VGG-16 for CIFAR-10 (``vgg16``) and Tiny-ImageNet (``vgg16TinyImageNet``).

Thirteen biased 3x3 convs, each followed by BN and ReLU, with max-pools between stages; the head is a
single ``Linear(512, classes)`` named ``classifier`` (no hidden FC, no dropout), as in the original.
Prunable modules: ``features.{0,3,7,10,14,17,20,24,27,30,34,37,40}`` and ``classifier``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models import register_model

VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def _features(cfg: list[int | str], tail: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            in_ch = int(item)
    layers.append(tail)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-16; ``tail`` is AvgPool2d(1) for 32x32 inputs (a no-op) or AdaptiveAvgPool2d(1) for 64x64."""

    def __init__(self, num_classes: int = 10, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.features = _features(VGG16_CFG, tail if tail is not None else nn.AvgPool2d(1, 1))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("vgg16", num_classes=10, input_size=32)
def vgg16(num_classes: int) -> nn.Module:
    return VGG(num_classes)


@register_model("vgg16TinyImageNet", num_classes=200, input_size=64)
def vgg16_tiny_imagenet(num_classes: int) -> nn.Module:
    return VGG(num_classes, tail=nn.AdaptiveAvgPool2d(1))
