"""What every stage script does first: its flags resolved into a ``Stage`` (device, model, data set and
granularity, seed, the data loaded, the shared settings). Loading and saving models is ``Stage``'s own
(``utils.runtime.stage``).

Everything that can fail on user input (unknown names, missing data, a model that cannot take the data
set's images, no CUDA, a checkpoint of the wrong granularity) fails here, before any file is written.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data import canonical_dataset, get_data
from models import model_spec
from utils.cli.flags import data_settings, run_settings
from utils.core.distributed import init_world
from utils.core.errors import UsageError
from utils.core.paths import pretrained_path
from utils.core.seeds import resolve_device, seed_everything
from utils.runtime.checkpoint import (
    LINEAGE_KEY,
    Checkpoint,
    read_checkpoint,
)
from utils.runtime.stage import DenseSparse, Stage, check_lineage, dense_checkpoint, resolve_names
from utils.sparsity.granularity import default_granularity


def checked_dataset(flag: str | None, recorded: str | None, path: Path) -> str | None:
    """The data set of a stage that reads the checkpoint ``path``, which records ``recorded``: that one, or the
    --dataset ``flag`` when the checkpoint records none; a flag that names another data set is a ``UsageError``."""
    if flag and recorded and canonical_dataset(flag) != canonical_dataset(recorded):
        raise UsageError(f"--dataset {flag}, but {path} was trained on {recorded}: leave --dataset out (the "
                         "checkpoint says which data set it was trained on)")
    return recorded or flag


def dense_dataset(args: argparse.Namespace, model_name: str | None) -> str | None:
    """For a stage that reads the dense model (it has --pretrained): the data set that model records, checked
    against --dataset (``checked_dataset``); --dataset where there is no such file yet (the stage says so later)."""
    if not hasattr(args, "pretrained") or not model_name:
        return args.dataset
    path = Path(args.pretrained) if args.pretrained else pretrained_path(args.save_dir, model_spec(model_name).name)
    if not path.is_file():
        return args.dataset
    recorded = read_checkpoint(path, trust_pickle=run_settings(args).trust_pickle).dataset
    return checked_dataset(args.dataset, recorded, path)


def prepare(args: argparse.Namespace, model_name: str | None = None, dataset: str | None = None,
            granularity: str | None = None) -> Stage:
    """Resolve ``args`` (or the given names) into a ``Stage`` with data loaded on the device, at
    ``granularity`` (None: the default one, weights). The data set is ``dataset``, else the one the dense model
    records (a stage with --pretrained; ``dense_dataset``), else --dataset, else the model's own."""
    run = run_settings(args)
    device = resolve_device(run.device)
    model_name = model_name or run.m_name
    name, dataset = resolve_names(model_name, dataset or dense_dataset(args, model_name))  # before the process group:
    _, device = init_world(device, share_gpus=run.share_gpus)  # a bad flag fails on every rank
    seed_everything(run.seed)
    data = get_data(dataset, data_settings(args), device=device)
    expected = model_spec(name).input_size
    if data.info.image_size != expected:
        raise UsageError(f"model '{name}' takes {expected}x{expected} images but '{dataset}' has "
                         f"{data.info.image_size}x{data.info.image_size}; pick a model built for this data set")
    return Stage(run, vars(args), device, name, dataset, data, data.info.num_classes,
                 granularity or default_granularity())


def prepare_model_only(args: argparse.Namespace, ckpt: Checkpoint, granularity: str) -> Stage:
    """A ``Stage`` without data for a checkpoint that records its model, data set and class count (ours do):
    enough to load, save and export models."""
    if not (ckpt.model and ckpt.num_classes):
        raise UsageError("the checkpoint does not record its model and class count (not a bridge-ckpt): "
                         "pass a checkpoint written by this toolkit")
    name, dataset = resolve_names(ckpt.model, ckpt.dataset)
    run = run_settings(args)
    return Stage(run, vars(args), init_world(resolve_device(run.device))[1], name, dataset, None, ckpt.num_classes,
                 granularity)


def prepare_dense_sparse(args: argparse.Namespace, sparse_path: str | Path, reparam: bool = False,
                         granularity: str | None = default_granularity()) -> tuple[Stage, DenseSparse]:
    """Stage for the sparse checkpoint ``sparse_path`` (model and data set default to the ones it records)
    and both models: the dense one from ``--pretrained`` (default ``pretrained_path``) and the sparse one,
    which must carry masks. ``granularity=None`` works at the checkpoint's own granularity."""
    sparse_ckpt = read_checkpoint(sparse_path, trust_pickle=run_settings(args).trust_pickle)
    stage = prepare(args, args.m_name or sparse_ckpt.model,
                    checked_dataset(args.dataset, sparse_ckpt.dataset, Path(sparse_path)),
                    granularity or sparse_ckpt.granularity)
    dense_path = dense_checkpoint(stage.run, stage.model_name)
    dense = stage.load_model(dense_path, dense=True)
    sparse = stage.load_model(sparse_path, sparse=True, reparam=reparam)
    check_lineage(dense_path, stage.lineages[str(dense_path)], Path(sparse_path), sparse_ckpt.meta.get(LINEAGE_KEY),
                  stage.run.allow_other_dense)
    return stage, DenseSparse(dense, dense_path, sparse, Path(sparse_path), sparse_ckpt.meta)
