"""Seeds and devices: the run seed, role seeds and generators (e.g. the val split's), and --device resolved once."""
from __future__ import annotations

import random
import zlib

import numpy as np
import torch

from utils.core.errors import UsageError


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def role_seed(seed: int, role: str) -> int:
    """A seed derived from the run seed for one role ('val_split', 'data_order', 'policy', ...).

    Separate roles get independent streams, so e.g. changing the number of augmentation draws never
    shifts the validation split.
    """
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % 2**63


def make_generator(seed: int, role: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``role_seed(seed, role)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(role_seed(seed, role))
    return gen


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device once at start; CUDA without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device
