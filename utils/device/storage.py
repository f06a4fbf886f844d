"""Bytes of a model on a device: exact storage formulas for sparse weights, and a packer that writes exactly
those bytes (so a formula can be checked against a real file).

A *storage format* is ``{layout}_{values}``: layout ``dense``, ``bitmap``, ``csr16`` or ``csr32``; values
``fp32`` (4 bytes), ``fp16`` (2) or ``int8`` (1, plus one fp32 scale per tensor). The layout applies to the
prunable weights (every Conv2d/Linear weight); every other tensor the model needs at inference (biases,
BatchNorm weights, biases and running statistics) is stored densely in fp32. For a prunable weight with n
entries, z kept (mask 1), r rows (its first dimension) and c = n / r columns, v value bytes and s = 4 for
int8 (its scale) else 0:

| layout | bytes |
| --- | --- |
| ``dense`` | n·v + s |
| ``bitmap`` | ceil(n / 8) + z·v + s (one bit per entry, then the kept values) |
| ``csr16`` | 4·(r + 1) + z·(2 + v) + s (uint32 row pointers, uint16 column indices; needs c <= 65,536) |
| ``csr32`` | 4·(r + 1) + z·(4 + v) + s (uint32 row pointers and column indices) |

Worked example: a 3x3 conv 16 -> 16 (n = 2,304, r = 16, c = 144) at 90% sparsity (z = 230) in
``bitmap_fp16`` takes ceil(2,304 / 8) + 230·2 = 288 + 460 = 748 bytes, against 4,608 dense fp16 and 9,216
dense fp32; in ``csr16_fp16``, 4·17 + 230·(2 + 2) = 988 bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from utils.core.errors import UsageError
from utils.sparsity.masks import effective_weight, keep_mask, prunable_modules

VALUE_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
LAYOUTS = ("dense", "bitmap", "csr16", "csr32")
FORMATS = tuple(f"{layout}_{values}" for layout in LAYOUTS for values in VALUE_BYTES)


@dataclass(frozen=True)
class Format:
    """A parsed storage format."""

    layout: str
    values: str

    @classmethod
    def parse(cls, name: str) -> Format:
        if not isinstance(name, str) or name not in FORMATS:
            raise UsageError(f"unknown storage format '{name}'; choose one of: {', '.join(FORMATS)}")
        layout, values = name.split("_")
        return cls(layout, values)

    @property
    def value_bytes(self) -> int:
        return VALUE_BYTES[self.values]

    @property
    def scale_bytes(self) -> int:
        return 4 if self.values == "int8" else 0


def weight_bytes(n: int, z: int, rows: int, fmt: Format, name: str = "weight") -> int:
    """Bytes of one prunable weight with ``n`` entries, ``z`` kept, ``rows`` rows, in ``fmt`` (module table)."""
    v, s = fmt.value_bytes, fmt.scale_bytes
    if fmt.layout == "dense":
        return n * v + s
    if fmt.layout == "bitmap":
        return math.ceil(n / 8) + z * v + s
    if fmt.layout == "csr16" and n // rows > 65536:
        raise UsageError(f"{name} has {n // rows} columns: more than 16-bit column indices can address; use csr32")
    index = 2 if fmt.layout == "csr16" else 4
    return 4 * (rows + 1) + z * (index + v) + s


def dense_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every tensor inference needs besides the prunable weights: parameters and floating buffers that are
    not masks, ``*_orig`` or prunable weights."""
    prunable = {f"{name}.weight" for name in prunable_modules(model)}
    out = []
    for key, value in model.state_dict().items():
        plain = key.replace("_orig", "")
        if key.endswith("_mask") or plain in prunable or not value.is_floating_point():
            continue
        out.append(value)
    return out


def model_bytes(model: nn.Module, storage: str) -> int:
    """Bytes of ``model`` stored in ``storage`` (see the module docstring)."""
    fmt = Format.parse(storage)
    total = sum(4 * t.numel() for t in dense_tensors(model))
    for name, module in prunable_modules(model).items():
        mask = keep_mask(module)
        total += weight_bytes(mask.numel(), int(mask.sum()), mask.shape[0], fmt, name)
    return total


def _values(values: torch.Tensor, fmt: Format) -> bytes:
    """The value bytes of ``values`` (1-D) in ``fmt``'s dtype (int8: fp32 scale max|v|/127, then the ints)."""
    array = values.detach().float().cpu().numpy()
    if fmt.values == "fp32":
        return array.astype("<f4").tobytes()
    if fmt.values == "fp16":
        return array.astype("<f2").tobytes()
    scale = float(np.abs(array).max()) / 127 if array.size and np.abs(array).max() > 0 else 1.0
    return np.float32(scale).tobytes() + np.clip(np.round(array / scale), -127, 127).astype(np.int8).tobytes()


def pack_weight(weight: torch.Tensor, mask: torch.Tensor, fmt: Format) -> bytes:
    """One prunable weight in ``fmt``, byte for byte as ``weight_bytes`` counts it."""
    flat, keep = weight.reshape(-1), mask.reshape(-1).bool()
    if fmt.layout == "dense":
        return _values(flat, fmt)
    kept = flat[keep]
    if fmt.layout == "bitmap":
        bits = np.packbits(keep.cpu().numpy().astype(np.uint8), bitorder="little")
        return bits.tobytes() + _values(kept, fmt)
    matrix = keep.view(mask.shape[0], -1)
    pointers = np.concatenate([[0], np.cumsum(matrix.sum(1).cpu().numpy())]).astype("<u4")
    columns = matrix.nonzero()[:, 1].cpu().numpy().astype("<u2" if fmt.layout == "csr16" else "<u4")
    return pointers.tobytes() + columns.tobytes() + _values(kept, fmt)


def pack_model(model: nn.Module, storage: str) -> bytes:
    """The whole model in ``storage``: the dense tensors (fp32) in state-dict order, then every prunable
    weight (its effective values at the kept positions) in model order. ``len(...) == model_bytes(...)``."""
    fmt = Format.parse(storage)
    parts = [t.detach().float().cpu().numpy().astype("<f4").tobytes() for t in dense_tensors(model)]
    for name, module in prunable_modules(model).items():
        mask = keep_mask(module)
        weight_bytes(mask.numel(), int(mask.sum()), mask.shape[0], fmt, name)  # csr16 column check
        parts.append(pack_weight(effective_weight(module).detach(), mask, fmt))
    return b"".join(parts)


def bytes_per_kept_weight(storage: str) -> int:
    """What one more kept weight costs in ``storage`` (0 for dense layouts, which do not shrink)."""
    fmt = Format.parse(storage)
    return {"dense": 0, "bitmap": fmt.value_bytes, "csr16": 2 + fmt.value_bytes,
            "csr32": 4 + fmt.value_bytes}[fmt.layout]
