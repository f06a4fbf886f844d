"""Within-unit selection (``--selection``): which masked entries of a unit regrow first.

A selector gives every entry of every unit a score shaped like the unit's mask (higher regrows first);
``Granularity.regrow`` then takes the top ``n`` masked entries of each unit. The allocation (how many per
unit) is the search's or a greedy rule's business, the selection is this module's; any selector works with
any allocation and either granularity.

- ``saliency`` (default): ``(dL/dθ)^2 θ^2`` (``--regrowth_score fisher``) or ``|dL/dθ · θ|`` (``taylor``)
  on the dense (or sparse) model, summed over a channel group's slices;
- ``reference``: the older repository's reference-based regrowth: entries that a less sparse
  ``--reference_ckpt`` of the same model keeps come first, by the reference's magnitude, then the rest by
  stored magnitude; with ``--init_strategy dense`` (its default) the values are copied from the reference;
- ``magnitude``: the stored value's magnitude ``|θ_orig|`` (what pruning last saw, decayed since);
- ``random``: uniform draws from a generator seeded by the run seed.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from utils.errors import UsageError
from utils.granularity import Granularity, Scores
from utils.masks import effective_param, stored_param
from utils.regrowth import random_scores_like
from utils.run import make_generator
from utils.scores import saliency_scores
from utils.stage import DenseSparse, Stage, check_parent

# (stage, dense/sparse pair, reference model or None) -> per-entry unit scores
Selector = Callable[[Stage, DenseSparse, "nn.Module | None"], Scores]


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


def _saliency(stage: Stage, pair: DenseSparse, reference: nn.Module | None) -> Scores:
    return saliency_scores(stage, pair)


def _magnitude(stage: Stage, pair: DenseSparse, reference: nn.Module | None) -> Scores:
    return param_magnitudes(stage.granularity, pair.sparse, stored=True)


def _random(stage: Stage, pair: DenseSparse, reference: nn.Module | None) -> Scores:
    gen = make_generator(stage.args.seed, "selection", stage.device)
    return random_scores_like(stage.granularity.masks(pair.sparse), gen)


def reference_scores(gran: Granularity, sparse: nn.Module, reference: nn.Module) -> Scores:
    """Entries the ``reference`` model keeps score in [2, 3] (by the reference's magnitude), the others in
    [0, 1] (by ``sparse``'s stored magnitude), each scaled by its unit's largest value."""
    keep = gran.masks(reference)
    ref = _per_unit_max(param_magnitudes(gran, reference, stored=False))
    own = _per_unit_max(param_magnitudes(gran, sparse, stored=True))
    return {unit: torch.where(keep[unit].to(own[unit].device), 2 + ref[unit].to(own[unit].device), own[unit])
            for unit in own}


def _reference(stage: Stage, pair: DenseSparse, reference: nn.Module | None) -> Scores:
    return reference_scores(stage.granularity, pair.sparse, reference)


SELECTORS: dict[str, Selector] = {"saliency": _saliency, "reference": _reference, "magnitude": _magnitude,
                                  "random": _random}


def add_selection_args(parser: argparse.ArgumentParser) -> None:
    """--selection and --reference_ckpt."""
    group = parser.add_argument_group("within-unit selection")
    group.add_argument("--selection", choices=list(SELECTORS), default="saliency",
                       help="which masked entries of a unit regrow first: saliency, reference (those a "
                            "less sparse --reference_ckpt keeps, values copied from it), magnitude, random")
    group.add_argument("--reference_ckpt", default=None,
                       help="--selection reference: a less sparse checkpoint of the same model")


def default_init(args: argparse.Namespace, gran_default: str) -> str:
    """--init_strategy when not given: ``dense`` (copy the reference's values) for --selection reference, else
    the granularity's default."""
    return args.init_strategy or ("dense" if args.selection == "reference" else gran_default)


def load_reference(stage: Stage, pair: DenseSparse) -> nn.Module | None:
    """The --reference_ckpt model for --selection reference (None otherwise); it must be less sparse than
    the start, and is a usage error for the other selectors."""
    args = stage.args
    if args.selection != "reference":
        if args.reference_ckpt:
            raise UsageError(f"--reference_ckpt is only read by --selection reference (not {args.selection})")
        return None
    if not args.reference_ckpt:
        raise UsageError("--selection reference needs --reference_ckpt (a less sparse checkpoint of the same model)")
    reference = stage.load_model(Path(args.reference_ckpt), reparam=True)
    check_parent(stage, args.reference_ckpt)  # its values are copied in: it must come from the same dense model
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


def selection_scores(stage: Stage, pair: DenseSparse, reference: nn.Module | None) -> Scores:
    """The ``--selection`` scores of every unit of ``pair.sparse`` (see the module docstring)."""
    return SELECTORS[stage.args.selection](stage, pair, reference)
