"""What every stage script does first (resolve device, model, data set and granularity, seed, load the
data) and how every stage loads and saves models.

Everything that can fail on user input (unknown names, missing data, a model that cannot take the data
set's images, no CUDA, a checkpoint of the wrong granularity) fails here, before any file is written.
"""
from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from data import DataBundle, canonical_dataset, get_data
from models import create_model, model_spec
from utils.checkpoint import LINEAGE_KEY, Checkpoint, check_model, load_weights, read_checkpoint, save_checkpoint
from utils.distributed import current_world, init_world
from utils.errors import UsageError
from utils.export import rebuild_exported
from utils.granularity import Granularity, get_granularity
from utils.paths import pretrained_path
from utils.run import make_generator, resolve_device, seed_everything
from utils.train import use_channels_last
from utils.upstream import inflate

DEFAULT_DATASET = {32: "cifar10", 64: "tiny_imagenet"}  # by the model's input resolution
_WRONG_KIND = {  # (checkpoint granularity, stage granularity) -> what to tell the user
    ("channel", "weight"): "holds channel masks (a structured checkpoint); this stage works on weight masks: use "
                           "the structured scripts (prune_structure.py, export.py), or evaluate.py / finetune.py",
    ("weight", "channel"): "holds unstructured weight masks; this stage needs a dense or channel-pruned checkpoint "
                           "(prune_structure.py writes them)",
}


@dataclass
class Stage:
    """The resolved set-up of one stage run, working at one granularity (``weight`` or ``channel``)."""

    args: argparse.Namespace
    device: torch.device
    model_name: str  # canonical registry name
    dataset: str  # canonical data set name
    data: DataBundle | None  # None for stages that need no images (export)
    num_classes: int
    granularity_name: str = "weight"
    lineages: dict[str, str | None] = field(default_factory=dict)  # loaded file -> its dense model's fingerprint

    @property
    def lineage(self) -> str | None:
        """Fingerprint of the dense model the first loaded checkpoint descends from (recorded in what this stage
        saves, so every sparse file knows its dense parent); None before a load or when unknown."""
        return next((value for value in self.lineages.values() if value), None)

    @functools.cached_property
    def granularity(self) -> Granularity:
        """Units, masks, scores and regrowth at this stage's granularity (built once per architecture)."""
        return get_granularity(self.granularity_name, self.model_name, self.num_classes)

    @property
    def amp(self) -> bool:
        """Whether to use bf16 autocast (CUDA only, unless --no_amp)."""
        return not getattr(self.args, "no_amp", False)

    @property
    def channels_last(self) -> bool:
        """Whether to use the channels_last memory layout (unless --no_channels_last)."""
        return not getattr(self.args, "no_channels_last", False)

    @property
    def speed(self) -> dict[str, bool]:
        """``amp`` and ``compile`` keyword arguments of ``finetune`` (honours --no_amp and --compile)."""
        return {"amp": self.amp, "compile": bool(getattr(self.args, "compile", False))}

    @property
    def val_settings(self) -> dict:
        """What decides which val images this stage scores (data set, seed, val split, and the eval subset when
        one is set, so that caches written before the flag existed stay valid): the key of the caches that hold
        val results."""
        subset = {} if self.args.eval_subset is None else {"eval_subset": self.args.eval_subset}
        return {"dataset": self.dataset, "seed": self.args.seed, "val_split": self.args.val_split, **subset}

    def shard_training_data(self) -> None:
        """Data-parallel training (under ``torchrun``): keep only this process's shard of the training split
        (``DeviceLoader.shard``; rank 0 keeps its data-order generator, so one process is unchanged)."""
        world = current_world()
        if not world.distributed:
            return
        if self.args.batch_size % world.size:
            raise UsageError(f"--batch_size {self.args.batch_size} is the global batch and must divide by the "
                             f"{world.size} processes")
        train = self.data.train
        generator = (train.generator if world.is_main
                     else make_generator(self.args.seed, f"data_order/rank{world.rank}", self.device))
        self.data.train = train.shard(world.rank, world.size, generator)

    def build_model(self) -> nn.Module:
        """A freshly initialised model for this data set, on the device, in the chosen memory layout."""
        model = create_model(self.model_name, self.num_classes).to(self.device)
        return use_channels_last(model, self.channels_last)

    def load_model(self, path: str | Path, *, sparse: bool = False, reparam: bool = False,
                   exported: bool = False) -> nn.Module:
        """The model stored at ``path`` (any supported format) on the device.

        ``sparse``: a checkpoint without masks is a usage error (a pruned model was expected). A checkpoint
        of the other granularity always is. ``reparam``: give the model masks of this stage's granularity
        where it has none (pruning and regrowth need them). ``exported``: accept a physical export (only
        stages that just evaluate or finetune a model can use its smaller shapes).
        """
        ckpt = read_checkpoint(path, trust_pickle=getattr(self.args, "trust_pickle", False))
        self.lineages[str(path)] = ckpt.lineage
        wrong = _WRONG_KIND.get((ckpt.granularity, self.granularity_name))
        if wrong:
            raise UsageError(f"{path} {wrong}")
        if ckpt.export_history is not None and not exported:
            raise UsageError(f"{path} is a physical export (smaller shapes, no masks): this stage needs the full-shape "
                             f"checkpoint it was exported from ({ckpt.meta.get('parent', 'see its meta parent')})")
        check_model(ckpt, self.model_name, path)  # before the exported shapes are rebuilt
        if ckpt.source == "original-structured":  # a slimmed module with index maps: full shape + channel masks
            ckpt = inflate(self.granularity, create_model(self.model_name, self.num_classes), ckpt)
        model = self._model_for(ckpt)
        load_weights(model, ckpt, self.model_name, path)
        if sparse and ckpt.granularity is None and self.granularity.sparsity(model) == 0:
            # a plain state dict whose masks were merged into its weights still counts: its zeros are the masks
            raise UsageError(f"{path} has no masks and no pruned {self.granularity.name}s: pass a pruned checkpoint")
        if ckpt.channel_masks is not None:
            self.granularity.set_masks(model, ckpt.channel_masks)
        if reparam:
            self.granularity.ensure_masks(model)
        return model

    def _model_for(self, ckpt: Checkpoint) -> nn.Module:
        """A model shaped for ``ckpt``: the registry's, or the exported shapes its pruning history gives."""
        if ckpt.export_history is None:
            return self.build_model()
        try:
            model = rebuild_exported(self.model_name, self.num_classes, model_spec(self.model_name).input_size,
                                     ckpt.export_history)
        except Exception as exc:  # Torch-Pruning raises many types on a history that does not fit the model
            raise UsageError(f"the export history does not fit model '{self.model_name}' ({type(exc).__name__}); "
                             "is the checkpoint from another model or class count?") from exc
        return use_channels_last(model.to(self.device), self.channels_last)

    def save(self, path: Path, model: nn.Module, meta: dict, extra: dict | None = None,
             export_history: list | None = None) -> None:
        """Write ``model`` as a bridge-ckpt with this run's names and args and, at the channel granularity,
        its channel masks; ``meta`` adds the stage's own entries. ``export_history``: ``model`` is a physical
        export (no masks left) with that Torch-Pruning history."""
        masks = self.granularity.checkpoint_masks(model) if export_history is None else None
        extra = {**(extra or {}), **({"export": {"history": export_history}} if export_history is not None else {})}
        sparse = export_history is not None or masks is not None or any(
            name.endswith("weight_mask") for name, _ in model.named_buffers())  # a dense output is its own parent
        lineage = {LINEAGE_KEY: self.lineage} if self.lineage and sparse else {}
        save_checkpoint(path, model, model_name=self.model_name, dataset=self.dataset,
                        num_classes=self.num_classes, meta={"args": vars(self.args), **lineage, **meta},
                        channel_masks=masks, extra=extra or None)


EVAL_FLAGS = ("seed", "val_split", "eval_subset")  # the flags that pick a run's val and test images


def recorded_eval_flags(ckpt: Checkpoint) -> dict:
    """The ``EVAL_FLAGS`` a checkpoint's val and test accuracy were measured with: its own recorded args, or
    for an export the ``eval_args`` it took from its parent (those it lacks are absent)."""
    saved = {**(ckpt.meta.get("args") or {}), **(ckpt.meta.get("eval_args") or {})}
    return {key: saved[key] for key in EVAL_FLAGS if key in saved}


def resolve_names(model_name: str | None, dataset: str | None) -> tuple[str, str]:
    """Canonical (model, data set) names; the data set defaults to the one the model was built for."""
    if not model_name:
        raise UsageError("no model given: pass --m_name")
    spec = model_spec(model_name)
    return spec.name, canonical_dataset(dataset or DEFAULT_DATASET[spec.input_size])


def prepare(args: argparse.Namespace, model_name: str | None = None, dataset: str | None = None,
            granularity: str = "weight") -> Stage:
    """Resolve ``args`` (or the given names) into a ``Stage`` with data loaded on the device."""
    _, device = init_world(resolve_device(args.device))
    name, dataset = resolve_names(model_name or args.m_name, dataset or args.dataset)
    seed_everything(args.seed)
    data = get_data(dataset, args.data_dir, device=device, seed=args.seed, val_split=args.val_split,
                    batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
                    train_subset=args.train_subset, eval_subset=args.eval_subset, download=not args.no_download,
                    augment=not getattr(args, "no_augment", False),
                    channels_last=not getattr(args, "no_channels_last", False))
    expected = model_spec(name).input_size
    if data.info.image_size != expected:
        raise UsageError(f"model '{name}' takes {expected}x{expected} images but '{dataset}' has "
                         f"{data.info.image_size}x{data.info.image_size}; pick a model built for this data set")
    return Stage(args, device, name, dataset, data, data.info.num_classes, granularity)


def prepare_model_only(args: argparse.Namespace, ckpt: Checkpoint, granularity: str) -> Stage:
    """A ``Stage`` without data for a checkpoint that records its model, data set and class count (ours do):
    enough to load, save and export models."""
    if not (ckpt.model and ckpt.num_classes):
        raise UsageError("the checkpoint does not record its model and class count (not a bridge-ckpt): "
                         "pass a checkpoint written by this toolkit")
    name, dataset = resolve_names(ckpt.model, ckpt.dataset)
    return Stage(args, init_world(resolve_device(args.device))[1], name, dataset, None, ckpt.num_classes, granularity)


@dataclass
class DenseSparse:
    """A dense model and a sparse (masked) model of the same architecture, with their files."""

    dense: nn.Module
    dense_path: Path
    sparse: nn.Module
    sparse_path: Path


def dense_checkpoint(args: argparse.Namespace, model_name: str) -> Path:
    """--pretrained, or pretrain.py's checkpoint for ``model_name``; a missing default says how to make it."""
    if args.pretrained:
        return Path(args.pretrained)
    path = pretrained_path(args.save_dir, model_name)
    if not path.is_file():
        raise UsageError(f"no dense model at {path}: run pretrain.py --m_name {model_name} (same --save_dir) first, "
                         "or pass --pretrained")
    return path


def prepare_dense_sparse(args: argparse.Namespace, sparse_path: str | Path, reparam: bool = False,
                         granularity: str | None = "weight") -> tuple[Stage, DenseSparse]:
    """Stage for the sparse checkpoint ``sparse_path`` (model and data set default to the ones it records)
    and both models: the dense one from ``--pretrained`` (default ``pretrained_path``) and the sparse one,
    which must carry masks. ``granularity=None`` works at the checkpoint's own granularity."""
    sparse_ckpt = read_checkpoint(sparse_path, trust_pickle=getattr(args, "trust_pickle", False))
    stage = prepare(args, args.m_name or sparse_ckpt.model, args.dataset or sparse_ckpt.dataset,
                    granularity or sparse_ckpt.granularity or "weight")
    dense_path = dense_checkpoint(args, stage.model_name)
    dense = stage.load_model(dense_path)
    sparse = stage.load_model(sparse_path, sparse=True, reparam=reparam)
    check_lineage(args, dense_path, stage.lineages[str(dense_path)], Path(sparse_path),
                  sparse_ckpt.meta.get(LINEAGE_KEY))
    return stage, DenseSparse(dense, dense_path, sparse, Path(sparse_path))


def check_parent(stage: Stage, path: str | Path) -> None:
    """The checkpoint ``stage`` loaded from ``path`` must descend from the dense model it loaded first (see
    ``check_lineage``)."""
    dense_path, dense = next(iter(stage.lineages.items()), ("the dense model", None))
    check_lineage(stage.args, Path(dense_path), dense, Path(path), stage.lineages.get(str(path)))


def check_lineage(args: argparse.Namespace, dense_path: Path, dense: str | None, sparse_path: Path,
                  recorded: str | None) -> None:
    """Refuse to pair a sparse checkpoint with a dense model it was not pruned from (e.g. the dense one was
    retrained with --overwrite since): SSIM, saliency and dense init would all compare unrelated models.
    ``recorded``: the dense fingerprint the sparse file's meta records (None, e.g. files of the original
    code, is not checked). --allow_other_dense pairs them on purpose."""
    if recorded is None or dense is None or recorded == dense or getattr(args, "allow_other_dense", False):
        return
    raise UsageError(f"{sparse_path} was pruned from another dense model (fingerprint {recorded}) than {dense_path} "
                     f"({dense}); was the dense model retrained since? Pass the dense checkpoint it came from as "
                     "--pretrained, or --allow_other_dense to pair them anyway")
