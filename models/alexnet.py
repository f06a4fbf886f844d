"""AlexNet adapted to 32x32 inputs (``alexnet``): five 3x3 convs, resolution 32 -> 16 -> 8 -> 4 -> 2.

Module names follow the original: ``features.{0,3,6,8,10}`` and ``classifier.1`` (after a dropout).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models import register_model


class AlexNet(nn.Module):
    """CIFAR AlexNet with 2,261,834 parameters for 10 classes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 2 * 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


register_model("alexnet", num_classes=10, input_size=32)(AlexNet)
