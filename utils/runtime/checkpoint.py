"""One checkpoint writer and one reader for every stage.

Written format (``format: bridge-ckpt``, version 1)::

    {"format", "version", "model", "dataset", "num_classes",
     "state_dict",      # plain keys, or X.weight_orig + X.weight_mask with bool masks
     "channel_masks",   # None, or {conv name: bool [C_out]} for structured runs
     "meta",            # stage, sparsity, val_acc, test_acc, parent, dense_fingerprint, args, created, git,
                        # torch, ...
     ...,               # optional extra entries, e.g. "train_state" for resumable runs
     "sealed", "content_checksum"}  # a checksum of everything above (``utils.core.files.seal``)

The reader also takes the original repository's formats: ``{'net', 'acc', 'epoch'}``,
``{'model_state_dict', ...}``, a raw state dict (plain or reparam with float masks) and, only with
``trust_pickle=True``, a pickled ``nn.Module`` (unpickling runs code from the file) or a structured
checkpoint ``{'model': <slimmed module>, 'out_index_map' | 'index_map': ...}`` (source ``original-structured``,
brought to full shape with channel masks by ``utils.runtime.upstream.inflate`` when a stage loads it).
Writes are atomic: a temp file in the same folder, then ``os.replace``. The reader verifies a file whole (tensors,
meta and extra entries such as an optimizer's state) against its ``content_checksum``; files written before it
existed are verified by the older checksum of their tensors (``meta.checksum``).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import pickle
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from utils.core.errors import UsageError
from utils.core.files import SEAL_CHECKSUM, SEALED, atomic_save, check_seal, git_revision, plain, seal
from utils.core.paths import check_path
from utils.sparsity.masks import has_param_mask, prunable_modules

FORMAT = "bridge-ckpt"
VERSION = 1
PACKED_MAGIC = b"\x89BSPARSE"  # the first bytes of a packed file (``utils/device/packed.py``), not a checkpoint
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile


@dataclass
class Checkpoint:
    """A checkpoint read from disk, whatever format it was written in."""

    state_dict: dict[str, torch.Tensor]
    source: str  # bridge-ckpt | original-pretrain | original-model-state-dict | raw-state-dict | pickled-module
    model: str | None = None
    dataset: str | None = None
    num_classes: int | None = None
    channel_masks: dict[str, torch.Tensor] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_masks(self) -> bool:
        """True when the state dict carries masks (weight or channel)."""
        return any(key.endswith("weight_mask") for key in self.state_dict)

    @property
    def granularity(self) -> str | None:
        """``channel`` (channel masks), ``weight`` (weight masks only) or None (no masks: dense)."""
        if self.channel_masks is not None or self.source == "original-structured":
            return "channel"
        return "weight" if self.has_masks else None

    @property
    def lineage(self) -> str | None:
        """Fingerprint of the dense model this checkpoint descends from: the one its meta records, else (a
        dense checkpoint) its own content; None when unknown (a sparse file from another tool or version)."""
        recorded = self.meta.get(LINEAGE_KEY)
        dense = self.granularity is None and self.export_history is None and self.source in DENSE_SOURCES
        return recorded or (content_fingerprint(self.state_dict) if dense else None)

    @property
    def export_history(self) -> list | None:
        """The Torch-Pruning history of a physically exported model (None for full-shape models)."""
        return (self.extra.get("export") or {}).get("history")


LINEAGE_KEY = "dense_fingerprint"  # meta entry: content_fingerprint of the dense model a checkpoint came from
CHECKSUM_KEY = "checksum"  # meta entry: content_fingerprint of the file's own state dict, written with it
# formats whose mask-free files are dense models (a raw state dict may be a sparse one with merged masks)
DENSE_SOURCES = (FORMAT, "original-pretrain")


def content_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """The first 16 hex digits of a sha256 over a state dict's keys and raw tensor bytes (keys sorted): two
    files hold the same weights exactly when their fingerprints agree (~0.1 s for VGG-16's 15M values)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous().reshape(-1)
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, with masks stored as bool."""
    return {k: (v.detach().bool() if k.endswith("_mask") else v.detach()).cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model: nn.Module, *, model_name: str, dataset: str, num_classes: int,
                    meta: dict[str, Any], channel_masks: dict[str, torch.Tensor] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` in the bridge-ckpt format; ``meta`` gets creation time, git commit, torch version and the
    checksum of the state dict (``CHECKSUM_KEY``: ``content_fingerprint``); the whole file (``extra`` included) is
    sealed with a checksum of all of its content (``seal``); ``read_checkpoint`` verifies both."""
    state = model_state(model)
    meta = {**meta, "created": dt.datetime.now().isoformat(timespec="seconds"), "git": git_revision(),
            "torch": torch.__version__, CHECKSUM_KEY: content_fingerprint(state)}
    obj = {"format": FORMAT, "version": VERSION, "model": model_name, "dataset": dataset,
           "num_classes": num_classes, "state_dict": state,
           "channel_masks": None if channel_masks is None else {k: v.bool().cpu() for k, v in channel_masks.items()},
           "meta": plain(meta)}
    atomic_save(seal({**obj, **(extra or {})}), path)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        called = re.search(r"GLOBAL ([\w.]+) whose module [\w.]+ is blocked", str(exc))
        if called:  # os.system, subprocess, eval, ...: never loaded, --trust_pickle or not
            raise UsageError(f"{path} holds a pickled call to {called.group(1)}: loading it would run that code, so "
                             "it is refused (--trust_pickle loads pickled models, never such calls)") from None
        if "Unsupported global" not in str(exc):
            raise _damaged(path, exc) from exc
        if not trust_pickle:
            raise UsageError(f"{path} holds pickled Python objects (e.g. a whole nn.Module); loading it runs code "
                             "from the file: pass --trust_pickle if you trust it") from exc
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise _damaged(path, exc) from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _damaged(path, exc) from exc


def _damaged(path: Path, exc: Exception) -> UsageError:
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("Check the doc")]
    reason = textwrap.shorten(lines[-1].strip(), 120, placeholder=" ...") if lines else type(exc).__name__
    return UsageError(f"cannot read checkpoint {path}: damaged or not a torch checkpoint ({reason})")


def _index_map(value: Any, path: Path) -> dict[str, list[int]]:
    """The original's ``{conv name: [dense channel index, ...]}``; anything else is a ``UsageError``."""
    try:
        return {str(k): [int(i) for i in v] for k, v in value.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise UsageError(f"{path}: its index map is not {{layer: [channel indices]}}") from exc


def _tensors(value: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    """``value`` when it is a ``{name: tensor}`` dict; anything else is a damaged file (a ``UsageError``)."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in value.items()):
        raise UsageError(f"{path}: its '{what}' is not a {{name: tensor}} dict (a damaged or hand-edited checkpoint)")
    return value


def _meta(value: Any, path: Path) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{path}: its 'meta' is a {type(value).__name__}, not a dict (a damaged or hand-edited "
                         "checkpoint)")
    return value


def _verify(ckpt: Checkpoint, path: Path, sealed: bool) -> None:
    """The file's tensors are the ones written (for a file not ``sealed`` whole: the checksum of its tensors, when
    it records one), its class count is its classifier's (the last 2-D weight), every value is finite and every
    mask holds only 0 and 1; a ``UsageError`` naming what is wrong otherwise."""
    recorded = ckpt.meta.get(CHECKSUM_KEY)
    if not sealed and recorded is not None and content_fingerprint(ckpt.state_dict) != recorded:
        raise UsageError(f"{path} is damaged: its tensors do not match the checksum written with them ({recorded}); "
                         "use an intact copy or rerun the stage that wrote it")
    classifiers = [v for k, v in ckpt.state_dict.items() if k.endswith(("weight", "weight_orig")) and v.dim() == 2]
    if ckpt.num_classes is not None and classifiers and classifiers[-1].shape[0] != ckpt.num_classes:
        raise UsageError(f"{path} records {ckpt.num_classes} classes but its classifier has "
                         f"{classifiers[-1].shape[0]} outputs (a damaged or hand-edited checkpoint)")
    for key, tensor in ckpt.state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UsageError(f"{path}: {key} holds NaN or infinite values (a diverged run or a damaged file)")
        if key.endswith("_mask") and tensor.dtype != torch.bool and bool(((tensor != 0) & (tensor != 1)).any()):
            raise UsageError(f"{path}: mask {key} holds values other than 0 and 1; a mask keeps or prunes, so "
                             "binarise it first (e.g. mask != 0)")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_of(value: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if isinstance(value, nn.Module):
        return value.state_dict()
    if _is_state_dict(value):
        return value
    raise UsageError(f"{path}: '{what}' is neither a state dict nor a model")


def _check_header(obj: dict, path: Path) -> None:
    """A bridge-ckpt's model and data set are names (str) and its class count a positive int; a ``UsageError``
    naming the field otherwise (an unsealed file edited by hand)."""
    for key, kind in (("model", str), ("dataset", str), ("num_classes", int)):
        value = obj.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is int and value < 1)):
            raise UsageError(f"{path} is damaged or hand-edited: its '{key}' is {value!r}, not a "
                             f"{'positive integer' if kind is int else 'name'}; use an intact copy")


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Checkpoint:
    """Read any supported checkpoint format and verify it (``check_seal``: the checksum of the whole file;
    ``_verify``: finite values, binary masks, ...); an unknown layout or a damaged file is a ``UsageError`` naming
    what was found."""
    path = Path(path)
    check_path(path, "checkpoint")
    if path.is_dir():
        raise UsageError(f"checkpoint {path} is a folder; pass the .pth file inside it")
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    _refuse_packed(path)
    obj = _torch_load(path, trust_pickle)
    sealed = check_seal(obj, path)
    ckpt = _parse(obj, path)
    _verify(ckpt, path, sealed)
    return ckpt


def _refuse_packed(path: Path) -> None:
    """A ``UsageError`` for a packed file (``export.py --format``): its weights are stored for a device, and the
    stages that train or prune need the checkpoint it was packed from."""
    with open(path, "rb") as f:
        if f.read(len(PACKED_MAGIC)) == PACKED_MAGIC:
            raise UsageError(f"{path} is a packed file (export.py --format): evaluate.py reads it; other stages take "
                             "the checkpoint it was packed from (its header's source)")


def _parse(obj: Any, path: Path) -> Checkpoint:
    """The ``Checkpoint`` of a loaded file's object (every supported layout)."""
    if isinstance(obj, nn.Module):
        return Checkpoint(obj.state_dict(), "pickled-module")
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: unrecognised checkpoint of type {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise UsageError(f"{path}: bridge-ckpt version {obj.get('version')} is not supported (expected {VERSION})")
        known = {"format", "version", "model", "dataset", "num_classes", "state_dict", "channel_masks", "meta",
                 SEALED, SEAL_CHECKSUM}
        _check_header(obj, path)
        return Checkpoint(_tensors(obj.get("state_dict"), path, "state_dict"), FORMAT, obj.get("model"),
                          obj.get("dataset"), obj.get("num_classes"),
                          None if obj.get("channel_masks") is None else _tensors(obj["channel_masks"], path,
                                                                                 "channel_masks"),
                          _meta(obj.get("meta"), path), {k: v for k, v in obj.items() if k not in known})
    if "net" in obj:
        meta = {"val_acc": obj.get("acc"), "epoch": obj.get("epoch")}
        return Checkpoint(_state_of(obj["net"], path, "net"), "original-pretrain", meta=plain(meta))
    if "model_state_dict" in obj:
        meta = {k: obj[k] for k in ("epoch", "reward", "accuracy", "allocation") if k in obj}
        return Checkpoint(_state_of(obj["model_state_dict"], path, "model_state_dict"),
                          "original-model-state-dict", meta=plain(meta))
    if "index_map" in obj or "out_index_map" in obj:  # the original's structured format
        kind = "out_index_map" if "out_index_map" in obj else "index_map"
        return Checkpoint(_state_of(obj.get("model"), path, "model"), "original-structured",
                          extra={"index_map": _index_map(obj[kind], path), "map_kind": kind})
    if _is_state_dict(obj):
        return Checkpoint(obj, "raw-state-dict")
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise UsageError(f"{path}: unrecognised checkpoint layout (top-level keys: {keys})")


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def plain_shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``state`` under the key a model without masks gives it: wrapper prefixes
    (DataParallel, torch.compile) stripped, ``X_orig`` named ``X``, masks left out (e.g. to find which
    architecture a file that records no model name holds)."""
    state = _strip_wrappers(state)
    shapes = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            key = key[: -len("_orig")]
        shapes[key] = tuple(value.shape)
    return shapes


def _match_reparam(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Align mask bookkeeping: every ``X.{param}_mask`` in the state (conv/Linear weights and biases, BN
    gamma/beta) gets its reparametrisation in the model; dense weights fill masked prunable modules."""
    modules = dict(model.named_modules())
    for key in state:
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            name, param = key[: -len("_mask")].rsplit(".", 1)
            module = modules.get(name)
            if module is not None and hasattr(module, param) and not has_param_mask(module, param):
                prune.identity(module, param)
    state = dict(state)
    for name, module in prunable_modules(model).items():
        if hasattr(module, "weight_orig") and f"{name}.weight" in state and f"{name}.weight_orig" not in state:
            weight = state.pop(f"{name}.weight")
            state[f"{name}.weight_orig"] = weight
            state[f"{name}.weight_mask"] = weight != 0  # merged masks come back; dense stays all ones
    return state


def check_model(ckpt: Checkpoint, model_name: str, path: str | Path = "checkpoint") -> None:
    """A ``UsageError`` when ``ckpt`` records a model other than ``model_name``."""
    if ckpt.model is not None and ckpt.model != model_name:
        raise UsageError(f"{path} holds a '{ckpt.model}' model, not '{model_name}': pass --m_name {ckpt.model}")


def load_weights(model: nn.Module, ckpt: Checkpoint, model_name: str, path: str | Path = "checkpoint") -> None:
    """Load ``ckpt`` into ``model`` (built as ``model_name``), adding mask reparametrisation when needed.

    A checkpoint that names another model, or whose keys/shapes do not fit, is a ``UsageError``.
    """
    check_model(ckpt, model_name, path)
    state = _match_reparam(model, _strip_wrappers(ckpt.state_dict))
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        details = "; ".join(f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                            (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong))
                            if keys)
        raise UsageError(f"{path} does not fit model '{model_name}': {details}; is it from another model or data set?")
    model.load_state_dict(state)
