"""The granularity seam: what pruning, scores, regrowth, the search and checkpoints see of "a unit".

A granularity is bound to one architecture (model name and class count) and answers, for any model of
that architecture:

| question | ``weight`` | ``channel`` |
| --- | --- | --- |
| units | prunable layers (Conv2d, Linear) | coupled channel groups (by root layer name) |
| keep-mask of a unit | bool, shaped like the weight | bool [C], one entry per channel |
| capacity of a unit | masked weights | masked channels |
| N_tot | all prunable weights | all groupable channels |
| unit scores from per-parameter scores | the weight's own scores | summed over every slice of the group |
| layer whose output SSIM probes | the layer | the group's root layer |
| cost of one entry of a unit | 1 weight, H_out·W_out MACs | the group's weights and MACs per channel |

Everything else (pruners' selection, budgets, the RL search, baselines) works on these dicts and never
asks which granularity it has. ``get_granularity(name, model_name)`` builds (once) and returns one.
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from models import model_spec
from utils.core.aliases import Masks, Scores
from utils.core.errors import UsageError
from utils.core.registry import Registry
from utils.sparsity.macs import params_and_macs


@dataclass(frozen=True)
class UnitCost:
    """What one entry (a weight, or a channel) of a unit costs in the dense model.

    ``weights``: stored parameters per entry; ``macs``: multiply-accumulates per entry per image. For
    channels these are first-order figures (the other groups at full width); the exact figures of a
    pruned model come from its physical export.
    """

    entries: int
    weights: float
    macs: float


class Granularity(abc.ABC):
    """Units, masks, scores, regrowth and costs at one granularity (see the module docstring)."""

    name: str
    init_strategies: tuple[str, ...]
    default_init: str
    keep_per_unit: int = 0  # entries every unit keeps whatever the pruner asks (channel groups: 1)
    unit_noun: str = "unit"  # what a unit is called in messages
    refused_inits: dict[str, str] = {}  # init strategy -> why this granularity refuses it
    # where its runs live (weight keeps the original repository's names); the scripts that serve it and their
    # defaults are the command line's (utils/cli/commands.py)
    prune_prefix: str = ""  # pruning folder: {prune_prefix}{mode}
    file_tag: str = ""  # pruned checkpoint: {m}_{file_tag}{sparsity:.4f}.pth
    regrowth_stem: str = "regrowth"  # search folder: [random_]{regrowth_stem}_{schedule}
    greedy_stem: str = "greedy"  # greedy folder: {greedy_stem}_{mode}
    summary_stem: str = "pipeline_summary"  # pipeline.py's table
    device_limit: str = "bytes"  # what regrowth up to a device fills: its storage (bytes) or its MACs (macs)
    per_class_scores: bool = True  # analyze_layers.py --per_class can score its units per class
    exportable: bool = False  # masks shrink the model physically (export.py, the pipeline exports final models)
    counts_weights: bool = False  # an entry is one weight (so its sparsity is the weight sparsity)
    foreign_masks: str = "holds masks of another granularity"  # a stage's error for a checkpoint of another one
    is_default: bool = False  # what the scripts' --granularity means when it is not given

    def __init__(self, model_name: str, num_classes: int, input_size: int) -> None:
        self.model_name, self.num_classes, self.input_size = model_name, num_classes, input_size

    # ---- masks ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def units(self) -> list[str]:
        """Unit names in model order."""

    @abc.abstractmethod
    def masks(self, model: nn.Module) -> Masks:
        """Bool keep-mask of every unit (all True for a model without masks)."""

    @abc.abstractmethod
    def set_masks(self, model: nn.Module, masks: Masks) -> None:
        """Write keep-masks of some or all units into the model's reparametrisation (added where missing).
        Stored values (``*_orig``) are untouched."""

    @abc.abstractmethod
    def ensure_masks(self, model: nn.Module) -> None:
        """Give the model masks of this granularity where it has none (its current pattern is kept)."""

    @abc.abstractmethod
    def checkpoint_masks(self, model: nn.Module) -> Masks | None:
        """What the checkpoint stores as ``channel_masks`` (None when the element masks say it all)."""

    def capacity(self, model: nn.Module) -> dict[str, int]:
        """Masked entries per unit: how many can be regrown."""
        return {unit: int((~mask).sum()) for unit, mask in self.masks(model).items()}

    def total(self, model: nn.Module) -> int:
        """N_tot: entries (weights or channels) over all units."""
        return sum(mask.numel() for mask in self.masks(model).values())

    def removable(self, model: nn.Module) -> int:
        """Live entries that may still be pruned (all but ``keep_per_unit`` per unit)."""
        masks = self.masks(model)
        return sum(int(m.sum()) for m in masks.values()) - self.keep_per_unit * len(masks)

    def sparsity(self, model: nn.Module) -> float:
        """Masked entries / N_tot, in [0, 1]."""
        masks = self.masks(model)
        total = sum(m.numel() for m in masks.values())
        return sum(int((~m).sum()) for m in masks.values()) / total if total else 0.0

    # ---- scores -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def scored_params(self) -> list[str]:
        """``module.param`` names whose per-entry scores the units reduce (see ``unit_scores``)."""

    @abc.abstractmethod
    def unit_scores(self, param_scores: Scores) -> Scores:
        """Per-entry unit scores (shaped like each unit's mask) from per-parameter scores keyed
        ``module.param``; parameters missing from ``param_scores`` contribute nothing."""

    @abc.abstractmethod
    def probe_layer(self, unit: str) -> str:
        """The layer whose output SSIM compares (dense vs masked) to score ``unit``."""

    # ---- regrowth and cost ------------------------------------------------------------------------------
    @abc.abstractmethod
    def regrow(self, model: nn.Module, allocation: dict[str, int], scores: Scores, init_strategy: str,
               dense: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
               generator: torch.Generator | None = None) -> dict[str, int]:
        """Bring back ``min(n, capacity)`` masked entries with the highest ``scores`` in each unit of
        ``allocation``, initialised by ``init_strategy`` (``dense``: the dense model); resets their
        optimizer state. Returns {unit: entries regrown}."""

    @abc.abstractmethod
    def unit_costs(self) -> dict[str, UnitCost]:
        """Cost of one entry of each unit (see ``UnitCost``)."""

    @abc.abstractmethod
    def describe(self, model: nn.Module) -> dict[str, float]:
        """Extra log columns for a pruned model (e.g. params and MACs after export)."""

    def masked_macs(self, model: nn.Module) -> int:
        """MACs per image of ``model`` as it runs with its masks (when it cannot be exported smaller)."""
        return params_and_macs(model, self.input_size)[1]

    def export(self, model: nn.Module) -> tuple[nn.Module, list] | None:
        """(a physically smaller copy, its Torch-Pruning history), or None where masks cannot shrink a model."""
        return None

    @classmethod
    def check_init(cls, name: str) -> None:
        """A ``UsageError`` unless ``name`` is one of this granularity's init strategies (needs no model)."""
        if name in cls.refused_inits:
            raise UsageError(f"--init_strategy {name}: {cls.refused_inits[name]}")
        if name not in cls.init_strategies:
            raise UsageError(f"--init_strategy {name} does not apply to {cls.name} regrowth; choose one of: "
                             f"{', '.join(cls.init_strategies)}")


GRANULARITIES: Registry[type[Granularity]] = Registry("granularity")


def register_granularity(name: str):
    """Decorator adding a ``Granularity`` subclass to the registry under ``name``."""

    def wrap(cls):
        cls.name = name
        return GRANULARITIES.add(name, cls)

    return wrap


def list_granularities() -> list[str]:
    """Registered granularity names, the default first (the choices of a ``--granularity`` flag)."""
    return sorted(GRANULARITIES.names(), key=lambda n: not GRANULARITIES.get(n).is_default)


def default_granularity() -> str:
    """The granularity a checkpoint without masks, or a script without ``--granularity``, works at."""
    return list_granularities()[0]


def granularity_class(name: str) -> type[Granularity]:
    """The registered class of granularity ``name`` (its defaults, without building one for a model); the
    implementations register when ``utils.sparsity`` is imported (its ``__init__``)."""
    return GRANULARITIES.get(name)


@functools.lru_cache(maxsize=32)
def get_granularity(name: str, model_name: str, num_classes: int | None = None) -> Granularity:
    """The granularity ``name`` for ``model_name`` (built once per architecture and class count). Building one
    (a scratch model, a traced forward pass) never moves the global RNG: stages build it lazily, at their first
    save, and a resumed run must draw what the uninterrupted one draws."""
    spec = model_spec(model_name)
    with torch.random.fork_rng(devices=[]):
        return granularity_class(name)(spec.name, num_classes or spec.num_classes, spec.input_size)
