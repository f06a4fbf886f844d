"""Building blocks of the accuracy experiments (bench_reward_noise, bench_matched, bench_search,
bench_reward_fidelity, bench_setting_b): the stage scripts run
in-process for the dense and pruned models (reused when a folder already holds them); the regrow + finetune of a
given allocation is the library's ``utils.regrow.apply.regrow_and_finetune``.

Every experiment flag that the stage scripts share (model, data, batch sizes, seed) is passed on as is.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import pretrain
import prune_unstructure
from utils.cli.types import positive_int
from utils.core.errors import UsageError
from utils.core.files import NEWER_FLAGS, differing, write_json
from utils.core.paths import pretrained_path, prune_checkpoint, prune_dir
from utils.runtime.resume import resume_point
from utils.sparsity.granularity import granularity_class

DATA_FLAGS = ("m_name", "dataset", "data_dir", "batch_size", "eval_batch_size", "train_subset", "eval_subset",
              "device")


def add_experiment_args(parser: argparse.ArgumentParser) -> None:
    """Model, data and the short schedules of the dense and pruned starting models."""
    parser.add_argument("--m_name", default="resnet20")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--save_dir", default="./runs/experiments", help="root of the experiment's run folders")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch_size", type=positive_int, default=128)
    parser.add_argument("--eval_batch_size", type=positive_int, default=500)
    parser.add_argument("--train_subset", type=positive_int, default=None, help="use only N training images")
    parser.add_argument("--eval_subset", type=positive_int, default=None,
                        help="evaluate on only N val and N test images")
    parser.add_argument("--pretrain_epochs", type=int, default=15, help="dense pretraining epochs")
    parser.add_argument("--dense", default=None, metavar="PATH",
                        help="start every seed from this dense checkpoint instead of pretraining one; '{seed}' in it "
                             "is replaced by the seed (e.g. docs/results/data/dense/resnet20_cifar10_seed{seed}.pth, "
                             "the reference models)")
    parser.add_argument("--prune_epochs", type=int, default=4, help="finetune epochs after the one-shot prune")


def check_settings(root: Path, settings: dict, ignore: tuple[str, ...] = ()) -> None:
    """Reuse ``root``'s finished stages only for the settings they were made with: ``settings.json`` is
    written on first use and compared after (``differing``, values as text; a mismatch is a usage error: pick
    another --save_dir). Keys in ``ignore`` are not compared; a ``NEWER_FLAGS`` flag the stored file predates had
    its old value."""
    path = root / "settings.json"
    current = {k: str(v) for k, v in settings.items() if k not in ignore}
    if path.is_file():
        differ = differing(json.loads(path.read_text()), current, ignore,
                           older={k: str(v) for k, v in NEWER_FLAGS.items()}, both_ways=True)
        if differ:
            raise UsageError(f"{root} was made with other settings ({path}: {', '.join(differ)} differ); use "
                             f"another --save_dir to rerun with these")
    write_json(path, current)


def stage_flags(args: argparse.Namespace, seed: int) -> list[str]:
    """The shared stage-script flags of ``args`` for ``seed`` (progress bars off)."""
    flags = ["--seed", str(seed), "--no_progress"]
    for name in DATA_FLAGS:
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def run(main, argv: list[str]) -> None:
    """A stage script's ``main(argv)``; a non-zero exit stops the experiment."""
    code = main(argv)
    if code:
        raise UsageError(f"{main.__module__} {' '.join(argv)} failed with exit code {code}")


def dense_model(args: argparse.Namespace, seed: int, root: Path) -> Path:
    """The dense model of ``seed``: the ``--dense`` file for it when given, else ``pretrain.py`` under ``root``
    (kept when it finished (its summary.json exists), resumed when it was interrupted)."""
    if args.dense:
        given = Path(args.dense.replace("{seed}", str(seed)))
        if not given.is_file():
            raise UsageError(f"--dense: {given} (seed {seed}) does not exist")
        return given
    path = pretrained_path(root, args.m_name)
    if not path.with_name("summary.json").is_file():
        resume = ["--resume"] if path.with_name("last.pth").is_file() else []
        run(pretrain.main, stage_flags(args, seed) + ["--save_dir", str(root), "--epochs", str(args.pretrain_epochs),
                                                       "--patience", "0", *resume])
    return path


def pruned_model(args: argparse.Namespace, seed: int, root: Path, dense: Path, sparsity: float, epochs: int,
                 label: str, mode: str = "oneshot", extra: Sequence[str] = ()) -> Path:
    """LAMP pruning of ``dense`` to ``sparsity`` with an ``epochs`` finetune, in ``root/label``: one-shot, or
    ``mode="gradual"`` (during the finetune); ``extra``: more prune_unstructure.py flags (e.g. swap cycles). A
    finetune an earlier run left unfinished continues from its resume point (``--resume``)."""
    save = root / label
    weights = granularity_class("weight")
    path = prune_checkpoint(prune_dir(save, args.m_name, weights, mode), args.m_name, weights, sparsity)
    unfinished = resume_point(path).is_file()
    if not path.is_file() or unfinished:  # the checkpoint is written once its finetune finished
        run(prune_unstructure.main, stage_flags(args, seed) + [
            "--save_dir", str(save), "--pretrained", str(dense), "--mode", mode, "--target_sparsity",
            str(sparsity), "--finetune_epochs", str(epochs), "--patience", "0", *extra,
            *(["--resume"] if unfinished else [])])
    return path
