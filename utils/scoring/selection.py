"""Within-unit selection (``--selection``): which masked entries of a unit regrow first.

A selector gives every entry of every unit a score shaped like the unit's mask (higher regrows first);
``Granularity.regrow`` then takes the top ``n`` masked entries of each unit. The allocation (how many per
unit) is the search's or a greedy rule's business, the selection is this module's; any selector works with
any allocation and either granularity.

- ``saliency`` (default): ``F · θ^2`` (``--regrowth_score fisher``; ``F`` the ``--fisher`` estimate: the
  original's squared batch-mean gradients, ``batch``, or the per-image empirical Fisher, ``per_sample``) or
  ``|dL/dθ| · |θ|`` (``taylor``) on the dense (or sparse) model, summed over a channel group's slices;
- ``reference``: the older repository's reference-based regrowth: entries that a less sparse
  ``--reference_ckpt`` of the same model keeps come first, by the reference's magnitude, then the rest by
  stored magnitude; with ``--init_strategy dense`` (its default) the values are copied from the reference;
- ``magnitude``: the stored value's magnitude ``|θ_orig|`` (what pruning last saw, decayed since);
- ``random``: uniform draws from a generator seeded by the run seed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from utils.core.aliases import Scores
from utils.core.errors import UsageError
from utils.core.fields import setting
from utils.core.registry import Registry
from utils.core.seeds import make_generator
from utils.runtime.settings import ScoringSettings
from utils.runtime.stage import DenseSparse, Stage, check_parent
from utils.scoring.layer_scores import saliency_scores
from utils.sparsity.granularity import Granularity
from utils.sparsity.grow import random_scores_like
from utils.sparsity.masks import effective_param, stored_param

# (stage, dense/sparse pair, reference model or None, saliency settings) -> per-entry unit scores
Selector = Callable[[Stage, DenseSparse, "nn.Module | None", ScoringSettings], Scores]


def param_magnitudes(gran: Granularity, model: nn.Module, stored: bool) -> Scores:
    """``|θ|`` of every scored parameter (``stored``: the ``*_orig`` values under the masks; else what the
    forward pass uses), reduced to per-entry unit scores by ``gran``."""
    modules = dict(model.named_modules())
    values = {}
    for name in gran.scored_params():
        module_name, param = name.rsplit(".", 1)
        read = stored_param if stored else effective_param
        values[name] = read(modules[module_name], param).detach().abs().float()
    return gran.unit_scores(values)


def _per_unit_max(scores: Scores) -> Scores:
    return {unit: s / s.max().clamp_min(1e-12) for unit, s in scores.items()}


def _saliency(stage: Stage, pair: DenseSparse, reference: nn.Module | None, scoring: ScoringSettings) -> Scores:
    return saliency_scores(stage, scoring, pair)


def _magnitude(stage: Stage, pair: DenseSparse, reference: nn.Module | None, scoring: ScoringSettings) -> Scores:
    return param_magnitudes(stage.granularity, pair.sparse, stored=True)


def _random(stage: Stage, pair: DenseSparse, reference: nn.Module | None, scoring: ScoringSettings) -> Scores:
    gen = make_generator(stage.run.seed, "selection", stage.device)
    return random_scores_like(stage.granularity.masks(pair.sparse), gen)


def reference_scores(gran: Granularity, sparse: nn.Module, reference: nn.Module) -> Scores:
    """Entries the ``reference`` model keeps score in [2, 3] (by the reference's magnitude), the others in
    [0, 1] (by ``sparse``'s stored magnitude), each scaled by its unit's largest value."""
    keep = gran.masks(reference)
    ref = _per_unit_max(param_magnitudes(gran, reference, stored=False))
    own = _per_unit_max(param_magnitudes(gran, sparse, stored=True))
    return {unit: torch.where(keep[unit].to(own[unit].device), 2 + ref[unit].to(own[unit].device), own[unit])
            for unit in own}


def _reference(stage: Stage, pair: DenseSparse, reference: nn.Module | None, scoring: ScoringSettings) -> Scores:
    return reference_scores(stage.granularity, pair.sparse, reference)


SELECTORS: Registry[Selector] = Registry("selection", {"saliency": _saliency, "reference": _reference,
                                                       "magnitude": _magnitude, "random": _random})


@dataclass(frozen=True)
class SelectionSettings:
    """Which masked entries of a unit regrow first, and the values they start from."""

    selection: str = setting("saliency", "which masked entries of a unit regrow first: saliency, reference (those a "
                                         "less sparse --reference_ckpt keeps, values copied from it), magnitude, "
                                         "random", choices=SELECTORS)
    reference_ckpt: str | None = setting(None, "--selection reference: a less sparse checkpoint of the same model")
    init_strategy: str = "zero"  # value of regrown entries (the granularity's init strategies); its flag,
    # --init_strategy, is resolved with --selection and the granularity (``utils.cli.flags.default_init``)


def load_reference(stage: Stage, pair: DenseSparse, selection: SelectionSettings) -> nn.Module | None:
    """The --reference_ckpt model for --selection reference (None otherwise); it must be less sparse than
    the start, and is a usage error for the other selectors."""
    if selection.selection != "reference":
        if selection.reference_ckpt:
            raise UsageError(f"--reference_ckpt is only read by --selection reference (not {selection.selection})")
        return None
    if not selection.reference_ckpt:
        raise UsageError("--selection reference needs --reference_ckpt (a less sparse checkpoint of the same model)")
    reference = stage.load_model(Path(selection.reference_ckpt), reparam=True)
    check_parent(stage, selection.reference_ckpt)  # its values are copied in: it must come from the same dense model
    gran = stage.granularity
    ref_s, start_s = gran.sparsity(reference), gran.sparsity(pair.sparse)
    if ref_s >= start_s:
        raise UsageError(f"--reference_ckpt has {gran.name} sparsity {ref_s:.4f}, not below the start's "
                         f"{start_s:.4f}: pass a less sparse checkpoint")
    return reference


def init_source(pair: DenseSparse, reference: nn.Module | None) -> nn.Module:
    """Where ``--init_strategy dense`` copies values from: the reference of --selection reference, else the
    dense model."""
    return reference if reference is not None else pair.dense


def selection_scores(stage: Stage, pair: DenseSparse, reference: nn.Module | None, selection: SelectionSettings,
                     scoring: ScoringSettings) -> Scores:
    """The ``selection.selection`` scores of every unit of ``pair.sparse`` (see the module docstring); the
    saliency uses ``scoring``."""
    return SELECTORS.get(selection.selection, "--selection")(stage, pair, reference, scoring)
