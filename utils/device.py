"""Device budgets: what a target device holds (bytes, MACs, milliseconds), what a model costs there, and
whether it fits, with the margin of each limit.

A profile is a small JSON file (``--device_profile``, examples in ``profiles/``) or flags, the flags
winning over the file::

    {"name": "mcu-256k", "max_bytes": 262144, "storage": "bitmap_int8"}

``max_bytes``: model storage in the profile's ``storage`` format (``utils.storage``); ``max_macs``:
multiply-accumulates per image; ``max_latency_ms``: one forward pass of ``latency_batch`` images measured on
the machine the command runs on. Costs of a model: bytes of its stored form; MACs of its kept weights
(weight-pruned: sum over layers of kept weights x output positions) or of its physical export (channel-
pruned); latency of the model as it runs (channel-pruned: its export; masked weights run at dense speed).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.cli import positive_float, positive_int
from utils.cost import latencies_ms
from utils.errors import UsageError
from utils.export import params_and_macs
from utils.granularity import Granularity
from utils.storage import FORMATS, Format, model_bytes

LIMITS = {"max_bytes": "bytes", "max_macs": "macs", "max_latency_ms": "latency_ms"}
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
        Format.parse(self.storage)
        for key in LIMITS:
            value = getattr(self, key)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
                raise UsageError(f"device profile {self.name}: {key} must be a positive number, not {value!r}")
        if all(getattr(self, key) is None for key in LIMITS):
            raise UsageError(f"device profile {self.name} sets no limit: give max_bytes, max_macs or max_latency_ms")
        if not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise UsageError(f"device profile {self.name}: latency_batch must be a positive integer")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device_profile and the flags that set or override its entries."""
    group = parser.add_argument_group("device budget")
    group.add_argument("--device_profile", default=None, help="JSON file of a device's limits (see profiles/)")
    group.add_argument("--max_bytes", type=positive_float, default=None, help="model storage limit, bytes")
    group.add_argument("--max_macs", type=positive_float, default=None, help="MACs per image limit")
    group.add_argument("--max_latency_ms", type=positive_float, default=None,
                       help="latency limit of one forward pass, ms (measured here)")
    group.add_argument("--storage", choices=FORMATS, default=None,
                       help="how the device stores sparse weights (default: the profile's, else bitmap_fp32)")
    group.add_argument("--latency_batch", type=positive_int, default=None, help="images per timed forward pass")


def load_profile(path: str | Path) -> dict:
    """The entries of a profile file (a usage error when it is missing, not JSON or has unknown keys)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--device_profile {path} does not exist")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--device_profile {path} is not JSON ({exc})") from exc
    if not isinstance(entries, dict):
        raise UsageError(f"--device_profile {path} must hold one JSON object")
    unknown = set(entries) - set(DeviceProfile.__dataclass_fields__)
    if unknown:
        raise UsageError(f"--device_profile {path}: unknown entries {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(DeviceProfile.__dataclass_fields__)}")
    return entries


def profile_from_args(args: argparse.Namespace) -> DeviceProfile | None:
    """The profile the flags describe (file entries overridden by flags), or None when none is given."""
    entries = load_profile(args.device_profile) if args.device_profile else {}
    for key in (*LIMITS, "storage", "latency_batch"):
        if getattr(args, key, None) is not None:
            entries[key] = getattr(args, key)
    if not entries:
        return None
    entries.setdefault("name", Path(args.device_profile).stem if args.device_profile else "given by flags")
    return DeviceProfile(**entries)


def sparse_macs(gran: Granularity, model: nn.Module) -> int:
    """MACs per image of the kept weights: sum over layers of kept weights x output positions."""
    costs, masks = gran.unit_costs(), gran.masks(model)
    return int(sum(int(masks[unit].sum()) * costs[unit].macs for unit in masks))


def model_costs(profile: DeviceProfile, gran: Granularity, model: nn.Module, device: torch.device,
                is_export: bool = False) -> dict:
    """What ``model`` costs on the profile's device: bytes, MACs and (when the profile limits it) latency.
    ``is_export``: ``model`` is already a physical export (smaller shapes, no masks)."""
    exported = (model, []) if is_export else gran.export(model)
    runs = exported[0] if exported is not None else model  # what the device would run and store
    if exported is not None:
        macs = params_and_macs(runs, gran.input_size)[1]
    elif gran.name == "weight":
        macs = sparse_macs(gran, model)
    else:
        macs = params_and_macs(model, gran.input_size)[1]
    costs = {"bytes": model_bytes(runs, profile.storage), "macs": macs}
    if profile.max_latency_ms is not None:
        costs["latency_ms"] = latencies_ms({"model": runs.to(device)}, profile.latency_batch, gran.input_size,
                                           device)["model"]
    return costs


def fit(profile: DeviceProfile, costs: dict) -> dict:
    """Per limit: the cost, the limit, the margin (limit - cost, and as % of the limit) and whether it fits;
    ``fits``: every limit holds."""
    limits = {}
    for key, cost_key in LIMITS.items():
        limit = getattr(profile, key)
        if limit is not None:
            value = costs[cost_key]
            limits[cost_key] = {"cost": value, "limit": limit, "margin": limit - value,
                                "margin_pct": 100 * (limit - value) / limit, "fits": value <= limit}
    return {"profile": asdict(profile), "limits": limits, "fits": all(v["fits"] for v in limits.values())}
