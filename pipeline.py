"""The method against the recommended schedule in one command, at equal epochs after pruning: from one dense
model (pretrain.py), every sparse row ends at the same sparsity after the same finetune epochs after pruning:

* pruned straight: one-shot LAMP to the final sparsity (prune_unstructure.py, P epochs), then finetune.py M + F;
* gradual + swaps: pruned to it during one finetune of P + M + F epochs, with swap cycles every 0.83 epochs
  (weights only: the README's recommendation);
* the method: one-shot past the final sparsity (P), an RL search that regrows the difference
  (regrowth_oneshot.py; its episodes' mini-finetunes only choose the allocation: the regrown model is taken
  before its mini-finetune), then finetune.py M + F;
* greedy uniform: the same budget regrown from the same start by regrowth_greedy.py --greedy_mode uniform (its
  own finetune, M), then finetune.py F.

P, M and F are the preset's prune, mini and final epochs: every sparse row trains P + M + F epochs after pruning,
and the budget is exactly the units between the two one-shot prunes, so every sparse row has the same sparsity.

Both allocators regrow into the same units (every unit with room, --units all). With --granularity channel the
same with whole channels (prune_structure.py, regrowth_structure_oneshot.py, greedy channel regrowth, a physical
export of every final model; no gradual row). Stages run in-process through each script's main(); a stage whose
output exists is reused (the log says so) unless --overwrite.

    python pipeline.py                                  # --preset demo: synthetic data, about 3 min on 2 CPU cores
    python pipeline.py --granularity channel            # the same for channels
    python pipeline.py --seeds 1 2 3                    # once per seed under runs/demo/seed{n}/, then report.py
    python pipeline.py --preset smoke                   # every stage, briefly (checks an install)
    python pipeline.py --preset cifar10_resnet20_short --data_dir DATA   # the paper regime on a CPU (hours)
    python pipeline.py --device_profile profiles/mcu_64kb.json   # regrowth up to a device's storage limit
    python pipeline.py --granularity channel --device_profile profiles/edge_20mmac.json   # up to a MAC limit
    python pipeline.py --preset cifar10_resnet20        # the original settings (GPU days)
    python pipeline.py --preset cifar10_vgg16 --data_dir ./data

Writes everything under {save_dir}/{m_name}/ (--save_dir defaults to runs/{preset}) as the stage scripts do,
plus pipeline_summary.json / .csv with the final table (sparsity, params, epochs after pruning, val and test
accuracy of each model; for channels the params of the exported model; the JSON says where it came from) and
pipeline_summary.png, the results figure (channels: pipeline_structure_summary.*). The smoke preset takes about
a minute on one CPU thread.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import contextlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import evaluate
import export
import find_drop_point
import finetune
import pretrain
import prune_structure
import prune_unstructure
import regrowth_greedy
import regrowth_oneshot
import regrowth_structure_oneshot
import report
from data import DataSettings
from models import create_model
from utils.cli.commands import commands, granularity_flags
from utils.cli.flags import add_run_flags, add_swap_args, cli_main, new_parser, swap_settings
from utils.cli.settings_flags import add_settings_args
from utils.cli.types import positive_float, seed_int
from utils.core.errors import ReportedError, UsageError
from utils.core.files import write_csv, write_json
from utils.core.log import LOG, inner_stage, log_outputs, setup_logging
from utils.core.paths import (
    BEST_MODEL,
    BEST_PRE_FINETUNE,
    SUMMARY,
    boundary_dir,
    check_output_dir,
    check_output_file,
    greedy_dir,
    iteration_dir,
    model_root,
    pretrained_path,
    prune_checkpoint,
    prune_dir,
    regrowth_dir,
)
from utils.core.provenance import PROVENANCE_KEY, describe, provenance
from utils.core.seeds import resolve_device
from utils.core.timer import Timer
from utils.device.fill import DeviceTargets, device_targets
from utils.device.profiles import UNIT_NAMES, BudgetSettings, DeviceProfile
from utils.results.figures import table_lines
from utils.results.plots import plot_results
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.settings import RunSettings
from utils.runtime.stage import recorded_eval_flags
from utils.runtime.train import precision_name
from utils.sparsity.budget import prune_count
from utils.sparsity.granularity import Granularity, get_granularity, granularity_class, list_granularities
from utils.sparsity.masks import add_reparam
from utils.sparsity.swap import RECOMMENDED_EVERY_EPOCHS

VAL_SPLIT = DataSettings().val_split  # the stages' default: the pipeline passes no --val_split
UNITS = ["--units", "all"]  # the same units for the RL search and greedy: every unit with room
PRESETS: dict[str, dict] = {
    "demo": {"m_name": "resnet20", "dataset": "synthetic", "train_subset": 4500, "eval_subset": None,
             "batch_size": 128, "pretrain_epochs": 8, "prune_epochs": 3, "episodes": 5, "mini_epochs": 1,
             "final_epochs": 3, "ssim_num_batches": 2},
    # a check of the install, not a result: 768 training images, and 500 val and 500 test images per evaluation;
    # batches of 32 give the dense model the ~70 SGD steps it needs to leave chance (measured: 56% val after 3
    # epochs; 512 images or batches of 128 stay at chance), so a broken training path shows in its table
    "smoke": {"m_name": "resnet20", "dataset": "synthetic", "train_subset": 768, "eval_subset": 500,
              "batch_size": 32, "pretrain_epochs": 3, "prune_epochs": 1, "episodes": 2, "mini_epochs": 1,
              "final_epochs": 1, "ssim_num_batches": 1},
    "cifar10_resnet20": {"m_name": "resnet20", "dataset": "cifar10", "train_subset": None, "eval_subset": None,
                         "batch_size": 128, "pretrain_epochs": 200, "prune_epochs": 400, "episodes": 400,
                         "mini_epochs": 50, "final_epochs": 400, "ssim_num_batches": 64},
    # the paper regime on a CPU, as the seeds' tables are measured (docs/results/dense_recipe.md): the short dense
    # recipe (its epochs are the recipe's), 10 + 10 epochs after pruning, 200 cheap episodes of 10 steps scored on
    # 1,000 val images
    "cifar10_resnet20_short": {"m_name": "resnet20", "dataset": "cifar10", "train_subset": None, "eval_subset": None,
                               "batch_size": 128, "pretrain_epochs": None, "pretrain_flags": ["--recipe", "short"],
                               "prune_epochs": 10, "episodes": 200, "mini_epochs": 1, "final_epochs": 10,
                               "ssim_num_batches": 64,
                               "search_flags": ["--episode_steps", "10", "--episode_val_subset", "1000"]},
    "cifar10_vgg16": {"m_name": "vgg16", "dataset": "cifar10", "train_subset": None, "eval_subset": None,
                      "batch_size": 128, "pretrain_epochs": 200, "prune_epochs": 400, "episodes": 400,
                      "mini_epochs": 50, "final_epochs": 400, "ssim_num_batches": 64},
}
# the stage scripts of a granularity's command table (utils/cli/commands.py), by file name
STAGE_MAINS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "prune_unstructure.py": prune_unstructure.main, "prune_structure.py": prune_structure.main,
    "regrowth_oneshot.py": regrowth_oneshot.main, "regrowth_structure_oneshot.py": regrowth_structure_oneshot.main}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--preset", default="demo", choices=list(PRESETS),
                        help="schedules and model: demo (synthetic data, ~3 min on 2 CPU cores), smoke (checks an "
                             "install; about a minute on one CPU thread), cifar10_resnet20 / cifar10_vgg16 (the "
                             "original settings, GPU days), cifar10_resnet20_short (the short dense recipe, 21 "
                             "epochs after pruning: the paper regime on a CPU)")
    parser.add_argument("--granularity", default=list_granularities()[0], choices=list_granularities(),
                        help="prune and regrow weights or whole channels")
    parser.add_argument("--data_dir", default="./data", help="folder holding the data sets (not used by synthetic)")
    add_run_flags(parser, {"save_dir": "root of the run folders (default: runs/{preset}, with --device_profile "
                                       "runs/{preset}-{profile file name}, so stage-by-stage runs under runs/ never "
                                       "meet the pipeline's, nor a device run the demo)"}, defaults={"save_dir": None})
    add_run_flags(parser, {"pretrained": "start every row from this dense checkpoint instead of pretraining (e.g. a "
                                         "reference model of docs/results/data/dense/ with --preset "
                                         "cifar10_resnet20_short; {seed} in the path stands for the run's seed, for "
                                         "--seeds); its model and data set must be the preset's"})
    add_run_flags(parser, {"seed": "run seed of a single run"})
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=None, metavar="N",
                        help="run the whole chain once per seed under {save_dir}/seed{N}/ (finished stages are "
                             "reused, so a killed run continues), then print report.py's tables over the seeds")
    add_settings_args(parser, RunSettings, only=("device",))
    add_run_flags(parser, {"progress": "no progress bars"})
    add_run_flags(parser, {"compile": "torch.compile the model in every training stage"})
    add_run_flags(parser, {"amp": "fp32 in every stage: no bf16 autocast (the default on CUDA and AMX / AVX512-BF16 "
                                  "CPUs)"})
    add_run_flags(parser, {"overwrite": "redo stages whose outputs already exist"})
    parser.add_argument("--device_profile", default=None,
                        help="regrow up to a device's limit instead (a JSON profile, see profiles/; weights fill "
                             "max_bytes, channels max_macs): the pruning curve and its boundary, pruned-to-limit "
                             "against regrown-to-limit")
    parser.add_argument("--past_limit", type=positive_float, default=1.5,
                        help="with --device_profile: prune to this many times fewer kept weights (channels: MACs) "
                             "than the device holds, then regrow up to the limit")
    add_swap_args(parser)  # the final finetune of every sparse model (weights)
    args = parser.parse_args(argv)
    # a device run prunes along its own curve (--overwrite inside), so it never shares a folder with the demo
    device = f"-{Path(args.device_profile).stem}" if args.device_profile else ""
    args.save_dir = args.save_dir or str(Path("runs") / f"{args.preset}{device}")
    return args


def run_stage(name: str, main: Callable[[Sequence[str] | None], int], argv: list[str]) -> str:
    """Run one stage script in-process; its stdout is returned; a failure stops the pipeline. The stage logs
    to its own run folder; the pipeline's log file is restored afterwards."""
    LOG.info("== %s %s", name, " ".join(argv))
    logs = [Path(h.baseFilename) for h in LOG.handlers if isinstance(h, logging.FileHandler)]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), inner_stage():
            code = main(argv)
    finally:
        setup_logging(logs[0].parent if logs else None, logs[0].name if logs else "log.txt")
    if code != 0:
        LOG.info("stage %s failed (exit %d); the line above says why", name, code)
        raise ReportedError()
    return out.getvalue()


@dataclass
class Ledger:
    """What each stage of one chain did: ``(stage, "ran" | "reused", the file that shows it)``."""

    rows: list[tuple[str, str, Path]] = field(default_factory=list)
    overwrite: bool = False

    def once(self, name: str, main: Callable[[Sequence[str] | None], int], argv: list[str],
             output: Path | list[Path]) -> None:
        """Run a stage unless ``output`` (its last file, or every file of a list) shows it finished, in which
        case it is reused and the log says so (with the file); --overwrite redoes it, replacing what it wrote.
        Once a stage of the chain has run, every later one runs too: its inputs may have changed (a killed chain
        continues where it stopped; a chain whose early stage was redone never keeps results made from the old
        one)."""
        outputs = output if isinstance(output, list) else [output]
        missing = [path for path in outputs if not path.exists()]
        ran_before = any(status == "ran" for _, status, _ in self.rows)  # an input may be new: nothing stale after it
        if not missing and not self.overwrite and not ran_before:
            LOG.info("== %s: reused, %s exists from an earlier run (--overwrite redoes it)", name, outputs[-1])
            self.rows.append((name, "reused", outputs[-1]))
            return
        why = (f"no {missing[0]} yet" if missing else "--overwrite" if self.overwrite
               else "an earlier stage of this chain ran, so its output may be stale")
        LOG.info("== %s: running (%s)", name, why)
        run_stage(name, main, argv + ["--overwrite"])
        self.rows.append((name, "ran", outputs[-1]))

    def log(self) -> None:
        """One line per stage: ran or reused, and its output file."""
        LOG.info("stages:")
        for name, status, output in self.rows:
            LOG.info("  %-36s %-7s %s", name, status, output)


def scores(common: list[str], ckpt: Path) -> dict:
    """evaluate.py --json on ``ckpt`` (it accepts the shared flags and ignores --save_dir)."""
    return json.loads(run_stage("evaluate", evaluate.main, common + ["--ckpt", str(ckpt), "--json"]))


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    resolve_device(args.device)  # a bad --device fails here, before anything is written
    refusal = granularity_class(args.granularity).swap_refusal
    if swap_settings(args) is not None and refusal:  # (and --compile with swaps fails inside swap_settings)
        raise UsageError(f"--swap_every: the {args.granularity} pipeline's sparse models {refusal}")
    chain = run_device_chain if args.device_profile else run_chain
    if args.device_profile:
        device_profile(args)  # a bad profile fails here
        if args.past_limit <= 1:
            raise UsageError(f"--past_limit {args.past_limit} must be above 1: the start is pruned that many times "
                             "past the device limit, then regrown up to it")
    for seed in args.seeds or [args.seed]:
        given_dense(args, seed)  # every seed's dense file exists
    if not args.seeds:
        return chain(args, args.seed, Path(args.save_dir))
    if len(set(args.seeds)) < len(args.seeds):
        raise UsageError(f"--seeds {' '.join(map(str, args.seeds))}: give each seed once")
    for seed in args.seeds:
        check_output_dir(Path(args.save_dir) / f"seed{seed}", what="--save_dir")
    plot = check_output_file(Path(args.save_dir) / "report.png", overwrite=args.overwrite, what="the report figure")
    for seed in args.seeds:
        chain(args, seed, Path(args.save_dir) / f"seed{seed}")
    LOG.info("== report over seeds %s", " ".join(map(str, args.seeds)))
    return report.main([str(Path(args.save_dir) / f"seed{seed}") for seed in args.seeds] + [
        "--plot", str(plot)] + (["--overwrite"] if args.overwrite else []))


def run_chain(args: argparse.Namespace, seed: int, save_dir: Path) -> int:
    """The whole comparison for one seed into ``save_dir`` (finished stages reused unless --overwrite): every
    sparse row ends at the same sparsity after the same epochs after pruning (``prune_epochs + final_epochs``),
    and both allocators regrow the same budget into the same units (every unit with room)."""
    g, timer = granularity_class(args.granularity), Timer()
    p = {**PRESETS[args.preset], "sparsity": commands(g).demo_sparsity,
         "regrow_step": commands(g).demo_regrow_step}
    prune_main, search_main = STAGE_MAINS[commands(g).prune_script], STAGE_MAINS[commands(g).search_script]
    root = model_root(save_dir, p["m_name"])
    common, train = _flags(args, p, seed, save_dir)
    check_output_dir(root, what="--save_dir")
    setup_logging(root, "pipeline_log.txt")
    ledger = Ledger(overwrite=args.overwrite)
    once = ledger.once
    dense, train = _dense_model(args, once, train, p, save_dir)
    past, final = p["sparsity"], round(p["sparsity"] - p["regrow_step"], 10)
    oneshot = prune_dir(save_dir, p["m_name"], g, "oneshot")
    start, straight = (prune_checkpoint(oneshot, p["m_name"], g, exact_sparsity(g.name, p["m_name"], t))
                       for t in (past, final))
    once("prune (one-shot)", prune_main, train + ["--mode", "oneshot", "--target_sparsity", str(past), str(final),
                                                  "--finetune_epochs", str(p["prune_epochs"])], [start, straight])
    # every sparse row trains P + M + F epochs after pruning (prune, mini, final): the method's start had P, its
    # regrown model is taken before the search's mini-finetune (which only chose the allocation) and gets M + F;
    # greedy's own finetune is M, then F; pruned straight gets M + F after its P; gradual one run of P + M + F
    mini, final_epochs = p["mini_epochs"], p["final_epochs"]
    after = p["prune_epochs"] + mini + final_epochs
    gradual_row = not g.swap_refusal  # the recommended schedule, where the granularity has swap cycles (weights)
    if gradual_row:
        gradual = prune_checkpoint(prune_dir(save_dir, p["m_name"], g, "gradual"), p["m_name"], g,
                                   exact_sparsity(g.name, p["m_name"], final))
        once("prune (gradual + swaps)", prune_main, train + [
            "--mode", "gradual", "--target_sparsity", str(final), "--finetune_epochs", str(after),
            "--swap_every_epochs", str(RECOMMENDED_EVERY_EPOCHS)], gradual)
    search = ["--initial_ckpt", str(start), "--regrow_step", repr(exact_step(g.name, p["m_name"], past, final)),
              "--finetune_epochs", str(mini), "--ssim_num_batches", str(p["ssim_num_batches"]), *UNITS]
    cheap = p.get("search_flags", [])  # the RL search's episodes (greedy takes no episodes)
    rl_dir = regrowth_dir(save_dir, p["m_name"], g, "oneshot") / "pipeline"
    once("regrowth (RL)", search_main, train + search + cheap + ["--num_epochs", str(p["episodes"]), "--label",
                                                                  "pipeline"], rl_dir / SUMMARY)
    greedy_root = greedy_dir(save_dir, p["m_name"], g, "uniform")
    once("regrowth (greedy uniform)", regrowth_greedy.main,
         train + search + ["--greedy_mode", "uniform"] + granularity_flags(g), greedy_root / SUMMARY)
    starts = {"pruned straight": (straight, mini + final_epochs),  # label -> (final finetune's start, its epochs)
              "method: past + RL regrowth": (rl_dir / BEST_PRE_FINETUNE, mini + final_epochs),
              "past + greedy uniform": (iteration_dir(greedy_root, 0) / BEST_MODEL, final_epochs)}
    finals = {label: _final_model(once, args, train, label, ckpt, epochs, g.exportable)
              for label, (ckpt, epochs) in starts.items()}
    if gradual_row:  # its one finetune was the whole schedule
        finals = {"pruned straight": finals.pop("pruned straight"), "gradual + swaps": gradual, **finals}
    rows = [{"model": "dense", "epochs": 0, **_row(scores(common, dense), g.exportable)}]
    rows += [{"model": label, "epochs": after, **_row(scores(common, ckpt), g.exportable)}
             for label, ckpt in finals.items()]
    return _finish_chain(args, seed, root, g, p, rows, ledger, timer.seconds)


def given_dense(args: argparse.Namespace, seed: int) -> Path | None:
    """The --pretrained file of ``seed`` ({seed} filled in), None without the flag. A missing file, one of another
    model or data set than the preset's, or one trained with another seed or val split (its val images would be
    training images of this run's split) is a ``UsageError``, checked for every seed before anything is written."""
    if not args.pretrained:
        return None
    given = Path(args.pretrained.replace("{seed}", str(seed)))
    if not given.is_file():
        raise UsageError(f"--pretrained {given} does not exist")
    ckpt, p = read_checkpoint(given), PRESETS[args.preset]
    for what, recorded, wanted in (("model", ckpt.model, p["m_name"]), ("data set", ckpt.dataset, p["dataset"])):
        if recorded is not None and recorded != wanted:
            raise UsageError(f"--pretrained {given} is a {recorded} {what}, the preset {args.preset} uses {wanted}")
    split = recorded_eval_flags(ckpt)
    if split.get("seed", seed) != seed or split.get("val_split", VAL_SPLIT) != VAL_SPLIT:
        raise UsageError(f"--pretrained {given} was trained with --seed {split.get('seed')} --val_split "
                         f"{split.get('val_split', VAL_SPLIT)}: this run's val images (seed {seed}) were among its "
                         "training images; pass the dense model of each seed ({seed} in the path)")
    return given


def _dense_model(args: argparse.Namespace, once: Callable, train: list[str], p: dict,
                 save_dir: Path) -> tuple[Path, list[str]]:
    """The dense model every row starts from: --pretrained when given (e.g. a reference model of
    docs/results/data/dense/), else pretrain.py with the preset's schedule; and the training flags of the later
    stages (with --pretrained pointing at it when it was given)."""
    given = given_dense(args, int(train[train.index("--seed") + 1]))
    if given is not None:
        return given, train + ["--pretrained", str(given)]
    dense = pretrained_path(save_dir, p["m_name"])
    epochs = ["--epochs", str(p["pretrain_epochs"])] if p["pretrain_epochs"] else []  # else the recipe's
    once("pretrain", pretrain.main, train + p.get("pretrain_flags", []) + epochs, dense.with_name(SUMMARY))
    return dense, train


def _final_model(once: Callable, args: argparse.Namespace, train: list[str], label: str, ckpt: Path, epochs: int,
                 exports: bool) -> Path:
    """finetune.py ``epochs`` on ``ckpt`` (the final finetune every row shares; with the pipeline's swap flags)
    and, for channels, its physical export; returns the finetuned checkpoint."""
    tuned = ckpt.with_name(f"{ckpt.stem}_final{_swap_tag(args)}.pth")
    once(f"finetune {label}", finetune.main, train + ["--ckpt", str(ckpt), "--save_path", str(tuned),
                                                      "--epochs", str(epochs), *_swap_flags(args)], tuned)
    if exports:  # the final models' physical export (and its timing)
        once(f"export {label}", export.main, ["--ckpt", str(tuned), "--device", args.device],
             tuned.with_name(f"{tuned.stem}_exported.pth"))
    return tuned


def _finish_chain(args: argparse.Namespace, seed: int, root: Path, g: type[Granularity], p: dict,
                  rows: list[dict], ledger: Ledger, seconds: float) -> int:
    """Write the table (CSV; JSON with each row's provenance, the one of its checkpoint, and the table's own; the
    figure), print it and the next command. ``seconds``: this call's wall clock; ``reused_stages`` says how many
    stages came from an earlier run (their time is not in it)."""
    table = root / f"{g.summary_stem}.csv"
    write_csv(table, rows)
    for row in rows:  # where each row's model was made (a reused stage may come from another commit or machine)
        row[PROVENANCE_KEY] = read_checkpoint(row["checkpoint"]).meta.get(PROVENANCE_KEY)
    device = resolve_device(args.device)
    record = provenance(device, precision_name(device, not args.no_amp), (rows[0][PROVENANCE_KEY] or {}).get("data"))
    summary = {"preset": args.preset, "granularity": g.name, "seed": seed, "seconds": round(seconds, 1),
               "reused_stages": sum(status == "reused" for _, status, _ in ledger.rows), **p, "rows": rows,
               "units": UNITS[1], PROVENANCE_KEY: record}
    write_json(table.with_suffix(".json"), summary)
    figure = table.with_suffix(".png")
    plot_results(rows, g.name, f"{p['m_name']} on {p['dataset']}, preset {args.preset}, seed {seed}: equal epochs "
                 "after pruning", figure)
    ledger.log()
    print("\n" + "\n".join(table_lines(summary)))
    print(f"epochs: finetune epochs after pruning, the same for every sparse row; both allocators regrow the "
          f"{g.name}s between the two sparsities into every unit with room\n{describe(record)}\n")
    best = max(rows[1:], key=lambda r: r["val_acc"])
    log_outputs([table, table.with_suffix(".json"), figure, f"every stage's files under {root}/"],
                f"python evaluate.py --ckpt {best['checkpoint']} --per_layer   (the best on val: {best['model']}; "
                f"or python pipeline.py --seeds 1 2 3{_same_job(args)} for mean ± std)")
    return 0


def _same_job(args: argparse.Namespace) -> str:
    """The flags that name this job's preset and granularity when they are not the defaults."""
    return ((f" --preset {args.preset}" if args.preset != "demo" else "")
            + "".join(f" {flag}" for flag in granularity_flags(granularity_class(args.granularity))))


def _swap_flags(args: argparse.Namespace) -> list[str]:
    """The swap-cycle flags of the final finetunes (none without --swap_every)."""
    if swap_settings(args) is None:
        return []
    interval = (["--swap_every_epochs", str(args.swap_every_epochs)] if args.swap_every_epochs
                else ["--swap_every", str(args.swap_every)])
    return [*interval, "--swap_fraction", str(args.swap_fraction), "--swap_until",
            str(args.swap_until), "--grow_score", args.grow_score, "--drop_score", args.drop_score]


def _swap_tag(args: argparse.Namespace) -> str:
    """What a final model's file name adds for swap cycles (a plain final finetune is not reused for them)."""
    if swap_settings(args) is None:
        return ""
    every = f"{args.swap_every_epochs:g}ep" if args.swap_every_epochs else str(args.swap_every)
    return (f"_swap{every}_{args.swap_fraction:g}_{args.swap_until:g}_{args.grow_score}"
            f"_{args.drop_score}")


def _flags(args: argparse.Namespace, p: dict, seed: int, save_dir: Path) -> tuple[list[str], list[str]]:
    """(flags every stage takes, the same plus the training-only ones)."""
    common = ["--m_name", p["m_name"], "--dataset", p["dataset"], "--data_dir", args.data_dir, "--save_dir",
              str(save_dir), "--seed", str(seed), "--device", args.device] + (
        ["--no_progress"] if args.no_progress else []) + (["--no_amp"] if args.no_amp else []) + (
        ["--eval_subset", str(p["eval_subset"])] if p["eval_subset"] else [])
    train = common + ["--batch_size", str(p["batch_size"])] + (
        ["--train_subset", str(p["train_subset"])] if p["train_subset"] else []) + (
        ["--compile"] if args.compile else [])
    return common, train


def device_profile(args: argparse.Namespace) -> DeviceProfile:
    """The --device_profile of the run."""
    return BudgetSettings(device_profile=args.device_profile).profile()


def run_device_chain(args: argparse.Namespace, seed: int, save_dir: Path) -> int:
    """Regrowth up to a device's limit, for one seed: the one-shot pruning curve and its boundary
    (find_drop_point.py), the densest model that fits (pruned straight to the limit), a start pruned
    --past_limit times past it, an RL search that regrows up to the limit (weights: exactly to the storage
    limit in bytes; channels: within the MAC limit of the export), and the same total finetune for both; prints the
    limit, the boundary estimates, both accuracies and the margins."""
    p, profile, timer = PRESETS[args.preset], device_profile(args), Timer()
    m, gran = p["m_name"], get_granularity(args.granularity, p["m_name"])
    g = gran.name
    prune_main, search_main = STAGE_MAINS[commands(gran).prune_script], STAGE_MAINS[commands(gran).search_script]
    reference = create_model(m)
    add_reparam(reference)
    total = gran.total(reference)
    bound = device_targets(profile, gran, reference, args.past_limit)
    at_limit, past = bound.at_limit, bound.start
    grid = [t for t in commands(gran).boundary_grid
            if min(abs(t - at_limit), abs(t - past)) > 1e-3 and t < 1 - 1 / total]
    targets = sorted({*grid, at_limit, past})
    root = model_root(save_dir, m)
    common, train = _flags(args, p, seed, save_dir)
    check_output_dir(root, what="--save_dir")
    setup_logging(root, "pipeline_log.txt")
    LOG.info("device %s: %s (%s sparsity %.4f); start at %s sparsity %.4f", profile.name, bound.describe, g,
             at_limit, g, past)
    ledger = Ledger(overwrite=args.overwrite)
    once = ledger.once
    dense, train = _dense_model(args, once, train, p, save_dir)
    folder = prune_dir(save_dir, m, gran, "oneshot")
    files = {t: prune_checkpoint(folder, m, gran, prune_count(t, total) / total) for t in targets}
    once("prune (curve)", prune_main, train + ["--mode", "oneshot", "--target_sparsity",
                                               *[f"{t:.10f}" for t in targets], "--finetune_epochs",
                                               str(p["prune_epochs"])], [files[t] for t in targets])
    boundary = boundary_dir(save_dir, m, folder)
    once("boundary", find_drop_point.main, common + ["--model_dir", str(folder), "--out", str(boundary)],
         boundary / "boundary.json")
    label = f"device_{profile.name}"
    search_dir = regrowth_dir(save_dir, m, gran, "oneshot") / label
    once("regrowth to the limit", search_main, train + [
        "--initial_ckpt", str(files[past]), "--device_profile", args.device_profile, "--label", label,
        "--num_epochs", str(p["episodes"]), "--finetune_epochs", str(p["mini_epochs"]),
        "--ssim_num_batches", str(p["ssim_num_batches"])], search_dir / SUMMARY)
    rows = []
    for name, ckpt, epochs in (("pruned to the limit", files[at_limit], p["final_epochs"] + p["mini_epochs"]),
                               ("regrown to the limit (RL)", search_dir / BEST_MODEL, p["final_epochs"])):
        tuned = ckpt.with_name(f"{ckpt.stem}_final{_swap_tag(args)}.pth")
        once(f"finetune {name}", finetune.main, train + ["--ckpt", str(ckpt), "--save_path", str(tuned),
                                                         "--epochs", str(epochs), *_swap_flags(args)], tuned)
        report_ = json.loads(run_stage("evaluate", evaluate.main, common + [
            "--ckpt", str(tuned), "--json", "--device_profile", args.device_profile]))
        margin = report_["device"]["limits"][bound.limit]
        rows.append({"model": name, "sparsity": report_["unit_sparsity"], "weights_kept": report_["params_nonzero"],
                     "cost": margin["cost"], "margin": margin["margin"], "fits": report_["device"]["fits"],
                     "val_acc": report_["val_acc"], "test_acc": report_["test_acc"], "checkpoint": str(tuned)})
    estimates = json.loads((boundary / "boundary.json").read_text())["estimates"]
    summary = {"profile": asdict(profile), "granularity": g, "limit": bound.limit, "limit_sparsity": at_limit,
               "start_sparsity": past, "boundary": estimates, "rows": rows, "seconds": timer.seconds}
    write_csv(root / "device_summary.csv", rows)
    for row in rows:  # where each row's model was made (in the JSON)
        row[PROVENANCE_KEY] = read_checkpoint(row["checkpoint"]).meta.get(PROVENANCE_KEY)
    write_json(root / "device_summary.json", summary)
    ledger.log()
    _print_device(profile, bound, summary)
    print()
    log_outputs([root / "device_summary.csv", root / "device_summary.json", boundary / "boundary.png"],
                f"python evaluate.py --ckpt {rows[1]['checkpoint']} --device_profile {args.device_profile}")
    return 0


def _print_device(profile: DeviceProfile, targets: DeviceTargets, summary: dict) -> None:
    g, unit = summary["granularity"], UNIT_NAMES[targets.limit]
    print(f"\ndevice {profile.name}: {targets.describe} ({g} sparsity {summary['limit_sparsity']:.4f})")
    print("boundary of the one-shot curve (val): " + ", ".join(
        f"{k} {'none' if v is None else f'{v:.4f}'}" for k, v in summary["boundary"].items()))
    print(f"\n{'model':<28} {g + ' sparsity':>16} {unit:>11} {'margin':>10} {'val acc':>8} {'test acc':>9}")
    for r in summary["rows"]:
        print(f"{r['model']:<28} {r['sparsity']:>16.4f} {r['cost']:>11,.0f} {r['margin']:>+10,.0f} "
              f"{r['val_acc']:>7.2f}% {r['test_acc']:>8.2f}%{'' if r['fits'] else '  DOES NOT FIT'}")
    print(f"({summary['seconds']:.0f} s)")


def exact_step(granularity: str, model_name: str, past: float, final: float) -> float:
    """The --regrow_step whose budget, floor(step · N_tot), is exactly the units between a one-shot prune to
    ``past`` and one to ``final`` (``prune_count`` rounds, the budget floors: 0.01 of 270,896 weights asks
    2,708, while 0.99 and 0.98 keep 2,709 apart)."""
    total = get_granularity(granularity, model_name).total(create_model(model_name))
    return (prune_count(past, total) - prune_count(final, total)) / total


def exact_sparsity(granularity: str, model_name: str, target: float) -> float:
    """The sparsity a one-shot prune to ``target`` reaches: ``prune_count(target, N_tot)`` whole units of N_tot."""
    total = get_granularity(granularity, model_name).total(create_model(model_name))
    return prune_count(target, total) / total


def _row(report: dict, exported: bool) -> dict:
    """A table row from evaluate.py's report: the granularity's sparsity and the params the model really
    needs: nonzero prunable weights, or (``exported``) all parameters of the exported or dense model."""
    params = report.get("params", report["model_params"]) if exported else report["params_nonzero"]
    return {"sparsity": report["unit_sparsity"], "params": params,
            **{k: report[k] for k in ("val_acc", "test_acc", "checkpoint")}}


if __name__ == "__main__":
    raise SystemExit(main())
