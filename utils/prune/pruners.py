"""Every pruner by name, per granularity: the weight selectors (``weight_pruners``) and the channel importances
(``channel_pruners``), looked up through one function."""
from __future__ import annotations

from collections.abc import Callable

from utils.core.errors import UsageError
from utils.core.registry import Registry
from utils.prune.channel_pruners import CHANNEL_IMPORTANCES, channel_pruner
from utils.prune.weight_pruners import WEIGHT_SELECTORS, Pruner, weight_pruner
from utils.sparsity.channels import ChannelGranularity
from utils.sparsity.granularity import Granularity, default_granularity, granularity_class
from utils.sparsity.weights import WeightGranularity

Factory = Callable[[str, Granularity | None, str], Pruner]
# granularity class -> (its pruners' registry, the factory that builds one); classes, not names, key it
FAMILIES: dict[type[Granularity], tuple[Registry, Factory]] = {
    WeightGranularity: (WEIGHT_SELECTORS, weight_pruner),
    ChannelGranularity: (CHANNEL_IMPORTANCES, channel_pruner),
}


def _family(granularity: type[Granularity]) -> tuple[Registry, Factory]:
    return next(family for cls, family in FAMILIES.items() if issubclass(granularity, cls))


def list_pruners(granularity: str | None = None) -> list[str]:
    """Names of the registered pruners of the granularity called ``granularity`` (None: the default one)."""
    return _family(granularity_class(granularity or default_granularity()))[0].names()


def get_pruner(name: str, granularity: Granularity | None = None, scope: str = "global") -> Pruner:
    """The pruner called ``name`` for ``granularity`` (default: weights of any model); ``scope`` (local or
    global) applies to channel pruners. An unknown name is a ``UsageError`` listing the valid ones."""
    kind = type(granularity) if granularity is not None else granularity_class(default_granularity())
    registry, factory = _family(kind)
    if name not in registry:
        raise UsageError(f"unknown pruner '{name}' for {kind.name} pruning; choose one of: {', '.join(registry)}")
    return factory(name, granularity, scope)
