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
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.budget import capped_largest_remainder
from utils.channel_cost import ChannelMacs, live_counts
from utils.cli import positive_float, positive_int
from utils.cost import latencies_ms
from utils.errors import UsageError
from utils.export import params_and_macs
from utils.granularity import Granularity
from utils.storage import FORMATS, Format, bytes_per_kept_weight, model_bytes

LIMITS = {"max_bytes": "bytes", "max_macs": "macs", "max_latency_ms": "latency_ms"}


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
    entries.setdefault("name", Path(args.device_profile).stem if args.device_profile else "device")
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


def kept_weight_limit(profile: DeviceProfile, gran: Granularity, model: nn.Module) -> int:
    """The most kept weights a model of this architecture may have and still fit ``profile.max_bytes`` in
    its storage format: ``floor((max_bytes - fixed) / bytes per kept weight)``, ``fixed`` being what the
    format stores whatever the sparsity (the dense tensors, bitmaps or row pointers). A usage error where
    the limit cannot bind: no byte limit, a dense layout (its size does not shrink), or a limit that even
    one weight per layer exceeds."""
    if profile.max_bytes is None:
        raise UsageError(f"device profile {profile.name} has no max_bytes: weight regrowth to a device limit counts "
                         "bytes of kept weights")
    per = bytes_per_kept_weight(profile.storage)
    masks = gran.masks(model)
    kept = sum(int(m.sum()) for m in masks.values())
    fixed = model_bytes(model, profile.storage) - per * kept
    if per == 0:
        raise UsageError(f"storage {profile.storage} keeps every weight ({fixed:,} bytes whatever the sparsity): "
                         "pruning cannot bring a model to the limit; use a bitmap or csr layout")
    if fixed + per * len(masks) > profile.max_bytes:
        raise UsageError(f"no model can meet device profile {profile.name}: {gran.model_name} needs "
                         f"{fixed + per * len(masks):,} bytes in {profile.storage} even with one weight per layer "
                         f"(limit {profile.max_bytes:,.0f})")
    return min(gran.total(model), math.floor((profile.max_bytes - fixed) / per))


class MacBudget:
    """Channel regrowth counted in MACs of the export, up to ``limit`` MACs per image, from the live channel
    counts of ``sparse`` (see ``utils.channel_cost``: the cost is quadratic in the counts, so a channel's
    price at the start is an estimate and ``fit`` makes an allocation fit exactly)."""

    def __init__(self, gran: Granularity, sparse: nn.Module, limit: float) -> None:
        self.model, self.limit = ChannelMacs(gran), limit
        self.start = live_counts(gran, sparse)
        self.start_macs = self.model.macs(self.start)

    def unit_costs(self, units: list[str]) -> list[int]:
        """MACs one regrown channel of each unit adds at the start (rounded up, at least 1)."""
        marginal = self.model.marginal(self.start)
        return [max(1, math.ceil(marginal[u])) for u in units]

    def added(self, allocation: dict[str, int]) -> int:
        """MACs per image that regrowing ``allocation`` ({unit: channels}) adds, exactly."""
        return self.model.macs({u: n + allocation.get(u, 0) for u, n in self.start.items()}) - self.start_macs

    def fit(self, allocation: dict[str, int]) -> dict[str, int]:
        """``allocation`` trimmed (costliest channels first) until the regrown model is within the limit."""
        return self.model.fit_allocation(self.start, allocation, self.limit)


@dataclass
class DeviceBudget:
    """What fills a device from a sparse start: ``need`` weights (their bytes are the same everywhere) or,
    for channels, ``need`` MACs of the export spent through ``macs``; ``limit`` names the limit filled."""

    need: int
    limit: str  # "bytes" | "macs"
    macs: MacBudget | None = None

    def room(self, capacities: dict[str, int]) -> int:
        """What regrowing every masked entry of ``capacities`` ({unit: entries}) would add, in ``need``'s unit."""
        return self.macs.added(capacities) if self.macs is not None else sum(capacities.values())

    def budget(self, capacities: dict[str, int]) -> int:
        """The search's K over units with ``capacities``: ``need``, or less where they cannot hold it."""
        return min(self.need, self.room(capacities))


def device_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module) -> DeviceBudget:
    """The regrowth that fills the device from ``sparse``: weights up to ``max_bytes`` (the kept-weight
    limit minus what ``sparse`` keeps), channels up to ``max_macs`` (the MAC headroom of its export). A start
    that already fills the device, or a profile without the limit the granularity counts, is a usage error."""
    if gran.name == "channel":
        return _channel_budget(profile, gran, sparse)
    limit = kept_weight_limit(profile, gran, sparse)
    kept = gran.total(sparse) - sum(gran.capacity(sparse).values())
    if limit <= kept:
        raise UsageError(f"the start already keeps {kept:,} weights and device profile {profile.name} holds at most "
                         f"{limit:,} in {profile.storage}: nothing to regrow; prune past the limit first")
    return DeviceBudget(limit - kept, "bytes")


def _channel_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module) -> DeviceBudget:
    if profile.max_macs is None:
        raise UsageError(f"device profile {profile.name} has no max_macs: channel regrowth to a device limit counts "
                         "MACs of the export (bytes and latency are checked and reported, not filled)")
    macs = MacBudget(gran, sparse, profile.max_macs)
    headroom = math.floor(profile.max_macs - macs.start_macs)
    if headroom <= 0:
        raise UsageError(f"the start already costs {macs.start_macs:,} MACs and device profile {profile.name} allows "
                         f"{profile.max_macs:,.0f}: nothing to regrow; prune past the limit first")
    return DeviceBudget(headroom, "macs", macs)


@dataclass(frozen=True)
class DeviceTargets:
    """Where a device's limit binds on one-shot pruning from the dense model, at one granularity.

    ``at_limit``: the least sparse one-shot target that fits (the densest model the device holds);
    ``start``: the target pruned ``past_limit`` times past it (weights: that many times fewer kept weights
    than the limit; channels: that many times fewer MACs), from which a search regrows up to the limit;
    ``limit``: the limit being filled (``bytes`` | ``macs``) and ``describe``: the limit in words.
    """

    at_limit: float
    start: float
    limit: str
    describe: str


def device_targets(profile: DeviceProfile, gran: Granularity, dense: nn.Module, past_limit: float) -> DeviceTargets:
    """The one-shot sparsities of ``profile``'s limit and of the regrowth start, for ``dense`` (reparametrised,
    no entry masked). Channels follow ``prune_structure.py``'s default one-shot split (--scope local: every
    group loses the same share), whose MACs depend on the counts only, not on the weights."""
    total = gran.total(dense)
    if gran.name == "channel":
        if profile.max_macs is None:
            raise UsageError(f"device profile {profile.name} has no max_macs: channel regrowth to a device limit "
                             "counts MACs of the export")
        at, start = (_local_removal(gran, profile.max_macs / factor) for factor in (1.0, past_limit))
        words = f"at most {profile.max_macs:,.0f} MACs per image"
        return DeviceTargets(at / total, start / total, "macs", words)
    limit = kept_weight_limit(profile, gran, dense)
    if limit >= total:
        raise UsageError(f"device profile {profile.name}: the dense {gran.model_name} fits already ({total:,} "
                         "weights); nothing to prune")
    words = (f"at most {profile.max_bytes:,.0f} bytes in {profile.storage} -> at most {limit:,} kept weights")
    return DeviceTargets((total - limit) / total, (total - math.floor(limit / past_limit)) / total, "bytes", words)


def local_counts(gran: Granularity, removed: int) -> dict[str, int]:
    """{group: live channels} after a local one-shot prune of ``removed`` channels from the dense model
    (``utils.channel_pruners.select_local``'s split)."""
    sizes = {g.root: g.size for g in gran.groups}
    cut = capped_largest_remainder({k: float(v) for k, v in sizes.items()}, {k: v - 1 for k, v in sizes.items()},
                                   removed)
    return {k: sizes[k] - cut[k] for k in sizes}


def _local_removal(gran: Granularity, macs_limit: float) -> int:
    """The fewest channels a local one-shot prune removes to bring the export within ``macs_limit`` MACs
    (bisection: the cost falls as more channels go); a usage error when even the thinnest model is over."""
    cost = ChannelMacs(gran)
    low, high = 0, sum(g.size - 1 for g in gran.groups)
    if cost.macs(local_counts(gran, high)) > macs_limit:
        raise UsageError(f"no model can meet {macs_limit:,.0f} MACs: {gran.model_name} with one channel per group "
                         f"costs {cost.macs(local_counts(gran, high)):,}")
    if cost.macs(local_counts(gran, 0)) <= macs_limit:
        raise UsageError(f"the dense {gran.model_name} fits {macs_limit:,.0f} MACs already "
                         f"({cost.macs(local_counts(gran, 0)):,}); nothing to prune")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if cost.macs(local_counts(gran, mid)) <= macs_limit else (mid, high)
    return high
