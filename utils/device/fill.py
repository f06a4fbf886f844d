"""Regrowth up to a device's limit ("reverse regrowth"): what fills the device from a sparse start, and
where on a one-shot pruning curve the limit binds.

Weights fill ``max_bytes``: a kept weight costs the same bytes in every layer of a storage format, so the
budget counts weights (``kept_weight_limit``). Channels fill ``max_macs``: the MACs of the export are an
exact quadratic of the groups' live counts (``utils.sparsity.macs``), so the search prices each group's
channel at the start and trims every allocation until it is within the limit (``MacBudget``). Other limits
of a profile (latency, and bytes for channels) are checked and reported, not filled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.nn as nn

from utils.core.errors import UsageError
from utils.device.profiles import DeviceProfile
from utils.device.storage import bytes_per_kept_weight, model_bytes
from utils.sparsity.budget import capped_largest_remainder
from utils.sparsity.granularity import Granularity
from utils.sparsity.macs import channel_macs, live_counts


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


class EntryCount:
    """What a regrowth budget counts by default: entries of the granularity (weights or channels). One
    regrown entry costs 1, nothing is trimmed, and a device limit filled this way is a byte limit (every kept
    weight takes the same bytes). ``MacBudget`` is the other cost, with the same methods."""

    device_limit = "bytes"

    def unit(self, entries: str) -> str:
        """What K counts: ``entries``, the granularity's plural noun (e.g. ``weights``)."""
        return entries

    def unit_costs(self, units: list[str]) -> list[int] | None:
        """None: one entry of any unit costs 1."""
        return None

    def fit(self, allocation: dict[str, int]) -> dict[str, int]:
        """``allocation`` as it may regrow: unchanged."""
        return allocation

    def added(self, allocation: dict[str, int]) -> int:
        """What regrowing every entry of ``allocation`` ({unit: entries}) adds: its entries."""
        return sum(allocation.values())

    def spent(self, allocation: dict[str, int], regrown: int) -> int:
        """What a regrowth of ``allocation`` that brought back ``regrown`` entries spent: ``regrown``."""
        return regrown

    def columns(self, allocation: dict[str, int], sampled: int, spent: int) -> dict[str, int]:
        """No extra episode-log columns."""
        return {}


class MacBudget:
    """Channel regrowth counted in MACs of the export, up to ``limit`` MACs per image, from the live channel
    counts of ``sparse`` (see ``utils.sparsity.macs``: the cost is quadratic in the counts, so a channel's
    price at the start is an estimate and ``fit`` trims an allocation until it is within the limit)."""

    device_limit = "macs"

    def __init__(self, gran: Granularity, sparse: nn.Module, limit: float) -> None:
        self.model, self.limit = channel_macs(gran), limit
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

    def unit(self, entries: str) -> str:
        """What K counts: MACs."""
        return "macs"

    def spent(self, allocation: dict[str, int], regrown: int) -> int:
        """MACs per image that regrowing ``allocation`` adds (whatever ``regrown`` counts)."""
        return self.added(allocation)

    def columns(self, allocation: dict[str, int], sampled: int, spent: int) -> dict[str, int]:
        """Episode-log columns: MACs added and channels trimmed from the ``sampled`` ones to fit."""
        return {"macs_added": spent, "trimmed": sampled - sum(allocation.values())}


Cost = EntryCount | MacBudget  # what a regrowth budget counts


@dataclass
class DeviceBudget:
    """What fills a device from a sparse start: ``need`` weights (their bytes are the same everywhere) or,
    for channels, ``need`` MACs of the export, counted by ``cost``."""

    need: int
    cost: Cost = field(default_factory=EntryCount)

    @property
    def limit(self) -> str:
        """The profile limit being filled: ``bytes`` (weights) or ``macs`` (channels)."""
        return self.cost.device_limit

    def room(self, capacities: dict[str, int]) -> int:
        """What regrowing every masked entry of ``capacities`` ({unit: entries}) would add, in ``need``'s unit."""
        return self.cost.added(capacities)

    def budget(self, capacities: dict[str, int]) -> int:
        """The search's K over units with ``capacities``: ``need``, or less where they cannot hold it."""
        return min(self.need, self.room(capacities))


def device_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module) -> DeviceBudget:
    """The regrowth that fills the device from ``sparse``: weights up to ``max_bytes`` (the kept-weight
    limit minus what ``sparse`` keeps), channels up to ``max_macs`` (the MAC headroom of its export). A
    start that already fills the device, or a profile without the limit the granularity counts, is a usage
    error."""
    return BUDGETS[gran.device_limit](profile, gran, sparse)


def _byte_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module) -> DeviceBudget:
    limit = kept_weight_limit(profile, gran, sparse)
    kept = gran.total(sparse) - sum(gran.capacity(sparse).values())
    if limit <= kept:
        raise UsageError(f"the start already keeps {kept:,} weights and device profile {profile.name} holds at most "
                         f"{limit:,} in {profile.storage}: nothing to regrow; prune past the limit first")
    return DeviceBudget(limit - kept)


def _mac_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module) -> DeviceBudget:
    limit = mac_limit(profile)
    macs = MacBudget(gran, sparse, limit)
    headroom = math.floor(limit - macs.start_macs)
    if headroom <= 0:
        raise UsageError(f"the start already costs {macs.start_macs:,} MACs and device profile {profile.name} allows "
                         f"{limit:,.0f}: nothing to regrow; prune past the limit first")
    return DeviceBudget(headroom, macs)


# what fills a device, by the limit a granularity fills (``Granularity.device_limit``)
BUDGETS = {"bytes": _byte_budget, "macs": _mac_budget}


def mac_limit(profile: DeviceProfile) -> float:
    """The MAC limit channel regrowth fills (``max_macs``). A latency limit is checked and reported, not
    filled: it is measured, so a limit derived from it would differ between the stages, the processes of a
    ``torchrun`` launch and a resumed run."""
    if profile.max_macs is None:
        raise UsageError(f"device profile {profile.name} has no max_macs: channel regrowth to a device limit counts "
                         "MACs of the export (bytes and latency are checked and reported, not filled)")
    return profile.max_macs


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
    return TARGETS[gran.device_limit](profile, gran, dense, past_limit)


def _mac_targets(profile: DeviceProfile, gran: Granularity, dense: nn.Module, past_limit: float) -> DeviceTargets:
    total, limit = gran.total(dense), mac_limit(profile)
    at = _local_removal(gran, limit, f"device profile {profile.name}")
    start = _local_removal(gran, limit / past_limit, f"--past_limit {past_limit:g} ({limit:,.0f} / {past_limit:g})")
    return DeviceTargets(at / total, start / total, "macs", f"at most {limit:,.0f} MACs per image")


def _byte_targets(profile: DeviceProfile, gran: Granularity, dense: nn.Module, past_limit: float) -> DeviceTargets:
    total, limit = gran.total(dense), kept_weight_limit(profile, gran, dense)
    if limit >= total:
        raise UsageError(f"device profile {profile.name}: the dense {gran.model_name} fits already ({total:,} "
                         "weights); nothing to prune")
    words = (f"at most {profile.max_bytes:,.0f} bytes in {profile.storage} -> at most {limit:,} kept weights")
    return DeviceTargets((total - limit) / total, (total - math.floor(limit / past_limit)) / total, "bytes", words)


# where a device's limit binds, by the limit a granularity fills (``Granularity.device_limit``)
TARGETS = {"bytes": _byte_targets, "macs": _mac_targets}


def local_counts(gran: Granularity, removed: int) -> dict[str, int]:
    """{group: live channels} after a local one-shot prune of ``removed`` channels from the dense model
    (``utils.prune.channel_pruners.select_local``'s split)."""
    sizes = {g.root: g.size for g in gran.groups}
    cut = capped_largest_remainder({k: float(v) for k, v in sizes.items()}, {k: v - 1 for k, v in sizes.items()},
                                   removed)
    return {k: sizes[k] - cut[k] for k in sizes}


def _local_removal(gran: Granularity, macs_limit: float, what: str) -> int:
    """A count of channels that a local one-shot prune removes to bring the export within ``macs_limit``
    MACs, one more than a count that does not (bisection; largest-remainder splits can make the cost rise
    by a few MACs for one more channel removed, so a smaller count may fit elsewhere, never this one's
    neighbour). ``what`` names the limit in errors: a usage error when even the thinnest model is over, or
    the dense model fits."""
    cost = channel_macs(gran)
    low, high = 0, sum(g.size - 1 for g in gran.groups)
    thinnest, dense = cost.macs(local_counts(gran, high)), cost.macs(local_counts(gran, low))
    if thinnest > macs_limit:
        raise UsageError(f"{what}: no model can meet {macs_limit:,.0f} MACs: {gran.model_name} with one channel per "
                         f"group costs {thinnest:,}")
    if dense <= macs_limit:
        raise UsageError(f"{what}: the dense {gran.model_name} fits {macs_limit:,.0f} MACs already ({dense:,}); "
                         "nothing to prune")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if cost.macs(local_counts(gran, mid)) <= macs_limit else (mid, high)
    return high
