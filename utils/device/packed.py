"""Packed files: a model stored in one of ``utils.device.storage``'s formats, as a file a device loads, and back.

Layout (little-endian)::

    offset 0       8 bytes   magic b"\\x89BSPARSE"
    offset 8       uint32    H, the bytes of the JSON header
    offset 12      32 bytes  sha256 of everything after it (the header, then the payload)
    offset 44      H bytes   the header, UTF-8 JSON (below)
    offset 44 + H            the payload: exactly ``storage.pack_model(model, storage)``, whose length is the
                             formula ``storage.model_bytes(model, storage)``

so a file is the formula's bytes plus a header of 44 + H bytes. The header::

    {"format": "bridge-packed", "version": 1, "storage": "bitmap_int8",
     "model": "resnet20", "dataset": "cifar10", "num_classes": 10,
     "masked": true,          # the model has weight masks: read back as weight_orig + weight_mask
     "export_history": null,  # a physical export's Torch-Pruning history (it rebuilds the smaller shapes)
     "source": {"checkpoint": "runs/resnet20/oneshot/resnet20_0.9900.pth", "checksum": "3f0c..."},
     "meta": {...},           # the source's stage, sparsity, accuracies and the flags that chose its val images
     "columns": ["name", "shape", "dtype", "layout", "offset", "bytes", "kept"],
     "tensors": [["bn1.weight", [16], "fp32", "dense", 0, 64, null], ...,
                 ["conv1.weight", [16, 3, 3, 3], "int8", "bitmap", 11520, 103, 43], ...]}

``tensors`` lists the payload in order, one row of ``columns`` per tensor (rows, not objects: half the bytes),
offsets and bytes within the payload: every dense tensor (fp32) in state-dict order, then every prunable weight
in module order in the storage's layout (``kept``: its mask's ones; null for the dense tensors).
``checksum`` is the source checkpoint's ``content_fingerprint`` (the ``meta.checksum`` it records itself).

Round trip (``packed_file`` / ``write_packed``, then ``read_packed`` / ``load_packed``), per prunable weight w of
a tensor whose stored values have largest magnitude m: fp32 formats give the effective weights bit for bit (the
same logits); fp16 gives each value within max(2^-11·|w|, 2^-25) (round to nearest; a value beyond 65,504 is
refused when writing); int8 within scale / 2 = m / 254 (``q = round(w / scale)``, ``scale = m / 127`` per tensor). Dense
tensors (biases, BatchNorm) are fp32 in every format: exact. Pruned weights read back as exactly 0 and the masks
as the bitmap's / CSR indices' kept positions; a dense layout stores no mask, so its mask reads back as the
nonzero values (a kept weight stored as 0, e.g. one that int8 rounds to 0, reads as pruned: same outputs).
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from models import create_model, model_spec
from utils.core.errors import UsageError
from utils.core.files import atomic_write, plain
from utils.core.paths import check_path
from utils.device.storage import (
    FORMATS,
    LAYOUTS,
    VALUE_BYTES,
    Format,
    dense_entries,
    model_bytes,
    pack_model,
    unpack_weight,
    weight_bytes,
)
from utils.runtime.checkpoint import (
    LINEAGE_KEY,
    PACKED_MAGIC,
    Checkpoint,
    content_fingerprint,
    model_state,
    read_checkpoint,
)
from utils.runtime.stage import Stage, model_from_checkpoint, recorded_eval_flags
from utils.sparsity.masks import effective_weight, has_reparam, keep_mask, prunable_modules, set_masks
from utils.sparsity.physical import rebuild_exported

FORMAT = "bridge-packed"
VERSION = 1
SUFFIX = ".bsparse"
MAGIC = PACKED_MAGIC
COLUMNS = ("name", "shape", "dtype", "layout", "offset", "bytes", "kept")  # of each header ``tensors`` row
FIXED_BYTES = len(MAGIC) + 4 + 32  # magic, header length, sha256: the header's bytes besides its JSON


@dataclass(frozen=True)
class PackedInfo:
    """What a packed file's header says besides its tensors: the architecture and where the weights came from."""

    model: str
    dataset: str
    num_classes: int
    source: dict  # {"checkpoint": path, "checksum": the source's content_fingerprint}
    meta: dict = field(default_factory=dict)
    export_history: list | None = None  # a physical export's Torch-Pruning history


@dataclass
class Packed:
    """A packed file read back: its header, its tensors (float32; prunable weights zero where pruned, by
    ``{module}.weight``) and the keep-masks of the prunable weights (bool, shaped like each weight)."""

    header: dict
    tensors: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    file_bytes: int

    @property
    def header_bytes(self) -> int:
        """Bytes of the file before the payload (fixed part + JSON header)."""
        return self.file_bytes - self.payload_bytes

    @property
    def payload_bytes(self) -> int:
        """Bytes of the payload: the storage formula's count for this model."""
        return sum(row[COLUMNS.index("bytes")] for row in self.header["tensors"])


def packed_path(base: str | Path, storage: str) -> Path:
    """Default packed file of the model at ``base`` (a checkpoint or its export): ``{stem}_{storage}.bsparse``
    beside it."""
    base = Path(base)
    return base.with_name(f"{base.stem}_{storage}{SUFFIX}")


def is_packed(path: str | Path) -> bool:
    """True when the file at ``path`` begins with the packed magic."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


# ---- writing ------------------------------------------------------------------------------------------------------

SOURCE_META = ("stage", "sparsity", "channel_sparsity", "val_acc", "test_acc")  # carried from the checkpoint


def source_info(stage: Stage, ckpt: Checkpoint, path: str | Path, history: list | None = None,
                extra: dict | None = None) -> PackedInfo:
    """The header fields of a packed file of the checkpoint ``ckpt`` read from ``path`` by ``stage``:
    names, its path and ``content_fingerprint``, its recorded figures, the flags that chose its val and test
    images (``eval_args``, so that evaluate.py measures the file on the same images), its dense parent's
    fingerprint, ``history`` when what is packed is a physical export, and ``extra`` meta entries."""
    meta = {key: ckpt.meta[key] for key in SOURCE_META if ckpt.meta.get(key) is not None}
    meta.update(parent=str(path), eval_args=recorded_eval_flags(ckpt), **(extra or {}),
                **({LINEAGE_KEY: ckpt.lineage} if ckpt.lineage else {}))
    return PackedInfo(stage.model_name, stage.dataset, stage.num_classes,
                      {"checkpoint": str(path), "checksum": content_fingerprint(ckpt.state_dict)}, meta, history)


def tensor_table(model: nn.Module, fmt: Format) -> list[dict]:
    """The tensors of ``model`` in ``fmt`` as ``COLUMNS`` dicts: payload order, offsets and bytes (the formulas),
    ``kept`` None for the dense tensors."""
    rows, offset = [], 0
    for name, tensor in dense_entries(model).items():
        rows.append({"name": name, "shape": list(tensor.shape), "dtype": "fp32", "layout": "dense",
                     "bytes": 4 * tensor.numel(), "kept": None})
    for name, module in prunable_modules(model).items():
        mask = keep_mask(module)
        kept = int(mask.sum())
        rows.append({"name": f"{name}.weight", "shape": list(mask.shape), "dtype": fmt.values, "layout": fmt.layout,
                     "kept": kept, "bytes": weight_bytes(mask.numel(), kept, mask.shape[0], fmt, name)})
    for row in rows:
        row["offset"], offset = offset, offset + row["bytes"]
    return rows


def packed_file(model: nn.Module, storage: str, info: PackedInfo) -> bytes:
    """The whole packed file of ``model`` in ``storage`` (module docstring); its payload is ``pack_model``'s bytes,
    as many as ``model_bytes`` counts."""
    fmt = Format.parse(storage)
    payload = pack_model(model, storage)
    if len(payload) != model_bytes(model, storage):  # the packer and the formulas are one definition
        raise RuntimeError(f"packed {len(payload)} bytes where the {storage} formula counts "
                           f"{model_bytes(model, storage)}")
    header = {"format": FORMAT, "version": VERSION, "storage": storage, "model": info.model,
              "dataset": info.dataset, "num_classes": info.num_classes,
              "masked": any(has_reparam(m) for m in prunable_modules(model).values()),
              "export_history": info.export_history, "source": info.source, "meta": info.meta, "columns": COLUMNS,
              "tensors": [[row[column] for column in COLUMNS] for row in tensor_table(model, fmt)]}
    text = json.dumps(plain(header), separators=(",", ":")).encode()
    digest = hashlib.sha256(text)
    digest.update(payload)
    return MAGIC + struct.pack("<I", len(text)) + digest.digest() + text + payload


def write_packed(path: str | Path, data: bytes) -> None:
    """Write the packed file ``data`` (``packed_file``) to ``path`` atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(data))


# ---- reading ------------------------------------------------------------------------------------------------------

def _damaged(name: str, reason: str) -> UsageError:
    return UsageError(f"{name} is damaged or not a packed file ({reason}); write it again with export.py --format")


def _header(data: bytes, name: str) -> tuple[dict, int]:
    """(the header, the payload's offset) of the file ``data``, checked whole against its sha256."""
    if data[:len(MAGIC)] != MAGIC:
        raise _damaged(name, "it does not begin with the packed magic")
    size = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])[0] if len(data) >= FIXED_BYTES else None
    if size is None or FIXED_BYTES + size > len(data):
        raise _damaged(name, f"truncated at {len(data):,} bytes")
    if hashlib.sha256(data[FIXED_BYTES:]).digest() != data[len(MAGIC) + 4:FIXED_BYTES]:
        raise _damaged(name, "its checksum does not match its content: truncated or altered")
    try:
        header = json.loads(data[FIXED_BYTES:FIXED_BYTES + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(name, f"its header is not JSON: {exc}") from None
    return header, FIXED_BYTES + size


def _rows(header: dict) -> list[dict] | None:
    """The header's ``tensors`` as ``COLUMNS`` dicts, or None when the table is not well formed (each row: a
    name, a shape of sizes, a known dtype and layout, counts for offset, bytes and kept, or null kept)."""
    def count(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    table = header.get("tensors")
    if list(header.get("columns") or ()) != list(COLUMNS) or not isinstance(table, list):
        return None
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in table if isinstance(row, list) and len(row) == len(COLUMNS)]
    if len(rows) != len(table) or not all(
            isinstance(row["name"], str) and isinstance(row["shape"], list) and all(map(count, row["shape"]))
            and row["dtype"] in VALUE_BYTES and row["layout"] in LAYOUTS and count(row["offset"])
            and count(row["bytes"]) and (row["kept"] is None or count(row["kept"])) for row in rows):
        return None
    return rows


def _check_header(header: object, payload: int, name: str) -> tuple[Format, list[dict]]:
    """(the storage format, the tensor rows) of a parsed ``header``, after checking its format, version, names
    and that its tensors tile the ``payload`` bytes exactly."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _damaged(name, "its header does not say bridge-packed")
    if header.get("version") != VERSION:
        raise UsageError(f"{name}: packed format version {header.get('version')} is not supported (expected "
                         f"{VERSION}); write it again with this version's export.py --format")
    if header.get("storage") not in FORMATS:
        raise _damaged(name, f"unknown storage format {header.get('storage')!r}")
    rows = _rows(header)
    if not (isinstance(header.get("model"), str) and isinstance(header.get("num_classes"), int) and rows):
        raise _damaged(name, "its header lacks the model, class count or a well-formed tensor table")
    offsets = [row["offset"] for row in rows]
    if offsets != [0] + [row["offset"] + row["bytes"] for row in rows[:-1]] or sum(r["bytes"] for r in rows) != payload:
        raise _damaged(name, f"its tensors do not tile its {payload:,}-byte payload")
    return Format.parse(header["storage"]), rows


def _tensor(row: dict, chunk: memoryview, fmt: Format) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(values float32, keep-mask or None for a dense tensor) of one header row's payload ``chunk``; a prunable
    weight's row (one with ``kept``) is in ``fmt``, every other tensor fp32."""
    shape = tuple(row["shape"])
    if row["kept"] is None:
        if len(chunk) != 4 * math.prod(shape) or (row["layout"], row["dtype"]) != ("dense", "fp32"):
            raise ValueError(f"not {math.prod(shape)} dense fp32 values")
        return torch.from_numpy(np.frombuffer(chunk, "<f4").astype(np.float32)).view(shape), None
    if (row["layout"], row["dtype"]) != (fmt.layout, fmt.values):
        raise ValueError(f"stored as {row['layout']}_{row['dtype']} in a {fmt.layout}_{fmt.values} file")
    values, mask = unpack_weight(chunk, shape, fmt)
    if int(mask.sum()) != row["kept"] and fmt.layout != "dense":
        raise ValueError(f"{int(mask.sum())} kept entries, the header says {row['kept']}")
    return values, mask


def parse_packed(data: bytes, name: str = "packed file") -> Packed:
    """The ``Packed`` of the file bytes ``data``; a truncated, altered or foreign file is one ``UsageError``
    (``name`` says which file)."""
    header, start = _header(data, name)
    fmt, rows = _check_header(header, len(data) - start, name)
    payload, tensors, masks = memoryview(data)[start:], {}, {}
    for row in rows:
        try:
            tensors[row["name"]], mask = _tensor(row, payload[row["offset"]:row["offset"] + row["bytes"]], fmt)
        except (ValueError, KeyError, TypeError) as exc:
            raise _damaged(name, f"{row['name']}: {exc}") from None
        if mask is not None:
            masks[row["name"]] = mask
    return Packed(header, tensors, masks, len(data))


def read_packed(path: str | Path) -> Packed:
    """Read and check the packed file at ``path`` (see ``parse_packed``)."""
    path = check_path(path, "packed file")
    if not path.is_file():
        raise UsageError(f"packed file {path} does not exist")
    return parse_packed(path.read_bytes(), str(path))


# ---- models from packed files -------------------------------------------------------------------------------------

def _template(model_name: str, num_classes: int, history: list | None) -> nn.Module:
    """A fresh CPU model of the file's shapes: the registry's, or a physical export's from its history."""
    if history is None:
        return create_model(model_name, num_classes)
    try:
        return rebuild_exported(model_name, num_classes, model_spec(model_name).input_size, history)
    except Exception as exc:  # Torch-Pruning raises many types on a history that does not fit the model
        raise UsageError(f"the export history does not fit model '{model_name}' ({type(exc).__name__})") from exc


def packed_model(packed: Packed, name: str = "packed file") -> nn.Module:
    """The CPU model ``packed`` holds, in eval mode: its tensors loaded and, when the file says ``masked``, the
    masks it recovers as ``weight_orig`` + ``weight_mask`` (pruned weights exactly 0)."""
    header = packed.header
    model = _template(header["model"], header["num_classes"], header.get("export_history")).eval()
    state = model.state_dict()
    wrong = sorted(set(packed.tensors) - set(state)) or [k for k, v in packed.tensors.items()
                                                         if v.shape != state[k].shape]
    missing = sorted(k for k, v in state.items() if v.is_floating_point() and k not in packed.tensors)
    if wrong or missing:
        raise UsageError(f"{name} does not fit model '{header['model']}' ({(wrong or missing)[0]}): damaged?")
    model.load_state_dict({**state, **packed.tensors})
    if header.get("masked"):
        set_masks(model, {key[: -len(".weight")]: mask for key, mask in packed.masks.items()})
    return model


def load_packed(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The model of the packed file at ``path`` on ``device``, eval mode, ready to run."""
    return packed_model(read_packed(path), str(path)).to(device)


def packed_checkpoint(packed: Packed, name: str = "packed file") -> Checkpoint:
    """``packed`` as a ``Checkpoint`` (source ``bridge-packed``): the rebuilt model's state dict (masked:
    ``weight_orig`` + bool ``weight_mask``), names, the source's meta plus ``storage`` and ``source``, and a
    physical export's history."""
    header = packed.header
    history = header.get("export_history")
    return Checkpoint(model_state(packed_model(packed, name)), FORMAT, header["model"], header.get("dataset"),
                      header["num_classes"], None,
                      {**(header.get("meta") or {}), "storage": header["storage"], "source": header["source"]},
                      {"export": {"history": history}} if history is not None else {})


def read_model_file(path: str | Path, *, trust_pickle: bool = False) -> Checkpoint:
    """Any checkpoint ``read_checkpoint`` reads, or a packed file (``packed_checkpoint``: one that begins with
    the packed magic, or any ``.bsparse`` file, so that a damaged one says so)."""
    if check_path(path, "checkpoint").is_file() and (Path(path).suffix == SUFFIX or is_packed(path)):
        return packed_checkpoint(read_packed(path), str(path))
    return read_checkpoint(path, trust_pickle=trust_pickle)


def packed_command(path: str | Path, ckpt: Checkpoint, storage: str) -> str:
    """What writes the packed file, in ``storage``, of the checkpoint ``ckpt`` read from ``path`` (for a packed
    file: itself when it is in ``storage``, else the command on the checkpoint it was packed from)."""
    if ckpt.source == FORMAT and ckpt.meta.get("storage") == storage:
        return f"{path} itself"
    source = ckpt.meta["source"]["checkpoint"] if ckpt.source == FORMAT else path
    return f"python export.py --ckpt {source} --format {storage}"


def stage_model(stage: Stage, path: str | Path, ckpt: Checkpoint) -> nn.Module:
    """The model at ``path`` on the stage's device, in its memory layout: a packed file's (``ckpt``: what
    ``read_model_file`` read) or, for any other checkpoint, ``Stage.load_model`` (physical exports accepted)."""
    if ckpt.source != FORMAT:
        return stage.load_model(path, exported=True)
    return model_from_checkpoint(ckpt, path, stage.granularity, stage.device, stage.channels_last)


# ---- the round-trip check -----------------------------------------------------------------------------------------

def value_bound(weight: torch.Tensor, storage: str) -> torch.Tensor:
    """The largest |stored - original| each entry of ``weight`` (effective values, any shape) may have in
    ``storage`` (module docstring), shaped like it: 0 for fp32; max(2^-11·|w|, 2^-25) for fp16; for int8
    max|w| / 254 plus 2^-20·max|w| of fp32 rounding (the scale and the product q·scale are fp32)."""
    values = Format.parse(storage).values
    if values == "fp32":
        return torch.zeros_like(weight)
    if values == "fp16":
        return torch.clamp(weight.abs() * 2.0**-11, min=2.0**-25)
    largest = float(weight.abs().max()) if weight.numel() else 0.0
    return torch.full_like(weight, largest / 254 + largest * 2.0**-20)


def check_round_trip(model: nn.Module, data: bytes, input_size: int) -> float:
    """Read ``data`` (the packed file of ``model``) back and check it: every prunable weight within
    ``value_bound``, pruned ones 0, the masks ``model``'s (where the file stores no mask, a dense layout or an
    unmasked model: its nonzero stored values); returns the max |logit difference| on 4 random images
    [4, 3, input_size, input_size]. A ``UsageError`` (write nothing) when a check fails."""
    packed = parse_packed(data)
    back = packed_model(packed)  # with autograd on: a physical export's shapes are rebuilt by tracing
    with torch.no_grad():
        for (name, module), restored in zip(prunable_modules(model).items(), prunable_modules(back).values(),
                                            strict=True):
            _check_weight(name, module, restored, packed.header["storage"])
        images = torch.randn(4, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
        training = model.training
        reference = model.eval()(images.to(next(model.parameters()).device)).float().cpu()
        model.train(training)
        return float((back(images) - reference).abs().max())


def _check_weight(name: str, module: nn.Module, restored: nn.Module, storage: str) -> None:
    """A ``UsageError`` unless the prunable layer ``restored`` (read back) holds ``module``'s weight as
    ``check_round_trip`` says."""
    weight, mask = effective_weight(module).detach().float().cpu(), keep_mask(module).cpu()
    got, got_mask = effective_weight(restored), keep_mask(restored)
    layout_masks = has_reparam(restored) and Format.parse(storage).layout != "dense"
    within = bool(((got - weight).abs() <= value_bound(weight, storage)).all())
    if not (torch.equal(got_mask, mask if layout_masks else mask & (got != 0)) and within
            and not bool(((got != 0) & ~got_mask).any())):
        raise UsageError(f"the packed file's {name} does not read back as written ({storage}): not written; "
                         "please report this model")
