"""``Stage``: the resolved set-up of one stage run (settings, device, model, data set, granularity), and how
every stage loads and saves models through it (``utils/cli/prepare.py`` builds one from the flags).

Everything that can fail on loading a checkpoint (another model, a checkpoint of another granularity, a
physical export where the full shape is needed, another dense parent) fails here, before any file is written.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from data import DataBundle, canonical_dataset, data_order
from data.loader import DeviceLoader
from models import create_model, model_spec
from utils.core.distributed import current_world
from utils.core.errors import ForeignMasks, UsageError
from utils.core.files import write_json
from utils.core.log import LOG
from utils.core.paths import pretrained_path
from utils.core.provenance import PROVENANCE_KEY, provenance
from utils.runtime.checkpoint import (
    LINEAGE_KEY,
    Checkpoint,
    check_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)
from utils.runtime.settings import RunSettings
from utils.runtime.train import precision_name, use_channels_last
from utils.runtime.upstream import inflate
from utils.sparsity.granularity import Granularity, default_granularity, get_granularity, granularity_class
from utils.sparsity.masks import effective_weight, prunable_modules
from utils.sparsity.physical import rebuild_exported

DEFAULT_DATASET = {32: "cifar10", 64: "tiny_imagenet"}  # by the model's input resolution


MOSTLY_ZEROS = 0.5  # a 'dense' model with at least this sparsity of exact zeros is warned about

@dataclass
class Stage:
    """The resolved set-up of one stage run, working at one granularity (``weight`` or ``channel``).

    ``run``: the settings every stage shares; ``flags``: the command line as given (a plain dict), recorded in
    what the stage writes (checkpoint meta ``args``, a search's resume settings) and never read for a decision."""

    run: RunSettings
    flags: dict
    device: torch.device
    model_name: str  # canonical registry name
    dataset: str  # canonical data set name
    data: DataBundle | None  # None for stages that need no images (export)
    num_classes: int
    granularity_name: str = field(default_factory=default_granularity)
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
        """Whether to use bf16 autocast (where the device has native bf16: CUDA, AMX / AVX512-BF16 CPUs)."""
        return self.run.amp

    @property
    def channels_last(self) -> bool:
        """Whether to use the channels_last memory layout."""
        return self.run.channels_last

    @property
    def speed(self) -> dict[str, bool]:
        """``amp`` and ``compile`` keyword arguments of ``LoopSettings``."""
        return self.run.speed

    @property
    def val_settings(self) -> dict:
        """What decides which val images this stage scores (data set, seed, val split, and the eval subset when
        one is set, so that caches written before the flag existed stay valid): the key of the caches that hold
        val results."""
        return {"dataset": self.dataset, **self.run.val_settings}

    def provenance(self) -> dict:
        """Where this stage's results come from: code, torch, device and CPU, threads, precision, data set
        (``utils/core/provenance.py``); written into every checkpoint's meta and summary it writes."""
        return provenance(self.device, precision_name(self.device, self.amp), self.data.record if self.data else None)

    def write_summary(self, path: Path, content: dict) -> None:
        """Write ``content`` as the JSON summary ``path``, with this stage's ``provenance``."""
        write_json(path, {**content, PROVENANCE_KEY: self.provenance()})

    def repeat_flags(self) -> str:
        """The flags that point a next stage at this run's model, data and folders (model, data set, data folder,
        subsets, save folder, device; defaults left out): what the ``next:`` suggestions start with."""
        parts = [f"--m_name {self.model_name}", f"--dataset {self.dataset}"]
        for flag, value, default in (("--data_dir", self.flags.get("data_dir"), "./data"),
                                     ("--train_subset", self.run.train_subset, None),
                                     ("--eval_subset", self.run.eval_subset, None),
                                     ("--save_dir", self.run.save_dir, "./runs"),
                                     ("--device", self.flags.get("device"), "auto")):
            if value is not None and str(value) != str(default):
                parts.append(f"{flag} {value}")
        return " ".join(parts)

    def shard_training_data(self) -> None:
        """Data-parallel training (under ``torchrun``): keep only this process's shard of the training split
        (``DeviceLoader.shard``; rank 0 keeps its data-order generator, so one process is unchanged)."""
        world = current_world()
        if not world.distributed:
            return
        if self.run.batch_size % world.size:
            raise UsageError(f"--batch_size {self.run.batch_size} is the global batch and must divide by the "
                             f"{world.size} processes")
        train = self.data.train
        generator = train.generator if world.is_main else data_order(self.run.seed, self.device, world.rank)
        self.data.train = train.shard(world.rank, world.size, generator)

    def train_from_start(self) -> DeviceLoader:
        """The training batches in the order a fresh stage draws them: the 'data_order' stream of the run seed
        from its start (this rank's own stream once the data is sharded, ``shard_training_data``). A process that
        finetunes several models in turn (the arms of a benchmark) gives each this loader, so each gets the
        batches its stage script would (``regrowth_greedy.py`` included)."""
        train = self.data.train
        rank = current_world().rank if train.shards > 1 else 0
        return train.with_generator(data_order(self.run.seed, self.device, rank))

    def build_model(self) -> nn.Module:
        """A freshly initialised model for this data set, on the device, in the chosen memory layout."""
        model = create_model(self.model_name, self.num_classes).to(self.device)
        return use_channels_last(model, self.channels_last)

    def load_model(self, path: str | Path, *, sparse: bool = False, reparam: bool = False,
                   exported: bool = False, dense: bool = False) -> nn.Module:
        """The model stored at ``path`` (any supported format) on the device.

        ``sparse``: a checkpoint without masks is a usage error (a pruned model was expected). A checkpoint
        of the other granularity always is. ``reparam``: give the model masks of this stage's granularity
        where it has none (pruning and regrowth need them). ``exported``: accept a physical export (only
        stages that just evaluate or finetune a model can use its smaller shapes). ``dense``: the dense model
        is expected: a checkpoint with masks is a usage error, one whose weights are mostly zeros a warning.
        """
        ckpt = read_checkpoint(path, trust_pickle=self.run.trust_pickle)
        self.lineages[str(path)] = ckpt.lineage
        if ckpt.granularity not in (None, self.granularity_name):  # masks of another granularity
            raise ForeignMasks(f"{path} {granularity_class(self.granularity_name).foreign_masks}", ckpt.granularity)
        if ckpt.export_history is not None and not exported:
            raise UsageError(f"{path} is a physical export (smaller shapes, no masks): this stage needs the full-shape "
                             f"checkpoint it was exported from ({ckpt.meta.get('parent', 'see its meta parent')})")
        if dense and ckpt.granularity is not None:
            raise UsageError(f"{path} is a pruned model ({ckpt.granularity} masks), not a dense one: pass the dense "
                             "model it was pruned from (pretrain.py's checkpoint/ckpt.pth) as --pretrained")
        model = model_from_checkpoint(ckpt, path, self.granularity, self.device, self.channels_last)
        if sparse and ckpt.granularity is None and self.granularity.sparsity(model) == 0:
            # a plain state dict whose masks were merged into its weights still counts: its zeros are the masks
            raise UsageError(f"{path} has no masks and no pruned {self.granularity.name}s: pass a pruned checkpoint")
        if dense and self.granularity.sparsity(model) >= MOSTLY_ZEROS:
            LOG.warning("%s, given as the dense model, has %.1f%% of its %ss at zero: it looks like a pruned model "
                        "with its masks merged; SSIM, saliency and dense inits will compare against it", path,
                        100 * self.granularity.sparsity(model), self.granularity.name)
        if reparam:
            self.granularity.ensure_masks(model)
        return model

    def layer_weights(self, path: str | Path) -> dict[str, torch.Tensor]:
        """The effective weight of every prunable layer of the model at ``path`` (e.g. the dense model's, which
        the ``saliency`` swap grow score multiplies), on the device."""
        return {name: effective_weight(module).detach()
                for name, module in prunable_modules(self.load_model(path)).items()}

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
                        num_classes=self.num_classes,
                        meta={"args": dict(self.flags), **lineage, PROVENANCE_KEY: self.provenance(), **meta},
                        channel_masks=masks, extra=extra or None)


def model_from_checkpoint(ckpt: Checkpoint, path: str | Path, granularity: Granularity, device: torch.device,
                          channels_last: bool = False) -> nn.Module:
    """The model ``ckpt`` (read from ``path``) holds, on ``device``, built as ``granularity``'s architecture and class
    count: the original's slimmed structured files brought to full shape with channel masks (``inflate``), a
    physical export rebuilt in its smaller shapes from its pruning history, masks loaded as ``torch.nn.utils.prune``
    reparametrisation (weight masks as stored, channel masks written into every slice of their groups). What
    ``Stage.load_model`` and the notebook API (``utils.runtime.api.load``) both build; another model, or keys and
    shapes that do not fit, is a ``UsageError``."""
    name, num_classes = granularity.model_name, granularity.num_classes
    check_model(ckpt, name, path)  # before the exported shapes are rebuilt
    if ckpt.source == "original-structured":  # a slimmed module with index maps: full shape + channel masks
        ckpt = inflate(granularity, create_model(name, num_classes), ckpt)
    if ckpt.export_history is None:
        model = create_model(name, num_classes)
    else:
        try:
            model = rebuild_exported(name, num_classes, granularity.input_size, ckpt.export_history)
        except Exception as exc:  # Torch-Pruning raises many types on a history that does not fit the model
            raise UsageError(f"the export history does not fit model '{name}' ({type(exc).__name__}); is the "
                             "checkpoint from another model or class count?") from exc
    model = use_channels_last(model.to(device), channels_last)
    load_weights(model, ckpt, name, path)
    if ckpt.channel_masks is not None:
        granularity.set_masks(model, ckpt.channel_masks)
    return model


EVAL_FLAGS = ("seed", "val_split", "eval_subset")  # the flags that pick a run's val and test images


def recorded_eval_flags(ckpt: Checkpoint) -> dict:
    """The ``EVAL_FLAGS`` a checkpoint's val and test accuracy were measured with (``eval_flags_in`` its meta)."""
    return eval_flags_in(ckpt.meta)


def eval_flags_in(meta: dict) -> dict:
    """The ``EVAL_FLAGS`` a checkpoint's ``meta`` records: its own args, or for an export the ``eval_args`` it took
    from its parent (those it lacks are absent)."""
    saved = {**(meta.get("args") or {}), **(meta.get("eval_args") or {})}
    return {key: saved[key] for key in EVAL_FLAGS if key in saved}


def resolve_names(model_name: str | None, dataset: str | None) -> tuple[str, str]:
    """Canonical (model, data set) names; the data set defaults to the one the model was built for."""
    if not model_name:
        raise UsageError("no model given: pass --m_name")
    spec = model_spec(model_name)
    return spec.name, canonical_dataset(dataset or DEFAULT_DATASET[spec.input_size])


@dataclass
class DenseSparse:
    """A dense model and a sparse (masked) model of the same architecture, with their files."""

    dense: nn.Module
    dense_path: Path
    sparse: nn.Module
    sparse_path: Path
    sparse_meta: dict = field(default_factory=dict)  # the sparse checkpoint's meta (the stage that wrote it, args)


ONE_FINETUNE_STAGES = ("prune_oneshot", "prune_gradual")  # a start pruned in one step, with one whole finetune


def finetune_suggestion(stage: Stage, ckpt: Path, start_meta: dict) -> str:
    """The ``next:`` command after a regrowth stage: ``finetune.py`` on ``ckpt`` with this run's flags, for as
    many epochs as the search's start had in its pruning finetune when it was pruned in one step
    (``start_meta``: that checkpoint's meta; the method gives both finetunes the same length), or the original
    schedule's 400 when the start does not say (an iterative start's epochs are per step, a regrown start's
    per episode)."""
    epochs = (start_meta.get("args") or {}).get("finetune_epochs")
    if start_meta.get("stage") in ONE_FINETUNE_STAGES and isinstance(epochs, int) and epochs > 0:
        why = f"as long as the start's pruning finetune, {epochs} epoch{'s' if epochs != 1 else ''}"
    else:
        epochs, why = 400, "the original schedule; fewer epochs for a quick run"
    return f"python finetune.py --ckpt {ckpt} {stage.repeat_flags()} --epochs {epochs}   (the final finetune: {why})"


def check_parent(stage: Stage, path: str | Path) -> None:
    """The checkpoint ``stage`` loaded from ``path`` must descend from the dense model it loaded first (see
    ``check_lineage``)."""
    dense_path, dense = next(iter(stage.lineages.items()), ("the dense model", None))
    check_lineage(Path(dense_path), dense, Path(path), stage.lineages.get(str(path)), stage.run.allow_other_dense)


def check_lineage(dense_path: Path, dense: str | None, sparse_path: Path, recorded: str | None,
                  allow_other_dense: bool = False) -> None:
    """Refuse to pair a sparse checkpoint with a dense model it was not pruned from (e.g. the dense one was
    retrained with --overwrite since): SSIM, saliency and dense init would all compare unrelated models.
    ``recorded``: the dense fingerprint the sparse file's meta records (None, e.g. files of the original
    code, is not checked). ``allow_other_dense`` (--allow_other_dense) pairs them on purpose."""
    if recorded is None or dense is None or recorded == dense or allow_other_dense:
        return
    raise UsageError(f"{sparse_path} was pruned from another dense model (fingerprint {recorded}) than {dense_path} "
                     f"({dense}); was the dense model retrained since? Pass the dense checkpoint it came from as "
                     "--pretrained, or --allow_other_dense to pair them anyway")


def dense_checkpoint(run: RunSettings, model_name: str) -> Path:
    """--pretrained, or pretrain.py's checkpoint for ``model_name``; a missing default says how to make it."""
    if run.pretrained:
        return Path(run.pretrained)
    path = pretrained_path(run.save_dir, model_name)
    if not path.is_file():
        raise UsageError(f"no dense model at {path}: run pretrain.py --m_name {model_name} (same --save_dir) first, "
                         "or pass --pretrained")
    return path
