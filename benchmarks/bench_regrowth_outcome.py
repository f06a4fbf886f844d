"""The seeds' "regrowth outcome" protocol, matched: from a model pruned past the targets, regrow step by step back
to each of them, against one-shot pruning straight to each with as many finetune epochs after pruning.

Per seed (--seeds), with the stage scripts (run folders under --save_dir, reused on a rerun):

* start: one-shot LAMP from the seed's dense model (--dense, e.g. the reference models) to --start_sparsity,
  finetuned --prune_epochs;
* regrown: ``regrowth_greedy.py`` from the start, --steps iterations of --regrow_step · N_tot weights each
  (--greedy_mode over every unit, zero init at the saliency's positions), each iteration finetuned --step_epochs
  (AdamW, best epoch on val, no early stop) and carried forward: after step k the model has had
  --prune_epochs + k · --step_epochs epochs after pruning, at about --start_sparsity - k · --regrow_step;
* one-shot k: LAMP from the dense model straight to that sparsity, one finetune of the same
  --prune_epochs + k · --step_epochs epochs.

Test accuracy is reported, never selected on. Each seed's rows are one small JSON in --results (settings digest,
the dense model's fingerprint, provenance), so a later run adds seeds; every call prints the table over the kept
seeds: per step, mean ± std of both and their difference paired by seed.

    python -m benchmarks.bench_regrowth_outcome --seeds 1 --dataset cifar10 --data_dir DATA \\
        --dense docs/results/data/dense/resnet20_cifar10_seed{seed}.pth --start_sparsity 0.99 --regrow_step 0.01 \\
        --steps 4 --prune_epochs 10 --step_epochs 10 --save_dir runs/outcome --results docs/results/data/outcome
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import regrowth_greedy
from benchmarks.common import machine
from benchmarks.experiment import add_experiment_args, check_settings, dense_model, pruned_model, run, stage_flags
from utils.cli.flags import cli_main
from utils.cli.types import open_fraction, positive_int, seed_int
from utils.core.files import write_json
from utils.core.paths import SUMMARY, greedy_dir
from utils.core.provenance import PROVENANCE_KEY
from utils.regrow.allocation import GREEDY_ALLOCATIONS
from utils.results.figures import mean_std
from utils.runtime.checkpoint import read_checkpoint
from utils.sparsity.granularity import granularity_class

NOT_SETTINGS = ("seeds", "device", "save_dir", "data_dir", "results")  # which seeds run and where: not settings


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1])
    parser.add_argument("--start_sparsity", type=open_fraction, default=0.99)
    parser.add_argument("--regrow_step", type=open_fraction, default=0.01, help="weights regrown per step / N_tot")
    parser.add_argument("--steps", type=positive_int, default=4, help="regrowth steps")
    parser.add_argument("--step_epochs", type=positive_int, default=10, help="finetune epochs after each step")
    parser.add_argument("--greedy_mode", choices=list(GREEDY_ALLOCATIONS), default="uniform",
                        help="how each step's budget is split (uniform: the best allocator measured so far)")
    parser.add_argument("--results", required=True, help="folder of the per-seed JSON files")
    args = parser.parse_args(argv)
    if args.start_sparsity - args.steps * args.regrow_step <= 0:
        parser.error("--steps · --regrow_step must stay below --start_sparsity")
    return args


def settings(args: argparse.Namespace) -> dict[str, str]:
    """What defines a seed's rows (the key of its file)."""
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}


def kept_path(args: argparse.Namespace, seed: int) -> Path:
    """The --results file of ``seed``; its name carries a digest of ``settings``."""
    digest = hashlib.sha256(json.dumps(settings(args)).encode()).hexdigest()[:8]
    return Path(args.results) / f"{args.dataset}_{args.m_name}_outcome_{digest}_seed{seed}.json"


def regrown_steps(args: argparse.Namespace, seed: int, root: Path, dense: Path, start: Path) -> list[dict]:
    """The rows of ``regrowth_greedy.py``'s iterations from ``start`` (run once, then read from its summary)."""
    save = root / "regrown"
    summary = greedy_dir(save, args.m_name, granularity_class("weight"), args.greedy_mode) / SUMMARY
    if not summary.is_file():
        run(regrowth_greedy.main, stage_flags(args, seed) + [
            "--save_dir", str(save), "--pretrained", str(dense), "--initial_ckpt", str(start),
            "--greedy_mode", args.greedy_mode, "--units", "all", "--regrow_step", f"{args.regrow_step:.6f}",
            "--num_iters", str(args.steps), "--finetune_epochs", str(args.step_epochs), "--patience", "0"])
    return json.loads(summary.read_text())["iterations"]


def one_seed(args: argparse.Namespace, seed: int) -> dict:
    """The kept rows of ``seed``: one per step, the regrown model's and the one-shot model's accuracy."""
    path = kept_path(args, seed)
    if path.is_file():
        return json.loads(path.read_text())
    root = Path(args.save_dir) / f"outcome_{args.dataset}_{args.m_name}" / f"seed{seed}"
    check_settings(root.parent, settings(args))
    dense = dense_model(args, seed, root)
    start = pruned_model(args, seed, root, dense, args.start_sparsity, args.prune_epochs, "start")
    rows = []
    for k, step in enumerate(regrown_steps(args, seed, root, dense, start), start=1):
        epochs = args.prune_epochs + k * args.step_epochs
        target = round(args.start_sparsity - k * args.regrow_step, 6)
        oneshot = read_checkpoint(pruned_model(args, seed, root, dense, target, epochs, f"oneshot_{k}")).meta
        rows.append({"seed": seed, "step": k, "epochs": epochs, "target": target,
                     "regrown": {key: step[key] for key in ("sparsity", "val_acc", "test_acc", "regrown")},
                     "oneshot": {key: oneshot[key] for key in ("sparsity", "val_acc", "test_acc")}})
    record = read_checkpoint(start).meta.get(PROVENANCE_KEY)
    kept = {"settings": settings(args), "dense": read_checkpoint(dense).lineage, PROVENANCE_KEY: record,
            "rows": rows}
    write_json(path, kept)
    return kept


def table(seeds: list[dict]) -> str:
    """Markdown: per step, the regrown and the one-shot model's test accuracy (mean ± std over seeds) and the
    regrown minus one-shot difference, paired by seed."""
    rows = [row for kept in seeds for row in kept["rows"]]
    lines = ["| step | epochs after pruning | sparsity | seeds | regrown: test (%) | one-shot: test (%) | "
             "regrown - one-shot (pp) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for step in sorted({row["step"] for row in rows}):
        mine = [row for row in rows if row["step"] == step]
        regrown = [row["regrown"]["test_acc"] for row in mine]
        oneshot = [row["oneshot"]["test_acc"] for row in mine]
        sparsity = statistics.fmean(row["regrown"]["sparsity"] for row in mine)
        paired = [r - o for r, o in zip(regrown, oneshot, strict=True)]
        lines.append(f"| {step} | {mine[0]['epochs']} | {sparsity:.2%} | {len(mine)} | {mean_std(regrown)} | "
                     f"{mean_std(oneshot)} | {mean_std(paired, signed=True)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    text = table([one_seed(args, seed) for seed in args.seeds])
    print(text)
    print(f"({machine()}; rows kept in {args.results})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main)())
