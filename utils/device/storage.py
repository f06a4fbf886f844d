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

``unpack_weight`` reads one packed weight back (values and keep-mask): exact for fp32; fp16 rounds each value
to nearest, |error| <= max(2^-11·|w|, 2^-25); int8 stores ``q = round(w / scale)`` with ``scale = max|w| / 127``
over the tensor's stored values, |error| <= scale / 2 = max|w| / 254 per weight. ``utils/device/packed.py``
writes whole models as files in these formats.
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
FP16_MAX = 65504.0  # the largest finite fp16 value: a weight beyond it has no fp16 form
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


def dense_entries(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor inference needs besides the prunable weights, by state-dict name in state-dict order:
    parameters and floating buffers, a masked one (``X_orig * X_mask``, e.g. a channel mask's BN gamma) merged
    under its plain name ``X``. Integer buffers (BatchNorm's ``num_batches_tracked``) are left out."""
    prunable = {f"{name}.weight" for name in prunable_modules(model)}
    state, out = model.state_dict(), {}
    for key, value in state.items():
        plain = key.removesuffix("_orig")
        if key.endswith("_mask") or plain in prunable or not value.is_floating_point():
            continue
        mask = state.get(f"{plain}_mask") if plain != key else None
        out[plain] = value if mask is None else value * mask
    return out


def dense_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``dense_entries``, in order."""
    return list(dense_entries(model).values())


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


def _read_values(data: memoryview, count: int, fmt: Format) -> np.ndarray:
    """``count`` values (float32 [count]) from ``data``, which holds exactly what ``_values`` wrote for them."""
    if len(data) != count * fmt.value_bytes + fmt.scale_bytes:
        raise ValueError(f"{len(data)} value bytes for {count} {fmt.values} values")
    if fmt.values != "int8":
        return np.frombuffer(data, "<f4" if fmt.values == "fp32" else "<f2").astype(np.float32)
    scale = np.frombuffer(data[:4], "<f4")[0]
    return np.frombuffer(data[4:], np.int8).astype(np.float32) * scale


def _sparse_positions(data: memoryview, shape: tuple[int, ...], fmt: Format) -> tuple[np.ndarray, int]:
    """(flat indices of the kept entries, ascending [z]; bytes their index structure takes) of a bitmap or
    CSR weight whose packed bytes begin ``data``."""
    n, rows = math.prod(shape), shape[0]
    if fmt.layout == "bitmap":
        size = math.ceil(n / 8)
        bits = np.unpackbits(np.frombuffer(data[:size], np.uint8), bitorder="little")[:n]
        if len(bits) != n:
            raise ValueError(f"the bitmap has {len(bits)} of {n} bits")
        return np.flatnonzero(bits), size
    columns_of, index = n // rows, 2 if fmt.layout == "csr16" else 4
    pointers = np.frombuffer(data[:4 * (rows + 1)], "<u4").astype(np.int64)
    counts = np.diff(pointers)
    if len(pointers) != rows + 1 or pointers[0] != 0 or (counts < 0).any() or (counts > columns_of).any():
        raise ValueError("row pointers are not a CSR row index")
    kept = int(pointers[-1])
    end = 4 * (rows + 1) + kept * index
    columns = np.frombuffer(data[4 * (rows + 1):end], "<u2" if index == 2 else "<u4").astype(np.int64)
    if len(columns) != kept or (columns >= columns_of).any():
        raise ValueError("column indices run past the data or the row")
    flat = np.repeat(np.arange(rows), counts) * columns_of + columns
    if kept > 1 and (np.diff(flat) <= 0).any():  # CSR lists each row's columns once, ascending
        raise ValueError("column indices repeat or are out of order")
    return flat, end


def unpack_weight(data: bytes | memoryview, shape: tuple[int, ...], fmt: Format) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``pack_weight``: (values float32, zero where pruned; keep-mask bool), both ``shape``, from
    exactly the bytes ``pack_weight`` wrote (a ``ValueError`` when they are not a weight of that shape). A dense
    layout stores no mask: its mask is the nonzero values (a kept weight stored as 0 reads as pruned; the
    outputs are the same). Value error bounds: see the module docstring."""
    data, n = memoryview(data), math.prod(shape)
    if fmt.layout == "dense":
        values = _read_values(data, n, fmt)
        return torch.from_numpy(values).view(shape), torch.from_numpy(values != 0).view(shape)
    flat, start = _sparse_positions(data, shape, fmt)
    values, mask = np.zeros(n, np.float32), np.zeros(n, bool)
    values[flat], mask[flat] = _read_values(data[start:], len(flat), fmt), True
    return torch.from_numpy(values).view(shape), torch.from_numpy(mask).view(shape)


def _fp16_range(weight: torch.Tensor, fmt: Format, name: str) -> None:
    """A ``UsageError`` when ``fmt`` stores fp16 values and ``weight`` has one beyond fp16's range."""
    largest = float(weight.detach().abs().max()) if weight.numel() else 0.0
    if fmt.values == "fp16" and largest > FP16_MAX:
        raise UsageError(f"{name} holds a value of magnitude {largest:.3g}, beyond fp16's range ({FP16_MAX:,.0f}): "
                         f"store it as {fmt.layout}_fp32 or {fmt.layout}_int8")


def pack_model(model: nn.Module, storage: str) -> bytes:
    """The whole model in ``storage``: the dense tensors (fp32) in state-dict order, then every prunable
    weight (its effective values at the kept positions) in model order. ``len(...) == model_bytes(...)``."""
    fmt = Format.parse(storage)
    parts = [t.detach().float().cpu().numpy().astype("<f4").tobytes() for t in dense_tensors(model)]
    for name, module in prunable_modules(model).items():
        mask, weight = keep_mask(module), effective_weight(module).detach()
        weight_bytes(mask.numel(), int(mask.sum()), mask.shape[0], fmt, name)  # csr16 column check
        _fp16_range(weight, fmt, name)
        parts.append(pack_weight(weight, mask, fmt))
    return b"".join(parts)


def bytes_per_kept_weight(storage: str) -> int:
    """What one more kept weight costs in ``storage`` (0 for dense layouts, which do not shrink)."""
    fmt = Format.parse(storage)
    return {"dense": 0, "bitmap": fmt.value_bytes, "csr16": 2 + fmt.value_bytes,
            "csr32": 4 + fmt.value_bytes}[fmt.layout]
