"""Device budgets: what a target device holds (bytes, MACs, milliseconds), what a model costs there, and
whether it fits, with the margin of each limit.

A profile is a small JSON file (``--device_profile``, examples in ``profiles/``) or flags, the flags
winning over the file::

    {"name": "mcu-256k", "max_bytes": 262144, "storage": "bitmap_int8"}

``max_bytes``: model storage in the profile's ``storage`` format (``utils.device.storage``); ``max_macs``:
multiply-accumulates per image; ``max_latency_ms``: one forward pass of ``latency_batch`` images measured on
the machine the command runs on. Costs of a model: bytes of its stored form; MACs of its kept weights
(weight-pruned: sum over layers of kept weights x output positions) or of its physical export (channel-
pruned); latency of the model as it runs (channel-pruned: its export; masked weights run at dense speed).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.core.errors import UsageError
from utils.core.fields import setting
from utils.core.values import int_up_to, positive_float
from utils.device.latency import latencies_ms
from utils.device.onnx import onnx_bytes
from utils.device.storage import FORMATS, Format, model_bytes
from utils.sparsity.granularity import Granularity
from utils.sparsity.macs import params_and_macs

LIMITS = {"max_bytes": "bytes", "max_macs": "macs", "max_latency_ms": "latency_ms"}
MAX_LATENCY_BATCH = 4096  # images in one timed forward pass (4,096 64x64 images: 200 MB of input)
UNIT_NAMES = {"bytes": "bytes", "macs": "MACs", "latency_ms": "ms"}  # cost keys as printed


@dataclass(frozen=True)
class DeviceProfile:
    """Limits of one device (None: no limit of that kind) and how it stores sparse weights."""

    name: str = "device"
    max_bytes: float | None = None
    max_macs: float | None = None
    max_latency_ms: float | None = None
    storage: str = "bitmap_fp32"
    latency_batch: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise UsageError(f"device profile name must be a string, not {self.name!r}")
        Format.parse(self.storage)
        for key in LIMITS:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not math.isfinite(value) or value <= 0):
                raise UsageError(f"device profile {self.name}: {key} must be a positive finite number, not {value!r}")
        if all(getattr(self, key) is None for key in LIMITS):
            raise UsageError(f"device profile {self.name} sets no limit: give max_bytes, max_macs or max_latency_ms")
        if (not isinstance(self.latency_batch, int) or isinstance(self.latency_batch, bool)
                or not 1 <= self.latency_batch <= MAX_LATENCY_BATCH):
            raise UsageError(f"device profile {self.name}: latency_batch must be a whole number from 1 to "
                             f"{MAX_LATENCY_BATCH:,} (images in one timed forward pass), not {self.latency_batch!r}")


def load_profile(path: str | Path) -> dict:
    """The entries of a profile file (a usage error when it is missing, not JSON or has unknown keys)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--device_profile {path} does not exist")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--device_profile {path} is not JSON ({exc})") from exc
    except RecursionError:
        raise UsageError(f"--device_profile {path} is nested too deeply to be a profile: give one JSON object of "
                         "limits (see profiles/)") from None
    if not isinstance(entries, dict):
        raise UsageError(f"--device_profile {path} must hold one JSON object")
    unknown = set(entries) - set(DeviceProfile.__dataclass_fields__)
    if unknown:
        raise UsageError(f"--device_profile {path}: unknown entries {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(DeviceProfile.__dataclass_fields__)}")
    return entries


@dataclass(frozen=True)
class BudgetSettings:
    """A device budget as the command line gives it: a profile file (``load_profile``) and entries that override
    the file's; ``profile()`` merges them."""

    device_profile: str | None = setting(None, "JSON file of a device's limits (see profiles/)")
    max_bytes: float | None = setting(None, "model storage limit, bytes", parse=positive_float)
    max_macs: float | None = setting(None, "MACs per image limit", parse=positive_float)
    max_latency_ms: float | None = setting(None, "latency limit of one forward pass, ms (measured here)",
                                           parse=positive_float)
    storage: str | None = setting(None, "how the device stores sparse weights (default: the profile's, else "
                                        "bitmap_fp32)", choices=FORMATS)
    latency_batch: int | None = setting(None, "images per timed forward pass", parse=int_up_to(MAX_LATENCY_BATCH))

    def profile(self) -> DeviceProfile | None:
        """The profile the file and the entries describe (entries win), or None when neither is given."""
        entries = load_profile(self.device_profile) if self.device_profile else {}
        given = {key: value for key, value in asdict(self).items() if key != "device_profile"}  # the profile's keys
        entries |= {key: value for key, value in given.items() if value is not None}
        if not entries and not self.device_profile:
            return None  # (an empty profile file is refused below: it sets no limit)
        entries.setdefault("name", Path(self.device_profile).stem if self.device_profile else "given by flags")
        return DeviceProfile(**entries)


def device_model(gran: Granularity, model: nn.Module, is_export: bool = False) -> tuple[nn.Module, bool]:
    """(what the device runs and stores, whether that is a physical export): the export of a channel model,
    ``model`` itself otherwise (``is_export``: it already is one)."""
    if is_export:
        return model, True
    exported = gran.export(model)
    return (exported[0], True) if exported is not None else (model, False)


def model_costs(profile: DeviceProfile, gran: Granularity, model: nn.Module, device: torch.device,
                is_export: bool = False) -> dict:
    """What ``model`` costs on the profile's device: bytes, MACs and (when the profile limits it) latency.
    ``is_export``: ``model`` is already a physical export (smaller shapes, no masks)."""
    runs, physical = device_model(gran, model, is_export)
    macs = params_and_macs(runs, gran.input_size)[1] if physical else gran.masked_macs(model)
    costs = {"bytes": model_bytes(runs, profile.storage), "macs": macs}
    if profile.max_latency_ms is not None:
        costs["latency_ms"] = latencies_ms({"model": runs.to(device)}, profile.latency_batch, gran.input_size,
                                           device)["model"]
    return costs


def onnx_fit(profile: DeviceProfile, gran: Granularity, model: nn.Module, is_export: bool = False) -> dict | None:
    """Whether the ONNX file of what the device runs (``device_model``; made in memory, ``utils.device.onnx``) fits
    the profile's byte limit: a ``check_fit`` row of its bytes. None when the profile limits no bytes. ONNX stores
    pruned weights as zeros, so a weight-pruned model's file is about its dense size: the packed formats are what a
    sparse-aware runtime would load."""
    if profile.max_bytes is None:
        return None
    size = len(onnx_bytes(device_model(gran, model, is_export)[0], gran.input_size))
    return limit_row(size, profile.max_bytes)


def limit_row(cost: float, limit: float) -> dict:
    """One limit's cost, limit, margin (limit - cost, and as % of the limit) and whether it fits."""
    return {"cost": cost, "limit": limit, "margin": limit - cost, "margin_pct": 100 * (limit - cost) / limit,
            "fits": cost <= limit}


def check_fit(profile: DeviceProfile, costs: dict) -> dict:
    """Per limit: the cost, the limit, the margin (limit - cost, and as % of the limit) and whether it fits;
    ``fits``: every limit holds."""
    limits = {}
    for key, cost_key in LIMITS.items():
        limit = getattr(profile, key)
        if limit is not None:
            limits[cost_key] = limit_row(costs[cost_key], limit)
    return {"profile": asdict(profile), "limits": limits, "fits": all(v["fits"] for v in limits.values())}
