"""Regrowth up to a device's limit ("reverse regrowth"): what fills the device from a sparse start, and
where on a one-shot pruning curve the limit binds.

Weights fill ``max_bytes``: a kept weight costs the same bytes in every layer of a storage format, so the
budget counts weights (``kept_weight_limit``). Channels fill a MAC limit (``max_macs``, or ``max_latency_ms``
turned into MACs by a line fitted to measured latencies): the MACs of the export are an exact quadratic of
the groups' live counts (``utils.channel_cost``), so the search prices each group's channel at the start
and trims every allocation until it fits (``MacBudget``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from utils.budget import capped_largest_remainder
from utils.channel_cost import ChannelMacs, live_counts
from utils.cost import latencies_ms
from utils.device import CPU, DeviceProfile
from utils.errors import UsageError
from utils.granularity import Granularity
from utils.storage import bytes_per_kept_weight, model_bytes


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


def device_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module,
                  device: torch.device = CPU) -> DeviceBudget:
    """The regrowth that fills the device from ``sparse``: weights up to ``max_bytes`` (the kept-weight
    limit minus what ``sparse`` keeps), channels up to the MAC limit of ``mac_limit`` (the headroom of its
    export; latencies measured on ``device``). A start that already fills the device, or a profile without
    the limit the granularity counts, is a usage error."""
    if gran.name == "channel":
        return _channel_budget(profile, gran, sparse, device)
    limit = kept_weight_limit(profile, gran, sparse)
    kept = gran.total(sparse) - sum(gran.capacity(sparse).values())
    if limit <= kept:
        raise UsageError(f"the start already keeps {kept:,} weights and device profile {profile.name} holds at most "
                         f"{limit:,} in {profile.storage}: nothing to regrow; prune past the limit first")
    return DeviceBudget(limit - kept, "bytes")


def _channel_budget(profile: DeviceProfile, gran: Granularity, sparse: nn.Module,
                    device: torch.device) -> DeviceBudget:
    limit, _ = mac_limit(profile, gran, device)
    macs = MacBudget(gran, sparse, limit)
    headroom = math.floor(limit - macs.start_macs)
    if headroom <= 0:
        raise UsageError(f"the start already costs {macs.start_macs:,} MACs and device profile {profile.name} allows "
                         f"{limit:,.0f}: nothing to regrow; prune past the limit first")
    return DeviceBudget(headroom, "macs", macs)


LATENCY_SHARES = (0.0, 0.25, 0.5, 0.75)  # shares of the removable channels of the timed exports


def mac_limit(profile: DeviceProfile, gran: Granularity, device: torch.device) -> tuple[float, str]:
    """(the MAC limit channel regrowth fills, the limit in words): ``max_macs``, and/or the MACs at which a
    line fitted to measured latencies reaches ``max_latency_ms``; the lower of the two when both are set.

    Latency goes through MACs because it is measured, not counted: the exports of local one-shot prunes
    removing ``LATENCY_SHARES`` of the removable channels are timed here (``latencies_ms``) and ``ms = a +
    b · MACs`` fitted by least squares. The final model's latency is measured again and reported as it is."""
    limits, words = [], []
    if profile.max_macs is not None:
        limits.append(profile.max_macs)
        words.append(f"at most {profile.max_macs:,.0f} MACs per image")
    if profile.max_latency_ms is not None:
        limits.append(_latency_macs(profile, gran, device))
        words.append(f"at most {profile.max_latency_ms:g} ms per pass of {profile.latency_batch} image(s) here "
                     f"(~{limits[-1]:,.0f} MACs by a fit to measured latencies)")
    if not limits:
        raise UsageError(f"device profile {profile.name} has no max_macs or max_latency_ms: channel regrowth to a "
                         "device limit counts MACs of the export (bytes are checked and reported, not filled)")
    return min(limits), "; ".join(words)


def _latency_macs(profile: DeviceProfile, gran: Granularity, device: torch.device) -> float:
    """The MACs whose fitted latency is ``profile.max_latency_ms`` (see ``mac_limit``)."""
    from models import create_model

    cost, most = ChannelMacs(gran), sum(g.size - 1 for g in gran.groups)
    models, macs = {}, {}
    for share in LATENCY_SHARES:
        counts = local_counts(gran, round(share * most))
        model = create_model(gran.model_name, gran.num_classes)
        gran.set_masks(model, {g.root: torch.arange(g.size) < counts[g.root] for g in gran.groups})
        models[share], macs[share] = gran.export(model)[0].to(device), cost.macs(counts)
    ms = latencies_ms(models, profile.latency_batch, gran.input_size, device)
    x, y = torch.tensor([macs[k] for k in models], dtype=torch.float64), torch.tensor([ms[k] for k in models],
                                                                                       dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    if slope <= 0:
        raise UsageError(f"latency does not grow with MACs on this machine (measured {ms}); give max_macs instead")
    return (profile.max_latency_ms - intercept) / slope


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


def device_targets(profile: DeviceProfile, gran: Granularity, dense: nn.Module, past_limit: float,
                   device: torch.device = CPU) -> DeviceTargets:
    """The one-shot sparsities of ``profile``'s limit and of the regrowth start, for ``dense`` (reparametrised,
    no entry masked). Channels follow ``prune_structure.py``'s default one-shot split (--scope local: every
    group loses the same share), whose MACs depend on the counts only, not on the weights; a latency limit
    is turned into MACs on ``device`` (``mac_limit``)."""
    total = gran.total(dense)
    if gran.name == "channel":
        limit, words = mac_limit(profile, gran, device)
        at, start = (_local_removal(gran, limit / factor) for factor in (1.0, past_limit))
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
