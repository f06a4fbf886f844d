"""The seeds' Setting B: one-shot LAMP pruning from the dense model to each target sparsity, each finetuned the
same number of epochs, over several seeds: accuracy against sparsity as mean ± std, with its plot.

Per seed (--seeds) and target (--targets): ``prune_unstructure.py --mode oneshot`` from the seed's dense model
(--dense, e.g. the reference models), --finetune_epochs of AdamW with the best epoch chosen on val (no early
stop); the test accuracy of that epoch is reported, never selected on. Each finished (seed, target) is one small
JSON in --results (its settings, the dense model's fingerprint, val/test accuracy, sparsity, seconds), so
separate processes can run seeds or targets in parallel and a later run adds seeds without rerunning the finished
ones; every call ends by gathering the files of these settings into ``setting_b_{dataset}_{model}.md`` (the
table) and ``.png`` (the curve with its ±std band) in --results.

    python -m benchmarks.bench_setting_b --seeds 1 --dataset cifar10 --data_dir DATA \\
        --dense docs/results/data/dense/resnet20_cifar10_seed{seed}.pth --finetune_epochs 20 \\
        --save_dir runs/setting_b --results docs/results/data/setting_b
    python -m benchmarks.bench_setting_b --seeds 1 2 3 ... --report     # gather only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import machine
from benchmarks.experiment import add_experiment_args, dense_model, pruned_model
from utils.cli.flags import cli_main
from utils.cli.types import fraction, positive_int
from utils.core.files import atomic_write, write_json
from utils.core.provenance import PROVENANCE_KEY, command_line
from utils.core.timer import Timer
from utils.results.figures import setting_b_table
from utils.results.plots import plot_report
from utils.runtime.checkpoint import read_checkpoint

TARGETS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
# the flags that define how a point is made (which seeds and targets run, and where, do not)
NOT_SETTINGS = ("seeds", "targets", "device", "save_dir", "data_dir", "results", "report")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--targets", type=fraction, nargs="+", default=list(TARGETS), help="target sparsities")
    parser.add_argument("--finetune_epochs", type=positive_int, default=20, help="AdamW epochs after the prune")
    parser.add_argument("--results", required=True, help="folder of the per-point JSON files and the table")
    parser.add_argument("--report", action="store_true", help="only gather the finished points")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict[str, str]:
    """What defines a point (the key of its files): model, data, epochs, the dense models' source."""
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in NOT_SETTINGS}


def point_path(args: argparse.Namespace, seed: int, target: float) -> Path:
    """The JSON of one (seed, target); its name carries a digest of ``settings``."""
    digest = hashlib.sha256(json.dumps(settings(args)).encode()).hexdigest()[:8]
    stem = f"{args.dataset}_{args.m_name}_ft{args.finetune_epochs}_{digest}"
    return Path(args.results) / f"{stem}_seed{seed}_{target:.4f}.json"


def run_point(args: argparse.Namespace, seed: int, target: float) -> dict:
    """Prune the seed's dense model to ``target`` and finetune (or reuse the run folder's checkpoint)."""
    root = Path(args.save_dir) / f"setting_b_{args.dataset}_{args.m_name}" / f"seed{seed}"
    dense = dense_model(args, seed, root)
    with Timer() as timer:
        path = pruned_model(args, seed, root, dense, target, args.finetune_epochs, f"ft{args.finetune_epochs}")
    meta = read_checkpoint(path).meta
    return {"seed": seed, "target": target, "sparsity": meta["sparsity"], "val_acc": meta["val_acc"],
            "test_acc": meta["test_acc"], "finetune_epochs": args.finetune_epochs, "seconds": round(timer.seconds, 1),
            "dense": read_checkpoint(dense).lineage, "commit": meta.get("git"), "torch": meta.get("torch"),
            "machine": machine(), PROVENANCE_KEY: {**meta.get(PROVENANCE_KEY, {}), "benchmark": command_line()}}


def gather(args: argparse.Namespace) -> list[dict]:
    """Every finished point of these settings in --results."""
    digest = point_path(args, 0, 0.0).name.split("_seed")[0]
    return [json.loads(p.read_text())["point"] for p in sorted(Path(args.results).glob(f"{digest}_seed*.json"))]


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.report:
        for seed in args.seeds:
            for target in args.targets:
                path = point_path(args, seed, target)
                if path.is_file():
                    continue
                point = run_point(args, seed, target)
                write_json(path, {"settings": settings(args), "point": point})
                print(f"seed {seed} target {target:.4f}: val {point['val_acc']:.2f}%  test {point['test_acc']:.2f}%  "
                      f"({point['seconds']:.0f} s) -> {path}", flush=True)
    points = [p for p in gather(args) if p["seed"] in args.seeds]
    if not points:
        print("no finished points yet")
        return 0
    text = setting_b_table(points)
    print(text)
    stem = Path(args.results) / f"setting_b_{point_path(args, 0, 0.0).name.split('_seed')[0]}"
    atomic_write(stem.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text + "\n"))
    curve = [(statistics.fmean(p["sparsity"] for p in points if p["target"] == t),
              statistics.fmean(p["test_acc"] for p in points if p["target"] == t),
              statistics.stdev([p["test_acc"] for p in points if p["target"] == t])
              if sum(p["target"] == t for p in points) > 1 else 0.0)
             for t in sorted({p["target"] for p in points})]
    plot_report({f"one-shot LAMP, {args.finetune_epochs}-epoch finetune (n = {len(set(p['seed'] for p in points))})":
                 curve}, [], f"Setting B: {args.m_name} on {args.dataset}", stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.md')} and {stem.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
