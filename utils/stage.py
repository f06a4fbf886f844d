"""What every stage script does first: resolve device, model and data set, seed, and load the data.

Everything that can fail on user input (unknown names, missing data, a model that cannot take the data
set's images, no CUDA) fails here, before any file is written.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from data import DataBundle, canonical_dataset, get_data
from models import create_model, model_spec
from utils.checkpoint import load_weights, read_checkpoint
from utils.errors import UsageError
from utils.masks import add_reparam, prunable_modules
from utils.run import resolve_device, seed_everything
from utils.train import use_channels_last

DEFAULT_DATASET = {32: "cifar10", 64: "tiny_imagenet"}  # by the model's input resolution


def pretrained_path(save_dir: str | Path, model_name: str) -> Path:
    """Where pretrain.py keeps the best dense model: ``{save_dir}/{model_name}/checkpoint/ckpt.pth``."""
    return Path(save_dir) / model_name / "checkpoint" / "ckpt.pth"


@dataclass
class Stage:
    """The resolved set-up of one stage run."""

    args: argparse.Namespace
    device: torch.device
    model_name: str  # canonical registry name
    dataset: str  # canonical data set name
    data: DataBundle

    @property
    def amp(self) -> bool:
        """Whether to use bf16 autocast (CUDA only, unless --no_amp)."""
        return not getattr(self.args, "no_amp", False)

    @property
    def channels_last(self) -> bool:
        """Whether to use the channels_last memory layout (unless --no_channels_last)."""
        return not getattr(self.args, "no_channels_last", False)

    def build_model(self) -> nn.Module:
        """A freshly initialised model for this data set, on the device, in the chosen memory layout."""
        model = create_model(self.model_name, self.data.info.num_classes).to(self.device)
        return use_channels_last(model, self.channels_last)

    def load_model(self, path: str | Path, *, require_masks: bool = False, reparam: bool = False) -> nn.Module:
        """The model stored at ``path`` (any supported format) on the device.

        ``require_masks``: a checkpoint without masks is a usage error (a sparse model was expected).
        ``reparam``: give every prunable layer a mask (pruning and regrowth need one).
        """
        ckpt = read_checkpoint(path, trust_pickle=getattr(self.args, "trust_pickle", False))
        if require_masks and not ckpt.has_masks:
            raise UsageError(f"{path} has no masks (weight_orig / weight_mask): pass a pruned checkpoint")
        model = self.build_model()
        load_weights(model, ckpt, self.model_name, path)
        if reparam:
            add_reparam(model)
        return model


def resolve_names(model_name: str | None, dataset: str | None) -> tuple[str, str]:
    """Canonical (model, data set) names; the data set defaults to the one the model was built for."""
    if not model_name:
        raise UsageError("no model given: pass --m_name")
    spec = model_spec(model_name)
    return spec.name, canonical_dataset(dataset or DEFAULT_DATASET[spec.input_size])


def prepare(args: argparse.Namespace, model_name: str | None = None, dataset: str | None = None) -> Stage:
    """Resolve ``args`` (or the given names) into a ``Stage`` with data loaded on the device."""
    device = resolve_device(args.device)
    name, dataset = resolve_names(model_name or args.m_name, dataset or args.dataset)
    seed_everything(args.seed)
    data = get_data(dataset, args.data_dir, device=device, seed=args.seed, val_split=args.val_split,
                    batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                    train_subset=args.train_subset, download=not args.no_download,
                    augment=not getattr(args, "no_augment", False),
                    channels_last=not getattr(args, "no_channels_last", False))
    expected = model_spec(name).input_size
    if data.info.image_size != expected:
        raise UsageError(f"model '{name}' takes {expected}x{expected} images but '{dataset}' has "
                         f"{data.info.image_size}x{data.info.image_size}; pick a model built for this data set")
    return Stage(args, device, name, dataset, data)


@dataclass
class DenseSparse:
    """A dense model and a sparse (masked) model of the same architecture, with their files."""

    dense: nn.Module
    dense_path: Path
    sparse: nn.Module
    sparse_path: Path

    @property
    def dense_weights(self) -> dict[str, torch.Tensor]:
        """The dense model's prunable weights by layer name (for ``--init_strategy dense``); no copies."""
        return {name: module.weight.detach() for name, module in prunable_modules(self.dense).items()}


def prepare_dense_sparse(args: argparse.Namespace, sparse_path: str | Path,
                         reparam: bool = False) -> tuple[Stage, DenseSparse]:
    """Stage for the sparse checkpoint ``sparse_path`` (model and data set default to the ones it records)
    and both models: the dense one from ``--pretrained`` (default ``pretrained_path``) and the sparse one,
    which must carry masks."""
    sparse_ckpt = read_checkpoint(sparse_path, trust_pickle=getattr(args, "trust_pickle", False))
    stage = prepare(args, args.m_name or sparse_ckpt.model, args.dataset or sparse_ckpt.dataset)
    dense_path = Path(args.pretrained or pretrained_path(args.save_dir, stage.model_name))
    dense = stage.load_model(dense_path)
    sparse = stage.load_model(sparse_path, require_masks=True, reparam=reparam)
    return stage, DenseSparse(dense, dense_path, sparse, Path(sparse_path))
