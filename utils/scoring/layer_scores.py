"""The two layer scores a regrowth stage needs, computed with its ``ScoringSettings`` (flags: ``add_scoring_args``).

SSIM compares the dense and sparse models on the val split; saliency ``F · θ^2`` (``F`` the diagonal Fisher
estimate of ``--fisher``: the original's batch-level one, or the per-image empirical Fisher) is computed on
the training split, on the dense or the sparse model (``--saliency_model``), and cached under
``{save_dir}/{m_name}/cache/`` keyed by the reference checkpoint's content and every setting that
changes the result.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from utils.core.log import LOG
from utils.core.paths import cache_dir
from utils.core.seeds import make_generator
from utils.core.timer import Timer
from utils.runtime.settings import ScoringSettings
from utils.runtime.stage import DenseSparse, Stage
from utils.scoring.saliency import cached_scores, param_saliency
from utils.scoring.ssim import attention_maps, layer_similarity

SCORE_ORDER = {"fisher": 2, "taylor": 1}  # --regrowth_score -> param_saliency order


def ssim_scores(stage: Stage, scoring: ScoringSettings, dense: nn.Module, sparse: nn.Module) -> dict[str, float]:
    """SSIM of every unit of the stage's granularity (its probe layer's output, ``sparse`` against ``dense``)
    on ``scoring.ssim_num_batches`` val batches."""
    gran, timer = stage.granularity, Timer()
    probes = {unit: gran.probe_layer(unit) for unit in gran.units()}
    batches = min(scoring.ssim_num_batches, len(stage.data.val))
    LOG.info("SSIM: dense vs sparse feature maps of %d units on %d val batch%s ...", len(probes), batches,
             "" if batches == 1 else "es")
    by_layer = layer_similarity(dense, sparse, stage.data.val, scoring.ssim_num_batches, stage.amp,
                                layers=list(dict.fromkeys(probes.values())))
    LOG.info("SSIM: done in %.1f s", timer.seconds)
    return {unit: by_layer[layer] for unit, layer in probes.items()}


def silent_units(stage: Stage, model: nn.Module) -> dict[str, float]:
    """{unit: NaN} for every unit of the stage's granularity whose probe layer never runs on one val batch
    (no forward hook fires, e.g. EfficientNet's ``layers.0.conv1``): the SSIM such a unit would get, for the
    allocators that use no other SSIM, at the cost of one forward pass."""
    gran = stage.granularity
    probes = {unit: gran.probe_layer(unit) for unit in gran.units()}
    ran = attention_maps([model], stage.data.val, 1, list(dict.fromkeys(probes.values())), stage.amp)[0]
    return {unit: math.nan for unit, layer in probes.items() if layer not in ran}


def saliency_scores(stage: Stage, scoring: ScoringSettings, pair: DenseSparse) -> dict[str, torch.Tensor]:
    """Per-entry unit scores on the reference ``--saliency_model`` picks: ``--regrowth_score fisher``
    (``F · θ^2``, the saliency, with ``F`` the ``--fisher`` estimate: ``batch``, the mean over batches of the
    squared batch-mean gradient, or ``per_sample``, the empirical Fisher) or ``taylor`` (``mean |dL/dθ| · |θ|``),
    computed in eval mode (BN statistics untouched) and reduced by the stage's granularity (a group sums its
    slices); cached on disk."""
    run, gran = stage.run, stage.granularity
    on_dense = scoring.saliency_model == "dense"
    model, path = (pair.dense, pair.dense_path) if on_dense else (pair.sparse, pair.sparse_path)
    # its own generator: whether the cache hits must not change the data order of later training
    loader = stage.data.train.with_generator(make_generator(run.seed, "saliency", stage.device))
    settings = {"model": stage.model_name, "dataset": stage.dataset, "seed": run.seed, "val_split": run.val_split,
                "train_subset": run.train_subset, "batch_size": run.batch_size, "augment": run.augment,
                "reference": scoring.saliency_model, "num_batches": scoring.saliency_batches, "granularity": gran.name,
                "score": scoring.regrowth_score,
                **({} if scoring.fisher == "batch" else {"fisher": scoring.fisher})}  # the original's keys kept

    def compute() -> dict[str, torch.Tensor]:
        timer = Timer()
        LOG.info("saliency: %s scores (%s gradients) of the %s model on %s train batches ...", scoring.regrowth_score,
                 "per-image" if scoring.fisher == "per_sample" else "batch-mean", scoring.saliency_model,
                 scoring.saliency_batches or f"all {len(loader)}")
        order = SCORE_ORDER[scoring.regrowth_score]
        scores = gran.unit_scores(param_saliency(model, loader, gran.scored_params(), scoring.saliency_batches, order,
                                                 scoring.fisher))
        LOG.info("saliency: done in %.1f s (cached for later runs)", timer.seconds)
        return scores

    return cached_scores(Path(path), compute, cache_dir(run.save_dir, stage.model_name), settings, stage.device)
