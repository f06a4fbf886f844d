"""Applying a regrowth allocation: regrow it into a model (or a copy), finetune, evaluate.

The one implementation of the step the RL search (each episode), the greedy baselines (each iteration), the
single-layer analysis (each layer, and its control run) and the matched benchmarks share::

    model (or clone_model(model))
      -> granularity.regrow(allocation, scores, init_strategy, source, generator)   (skipped: regrowth None)
      -> [a copy of the regrown model]             keep_before
      -> [accuracy on a split, before finetuning]  immediate
      -> finetune (AdamW, best epoch on the select split, loaded into the model)
      -> [test accuracy]                           test

Each step runs in that order and draws only from the generators it is given (``Regrowth.generator`` for the
init draws, ``Finetuning.train``'s for data order and augmentation), so a caller's results do not depend on
this module; ``regrow_and_finetune`` (one benchmark arm) makes those generators from the run seed, as a stage
script does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from data.loader import DeviceLoader
from utils.core.aliases import Scores
from utils.core.seeds import make_generator
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.stage import DenseSparse, Stage
from utils.runtime.train import FitState, evaluate_model, finetune_model
from utils.sparsity.granularity import Granularity
from utils.sparsity.masks import clone_model
from utils.sparsity.swap import SwapSettings


@dataclass(frozen=True)
class Regrowth:
    """What regrows and the values it starts from."""

    allocation: dict[str, int]  # unit -> masked entries (weights, channels) to bring back, >= 0; capped by capacity
    scores: Scores  # per-entry unit scores: the highest-scoring masked entries of a unit regrow first
    init_strategy: str  # the granularity's init strategy (zero, kaiming, xavier, magnitude, dense, ...)
    source: nn.Module | None = None  # where ``dense`` init copies values from (the dense model, or a reference)
    generator: torch.Generator | None = None  # the init draws (kaiming, xavier, ...; keyed by position)


@dataclass(frozen=True)
class Finetuning:
    """The finetune after the regrowth, and the split it is judged on."""

    settings: FinetuneSettings  # epochs, AdamW lr and weight decay, patience (0: none), warm-up
    train: DeviceLoader  # the training split, with the generator of its data order and augmentation
    select: DeviceLoader  # the split that picks the best epoch (val)
    loop: LoopSettings = LoopSettings()  # amp (also of the evaluations here), compile, bars, log lines, CSV


@dataclass
class Applied:
    """What applying an allocation gives. Accuracies in percent [0, 100]."""

    model: nn.Module  # the regrown model, finetuned, with its best epoch loaded
    regrown: int  # entries regrown over all units (0 without a regrowth)
    fit: FitState  # the finetune: best val accuracy and epoch, early stop
    test_acc: float | None = None  # accuracy on the ``test`` split after the finetune (None: not asked)
    before: nn.Module | None = None  # a copy of the regrown model before the finetune (None: not asked)
    immediate_acc: float | None = None  # accuracy on the ``immediate`` split before the finetune (None: not asked)


def apply_allocation(gran: Granularity, model: nn.Module, regrowth: Regrowth | None, finetuning: Finetuning, *,
                     copy: bool = True, keep_before: bool = False, immediate: DeviceLoader | None = None,
                     test: DeviceLoader | None = None) -> Applied:
    """Regrow ``regrowth`` into ``model`` (``copy``: into a clone of it, ``model`` untouched; else in place) at
    ``gran``, then finetune it (``finetuning``) and optionally evaluate it.

    ``regrowth=None`` regrows nothing and calls no kernel (its generator is not drawn from): a control run
    that only finetunes. ``keep_before``: keep a copy of the regrown model before the finetune (``before``).
    ``immediate``: accuracy on that split right after the regrowth, before the finetune (``immediate_acc``).
    ``test``: accuracy on that split after the finetune (``test_acc``). Evaluations use
    ``finetuning.loop.amp``.
    """
    model = clone_model(model) if copy else model
    regrown = 0
    if regrowth is not None:
        regrown = sum(gran.regrow(model, regrowth.allocation, regrowth.scores, regrowth.init_strategy,
                                  regrowth.source, generator=regrowth.generator).values())
    amp = finetuning.loop.amp
    before = clone_model(model) if keep_before else None
    immediate_acc = evaluate_model(model, immediate, amp=amp)[1] if immediate is not None else None
    fit = finetune_model(model, finetuning.train, finetuning.select, finetuning.settings, finetuning.loop)
    test_acc = evaluate_model(model, test, amp=amp)[1] if test is not None else None
    return Applied(model, regrown, fit, test_acc, before, immediate_acc)


# the stream ``regrow_and_finetune``'s finetunes draw their batches from: the run seed's data order from its start, as a
# stage script draws it (until 2026-12-06: a stream of its own, "matched_finetune"). Benchmarks record it among the
# settings of their kept rows, so rows of the two rules are never mixed in one table.
FINETUNE_ORDER = "data_order"


def regrow_and_finetune(stage: Stage, pair: DenseSparse, allocation: dict[str, int], scores: Scores | None,
                        init: str | None, epochs: int, source: nn.Module | None = None,
                        swap: SwapSettings | None = None) -> dict[str, float]:
    """Regrow ``allocation`` into a copy of the sparse model (``init`` values, copied from ``source`` (default:
    the dense model) for ``dense``; ``scores`` pick positions; an empty allocation regrows nothing and needs
    neither), finetune ``epochs`` (AdamW, best epoch on val; ``swap``: with swap cycles at constant density) and
    report val/test accuracy (%), sparsity and count. Its batches are those a stage script draws
    (``Stage.train_from_start``, ``FINETUNE_ORDER``), so ``regrowth_greedy.py``'s first iteration, with the same
    finetune flags and no early stop, gives the same allocation the same accuracy; the benchmarks' arms call it in
    turn on one stage. Unlike the rest of this module it makes its generators itself, from the run seed."""
    gran, seed = stage.granularity, stage.run.seed
    regrowth = None  # an empty allocation: no kernel call, no init generator
    if allocation:
        regrowth = Regrowth(allocation, scores, init, pair.dense if source is None else source,
                            make_generator(seed, "regrowth_init", stage.device))
    tuning = Finetuning(FinetuneSettings(epochs=epochs, patience=0, swap=swap), stage.train_from_start(),
                        stage.data.val, LoopSettings(amp=stage.amp, progress=False, verbose=False))
    applied = apply_allocation(gran, pair.sparse, regrowth, tuning, test=stage.data.test)
    return {"val_acc": applied.fit.best_val_acc, "test_acc": applied.test_acc,
            "sparsity": gran.sparsity(applied.model), "regrown": applied.regrown}
