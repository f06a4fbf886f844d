"""The two layer scores a regrowth stage needs, computed with the stage's flags (see ``add_scoring_args``).

SSIM compares the dense and sparse models on the val split; saliency ``(dL/dθ)^2 θ^2`` is computed on
the training split, on the dense or the sparse model (``--saliency_model``), and cached under
``{save_dir}/{m_name}/cache/`` keyed by the reference checkpoint's content and every setting that
changes the result.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn as nn

from utils.paths import cache_dir
from utils.run import LOG, make_generator
from utils.saliency import cached_scores, param_saliency
from utils.ssim import layer_similarity
from utils.stage import DenseSparse, Stage

SCORE_ORDER = {"fisher": 2, "taylor": 1}  # --regrowth_score -> param_saliency order


def ssim_scores(stage: Stage, dense: nn.Module, sparse: nn.Module) -> dict[str, float]:
    """SSIM of every unit of the stage's granularity (its probe layer's output, ``sparse`` against ``dense``)
    on ``--ssim_num_batches`` val batches."""
    gran, began = stage.granularity, time.perf_counter()
    probes = {unit: gran.probe_layer(unit) for unit in gran.units()}
    batches = min(stage.args.ssim_num_batches, len(stage.data.val))
    LOG.info("SSIM: dense vs sparse feature maps of %d units on %d val batches ...", len(probes), batches)
    by_layer = layer_similarity(dense, sparse, stage.data.val, stage.args.ssim_num_batches, stage.amp,
                                layers=list(dict.fromkeys(probes.values())))
    LOG.info("SSIM: done in %.1f s", time.perf_counter() - began)
    return {unit: by_layer[layer] for unit, layer in probes.items()}


def saliency_scores(stage: Stage, pair: DenseSparse) -> dict[str, torch.Tensor]:
    """Per-entry unit scores on the reference ``--saliency_model`` picks: ``--regrowth_score fisher``
    (``mean (dL/dθ)^2 θ^2``, the saliency) or ``taylor`` (``mean |dL/dθ · θ|``), computed in eval mode (BN
    statistics untouched) and reduced by the stage's granularity (a group sums its slices); cached on disk."""
    args, gran = stage.args, stage.granularity
    model, path = (pair.dense, pair.dense_path) if args.saliency_model == "dense" else (pair.sparse, pair.sparse_path)
    # its own generator: whether the cache hits must not change the data order of later training
    loader = stage.data.train.with_generator(make_generator(args.seed, "saliency", stage.device))
    settings = {"model": stage.model_name, "dataset": stage.dataset, "seed": args.seed, "val_split": args.val_split,
                "train_subset": args.train_subset, "batch_size": args.batch_size, "augment": not args.no_augment,
                "reference": args.saliency_model, "num_batches": args.saliency_batches, "granularity": gran.name,
                "score": args.regrowth_score}

    def compute() -> dict[str, torch.Tensor]:
        began = time.perf_counter()
        LOG.info("saliency: %s scores of the %s model on %s train batches ...", args.regrowth_score,
                 args.saliency_model, args.saliency_batches or f"all {len(loader)}")
        order = SCORE_ORDER[args.regrowth_score]
        scores = gran.unit_scores(param_saliency(model, loader, gran.scored_params(), args.saliency_batches, order))
        LOG.info("saliency: done in %.1f s (cached for later runs)", time.perf_counter() - began)
        return scores

    return cached_scores(Path(path), compute, cache_dir(args.save_dir, stage.model_name), settings, stage.device)
