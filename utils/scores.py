"""The two layer scores a regrowth stage needs, computed with the stage's flags (see ``add_scoring_args``).

SSIM compares the dense and sparse models on the val split; saliency ``(dL/dθ)^2 θ^2`` is computed on
the training split, on the dense or the sparse model (``--saliency_model``), and cached under
``{save_dir}/{m_name}/cache/`` keyed by the reference checkpoint's content and every setting that
changes the result.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from utils.run import make_generator
from utils.saliency import cached_saliency
from utils.ssim import layer_similarity
from utils.stage import DenseSparse, Stage


def ssim_scores(stage: Stage, dense: nn.Module, sparse: nn.Module) -> dict[str, float]:
    """SSIM of every prunable layer of ``sparse`` against ``dense`` on ``--ssim_num_batches`` val batches."""
    return layer_similarity(dense, sparse, stage.data.val, stage.args.ssim_num_batches, stage.amp)


def saliency_scores(stage: Stage, pair: DenseSparse) -> dict[str, torch.Tensor]:
    """Saliency per prunable layer on the reference ``--saliency_model`` picks (cached on disk)."""
    args = stage.args
    model, path = (pair.dense, pair.dense_path) if args.saliency_model == "dense" else (pair.sparse, pair.sparse_path)
    # its own generator: whether the cache hits must not change the data order of later training
    loader = stage.data.train.with_generator(make_generator(args.seed, "saliency", stage.device))
    settings = {"model": stage.model_name, "dataset": stage.dataset, "seed": args.seed, "val_split": args.val_split,
                "train_subset": args.train_subset, "batch_size": args.batch_size,
                "augment": not args.no_augment, "reference": args.saliency_model}
    cache = Path(args.save_dir) / stage.model_name / "cache"
    return cached_saliency(path, model, loader, cache, settings, args.saliency_batches)
