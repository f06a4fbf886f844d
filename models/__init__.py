"""Model registry: ``create_model(name)`` builds any architecture of the original BRIDGE zoo.

Module names and parameter counts match the original repository exactly, so state dicts
move between the two code bases. Each entry records the input resolution it was designed for, which
lets scripts refuse a model/dataset pair that cannot work (e.g. ``resnet20`` on 64x64 images).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.core.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture."""

    name: str
    builder: Callable[[int], nn.Module]  # num_classes -> model
    num_classes: int  # classes of the original model
    input_size: int  # square input resolution in pixels (32 CIFAR, 64 Tiny-ImageNet)


_REGISTRY: Registry[ModelSpec] = Registry("model", aliases={
    "VGGTinyImageNet": "vgg16TinyImageNet",
    "EfficientNetB0TinyImageNet": "effnetTinyImageNet",
})


def register_model(name: str, *, num_classes: int, input_size: int):
    """Decorator adding ``builder(num_classes) -> nn.Module`` to the registry under ``name``."""

    def wrap(builder: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        _REGISTRY.add(name, ModelSpec(name, builder, num_classes, input_size))
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return _REGISTRY.names()


def model_spec(name: str) -> ModelSpec:
    """The spec for ``name`` (aliases accepted); unknown names raise ``UsageError`` listing the valid ones."""
    return _REGISTRY.get(name)


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (default: the original's class count)."""
    spec = model_spec(name)
    return spec.builder(num_classes or spec.num_classes)


def scratch_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A fresh model ``name`` built only to read its layout (layer names, shapes, output sizes): its random init
    is drawn under a forked RNG, so the global generator is where it was. A run that builds one lazily (its first
    save) and a run resumed after that point then draw the same dropout masks and data order."""
    with torch.random.fork_rng(devices=[]):
        return create_model(name, num_classes)


# Importing the architecture modules fills the registry.
from models import alexnet, efficientnet, resnet, vgg  # noqa: E402,F401
