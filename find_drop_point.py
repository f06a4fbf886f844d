"""Where does accuracy collapse? Boundary estimates of a pruning run's accuracy-vs-sparsity curve, on val.

Reads the checkpoints of one pruning run (--model_dir: a prune_unstructure.py / prune_structure.py folder,
or any folder of checkpoints of one model), evaluates each once on the **val** split (per-image
correctness, cached in {save_dir}/{m_name}/cache/ by file fingerprint and settings) and estimates, each as
the last sparsity before the break:

    residual     the original's residual break against a running line fit (fixed: the point before the break)
    two_segment  the original's two-segment fit (the corner)
    kneedle      the Kneedle knee (kneed package)
    tolerance    the largest sparsity before val accuracy first drops more than --tolerance pp (1.0) below the
                 dense model's, with a --bootstrap (1000) resample interval over the val images

Points are taken in the run's step order (prune_log.csv) when it has one, else by measured sparsity; a
sparsity that does not increase from step to step, a checkpoint the log lists but the folder lacks, or no
checkpoint is an error. A gradual run's folder (prune_unstructure.py --mode gradual, one checkpoint per
target) is read like a one-shot one; fewer than 4 points is an error that names the one-shot command making
a curve. At the channel granularity (structured runs) the sparsity is the channel sparsity.

Example:
    python find_drop_point.py --m_name resnet20 --model_dir runs/resnet20/iterative

Writes to --out (default {save_dir}/{m_name}/boundary/{model_dir name}/): boundary.json (every estimate, the
curve, the interval) and boundary.png (the curve with each estimate marked).
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.cli.commands import commands
from utils.cli.flags import add_checkpoint_args, add_common_args, add_run_flags, cli_main, new_parser
from utils.cli.prepare import checked_dataset, prepare
from utils.cli.types import non_negative_float, non_negative_int
from utils.core.cache import file_stamp, read_cache, table_entries, write_cache
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import PRUNE_LOG, boundary_dir, check_output_dir, folder_cache
from utils.results.boundary import CHANCE_MARGIN, ESTIMATORS, check_curve, tolerance_boundary
from utils.results.plots import plot_boundary
from utils.results.records import PRUNE_FOLDERS
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.stage import check_lineage, dense_checkpoint
from utils.runtime.train import correct_per_image
from utils.sparsity.granularity import granularity_class


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--model_dir", required=True, help="folder of one pruning run's checkpoints")
    add_common_args(parser, m_name_default=None)
    add_checkpoint_args(parser)
    parser.add_argument("--tolerance", type=non_negative_float, default=1.0,
                        help="accuracy drop (pp) below the dense model's val accuracy that still counts as safe")
    parser.add_argument("--bootstrap", type=bootstrap_count, default=1000,
                        help="resamples of the val images for the tolerance interval (0: none)")
    parser.add_argument("--out", default=None, help="output folder")
    add_run_flags(parser, {"overwrite": "replace an earlier estimate's files"})
    return parser.parse_args(argv)


def checkpoints(folder: Path) -> tuple[list[Path], bool]:
    """(the run's checkpoints, whether they are in step order): those prune_log.csv lists, in step order, or
    else every *.pth but exports and finetunes (ordered later by their sparsity). Fewer than 4, or a listed
    file that is missing, is a usage error."""
    if not folder.is_dir():
        raise UsageError(f"--model_dir {folder} is not a folder")
    log = read_csv(folder / PRUNE_LOG, {"step": int, "checkpoint": str})
    if log:
        paths = [folder / r["checkpoint"] for r in sorted(log, key=lambda r: int(r["step"]))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise UsageError(f"{folder / PRUNE_LOG} lists checkpoints that are not there: {', '.join(missing)}")
    else:
        derived = ("_exported", "_final", "_finetuned")  # finetuned or exported copies (also _final_swap...)
        paths = sorted(p for p in folder.glob("*.pth") if not any(tag in p.stem for tag in derived))
    if not paths:
        raise UsageError(f"--model_dir {folder} holds no checkpoints (*.pth, or those prune_log.csv lists)"
                         f"{curve_command(folder)}")
    if len(paths) < 4:
        raise UsageError(f"a boundary needs at least 4 points of the accuracy-vs-sparsity curve; {folder} has "
                         f"{len(paths)} checkpoint(s){' (gradual pruning: one per target)' * is_gradual(folder)}"
                         f"{curve_command(folder)}")
    return paths, bool(log)


def is_gradual(folder: Path) -> bool:
    """Whether ``folder`` is a gradual pruning run's (``prune_unstructure.py --mode gradual``)."""
    return PRUNE_FOLDERS.get(folder.name, ("", ""))[1] == "gradual"


def curve_command(folder: Path) -> str:
    """What makes a curve this script reads, as the end of an error line, for a pruning run's folder
    (``{save_dir}/{model}/{oneshot|iterative|gradual|structured_...}``): the one-shot folder beside it when that
    has 4 points, else a one-shot run to the targets of the folder's granularity that it lacks (a gradual run
    has one point per target). Empty for any other folder (its model and save dir are not known)."""
    if folder.name not in PRUNE_FOLDERS:
        return ""
    cls = granularity_class(PRUNE_FOLDERS[folder.name][0])
    oneshot = folder.with_name(f"{cls.prune_prefix}oneshot")
    done = {round(float(r["sparsity"]), 4) for r in read_csv(oneshot / PRUNE_LOG, {"sparsity": float})}
    if len(done) >= 4 and oneshot != folder:
        return f"; the one-shot curve beside it has {len(done)} points: pass --model_dir {oneshot}"
    targets = " ".join(f"{t:g}" for t in commands(cls).boundary_grid if round(t, 4) not in done)
    where = folder if len(folder.parts) >= 3 else folder.resolve()  # {save_dir}/{model}/{folder}
    model, save_dir = where.parent.name, where.parent.parent
    return (f"; make a curve with python {commands(cls).prune_script} --m_name {model} --save_dir {save_dir} "
            "--mode oneshot "
            f"--target_sparsity {targets} (and the run's own data and --finetune_epochs flags), then pass "
            f"--model_dir {oneshot}")


MAX_BOOTSTRAP = 10_000  # resamples: each holds an index per val image (10,000 x 10,000 images: 800 MB)


def bootstrap_count(text: str) -> int:
    """--bootstrap: a whole number from 0 to ``MAX_BOOTSTRAP``."""
    value = non_negative_int(text)
    if value > MAX_BOOTSTRAP:
        raise argparse.ArgumentTypeError(f"{value} is more than {MAX_BOOTSTRAP:,} resamples (1,000 give a stable "
                                         "interval)")
    return value


def read_val_cache(path: Path, images: int) -> dict | None:
    """The val-correctness cache (``{"settings", "entries"}``), or None when there is none or, after one warning,
    when it is damaged, hand-edited or holds another number of val images (``utils.core.cache``)."""
    def valid(cache: dict) -> bool:
        entries = cache.get("entries")
        return isinstance(entries, dict) and all(_valid_entry(entry, images) for entry in entries.values())
    return read_cache(path, "val results", valid)


def _valid_entry(entry: object, images: int) -> bool:
    """An entry as ``evaluate_all`` writes it: ``images`` per-image results, a sparsity, the file's stamp."""
    correct = entry.get("correct") if isinstance(entry, dict) else None
    return (isinstance(correct, torch.Tensor) and tuple(correct.shape) == (images,)
            and isinstance(entry.get("sparsity"), (int, float)) and isinstance(entry.get("fingerprint"), list))


def evaluate_all(stage, paths: list[Path], dense: Path) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """(sparsities, per-image correctness [points, N], dense correctness [N]) on val; cached."""
    settings = {**stage.val_settings, "granularity": stage.granularity.name}
    cache_path = folder_cache(stage.run.save_dir, stage.model_name, paths[0].parent, "val_correct", ".pt")
    entries = table_entries(read_val_cache(cache_path, stage.data.val.num_samples), settings)
    fresh = {}
    for path in [dense, *paths]:
        key = str(path.resolve())
        entry = entries.get(key)
        if entry is None or entry["fingerprint"] != file_stamp(path) or "lineage" not in entry:
            try:
                model = stage.load_model(path, sparse=path != dense)
            except UsageError as exc:  # name the file among the folder's many
                message = str(exc)
                raise UsageError(message if str(path) in message else f"{path}: {message}") from None
            LOG.info("val: %s", path.name)
            entry = {"fingerprint": file_stamp(path), "sparsity": stage.granularity.sparsity(model),
                     "correct": correct_per_image(model, stage.data.val, amp=stage.amp),
                     "lineage": stage.lineages[str(path)]}
        fresh[key] = entry
    for path in paths:  # every point must be pruned from this dense model (or --allow_other_dense)
        recorded = fresh[str(path.resolve())].get("lineage")
        check_lineage(dense, fresh[str(dense.resolve())].get("lineage"), path, recorded, stage.run.allow_other_dense)
    write_cache(cache_path, {"settings": settings, "entries": fresh}, "val results")
    rows = [fresh[str(p.resolve())] for p in paths]
    return ([r["sparsity"] for r in rows], torch.stack([r["correct"] for r in rows]),
            fresh[str(dense.resolve())]["correct"])


def print_estimates(estimates: dict[str, float | None], tolerance: dict, sparsity: list[float],
                    accuracy: list[float], args: argparse.Namespace, chance: float) -> None:
    """Each estimate with the val accuracy at it (or why there is none), the tolerance interval where a boundary
    exists, and where the curve reaches chance (``chance``: accuracy %, 100 / classes)."""
    print(f"{'estimate':<12} {'sparsity':>9} {'val acc':>8}   (each: the last sparsity before the break)")
    for name, value in estimates.items():
        if value is None:
            why = (f"the first point is already more than {args.tolerance:g} pp below the dense model"
                   if name == "tolerance" else "no break found")
            print(f"{name:<12} {'none':>9} {'':>8}   {why}")
            continue
        nearest = min(range(len(sparsity)), key=lambda i: abs(sparsity[i] - value))
        extra = ""
        if name == "tolerance" and "interval" in tolerance:
            lo, hi = tolerance["interval"]
            extra = f"   {100 * tolerance['level']:.0f}% interval [{lo:.4f}, {hi:.4f}] ({args.bootstrap} resamples)"
        print(f"{name:<12} {value:>9.4f} {accuracy[nearest]:>7.2f}%{extra}")
    print(f"dense val {tolerance['dense_accuracy']:.2f}%, tolerance {args.tolerance} pp")
    dead = [i for i in range(len(accuracy)) if all(a < chance + CHANCE_MARGIN for a in accuracy[i:])]
    if dead:
        print(f"the curve is at chance (within {CHANCE_MARGIN:g} points of {chance:.1f}%) from sparsity "
              f"{sparsity[dead[0]]:.4f} on: an estimate there marks no usable model")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.model_dir)
    paths, in_step_order = checkpoints(folder)
    first = read_checkpoint(paths[0], trust_pickle=args.trust_pickle)
    stage = prepare(args, args.m_name or first.model, checked_dataset(args.dataset, first.dataset, paths[0]),
                    first.granularity)
    out = check_output_dir(args.out or boundary_dir(args.save_dir, stage.model_name, folder), what="--out",
                           products=["boundary.json"], overwrite=args.overwrite)
    dense = dense_checkpoint(stage.run, stage.model_name)
    sparsity, correct, dense_correct = evaluate_all(stage, paths, dense)
    if not in_step_order:  # a plain folder of checkpoints: by measured sparsity
        order = sorted(range(len(paths)), key=sparsity.__getitem__)
        paths, sparsity, correct = [paths[i] for i in order], [sparsity[i] for i in order], correct[order]
    accuracy = (100 * correct.float().mean(1)).tolist()
    check_curve(sparsity, accuracy)
    setup_logging(out)
    estimates = {name: fn(sparsity, accuracy) for name, fn in ESTIMATORS.items()}
    tolerance = tolerance_boundary(sparsity, correct, dense_correct, args.tolerance, args.bootstrap, args.seed)
    estimates["tolerance"] = tolerance["boundary"]
    result = {"model": stage.model_name, "dataset": stage.dataset, "granularity": stage.granularity.name,
              "model_dir": str(folder), "split": "val", "estimates": estimates, "tolerance": tolerance,
              "curve": [{"checkpoint": p.name, "sparsity": s, "val_acc": a}
                        for p, s, a in zip(paths, sparsity, accuracy, strict=True)]}
    stage.write_summary(out / "boundary.json", result)
    plot_boundary(sparsity, accuracy, estimates, tolerance, f"{stage.model_name} {folder.name}: val accuracy",
                  out / "boundary.png")
    print_estimates(estimates, tolerance, sparsity, accuracy, args, 100.0 / stage.num_classes)
    usable = [p for p, e in zip(paths, sparsity, strict=True) if tolerance["boundary"] is not None
              and e <= tolerance["boundary"]]
    pick = usable[-1] if usable else paths[0]  # the sparsest checkpoint within the tolerance, or the first
    log_outputs([out / "boundary.json", out / "boundary.png"],
                f"python evaluate.py --ckpt {pick} --device_profile profiles/mcu_64kb.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
