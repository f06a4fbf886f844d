"""How noisy is an RL episode's reward, and how much do paired episodes (common random numbers) help?

A dense model is pretrained and pruned one-shot (LAMP) to --sparsity with the stage scripts (kept in
--save_dir and reused on a rerun); then one one-shot search is prepared with the search scripts' own code
(SSIM-selected layers, budget --regrow_step, saliency selection, --finetune_epochs mini-finetunes). K
allocations are sampled from its untrained policy and each is evaluated under R random-number streams
(stream s = the draws of unpaired episode s: data order, augmentation, init draws), a K x R table of
rewards. Printed:

* within-allocation std: the std of one allocation's reward over the streams (the noise an unpaired
  search sees), averaged over the allocations;
* between-allocation spread: the std over allocations of their mean reward (the signal), and the std over
  allocations within one stream (what a paired search compares);
* the noise of comparing two allocations: std over streams of r(a, s) - r(b, s) (paired: both in the same
  stream) against the std of r(a, s) - r(b, t), s != t (unpaired), averaged over pairs, and their ratio.

    python -m benchmarks.bench_reward_noise                            # synthetic, CPU
    python -m benchmarks.bench_reward_noise --dataset cifar10 --data_dir /tmp/cifar --train_subset 5000

Results go to benchmarks/results/reward_noise_{dataset}.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

import regrowth_oneshot
from benchmarks.common import machine, save_results
from benchmarks.experiment import add_experiment_args, check_settings, dense_model, pruned_model, stage_flags
from utils.cli.jobs import regrowth_job
from utils.search.drivers import prepare_oneshot


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.99, help="one-shot sparsity of the start")
    parser.add_argument("--regrow_step", type=float, default=0.01, help="budget K / N_tot")
    parser.add_argument("--finetune_epochs", type=int, default=1, help="mini-finetune epochs per episode")
    parser.add_argument("--allocations", type=int, default=4, help="K different allocations")
    parser.add_argument("--streams", type=int, default=4, help="R random-number streams per allocation")
    args = parser.parse_args(argv)
    if args.allocations < 2 or args.streams < 2:
        parser.error("--allocations and --streams must be at least 2 (a spread needs two values)")
    return args


def reward_table(args: argparse.Namespace) -> tuple[list[str], list[list[float]]]:
    """(allocations as JSON, rewards [K][R]) of the prepared search."""
    root = args.save_dir_path
    dense = dense_model(args, args.seed, root)
    start = pruned_model(args, args.seed, root, dense, args.sparsity, args.prune_epochs, "start")
    search_args = regrowth_oneshot.parse_args(stage_flags(args, args.seed) + [
        "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start),
        "--regrow_step", str(args.regrow_step), "--finetune_epochs", str(args.finetune_epochs),
        "--num_epochs", str(args.allocations * args.streams), "--unpaired_episodes", "--overwrite"])
    search = prepare_oneshot(regrowth_job(search_args, "weight", "oneshot")).search
    episodes = [search.sample() for _ in range(args.allocations)]
    table = [[search.evaluate(stream, ep).row["reward"] for stream in range(args.streams)] for ep in episodes]
    allocations = [json.dumps({n: c for n, c in zip(search.space.layers, ep.counts, strict=True) if c})
                   for ep in episodes]
    return allocations, table


def noise_figures(table: list[list[float]]) -> dict[str, float]:
    """The figures of the module docstring from rewards [K allocations][R streams]."""
    k, r = len(table), len(table[0])
    within = statistics.fmean(statistics.stdev(row) for row in table)
    between_means = statistics.stdev(statistics.fmean(row) for row in table)
    between_in_stream = statistics.fmean(statistics.stdev(table[a][s] for a in range(k)) for s in range(r))
    paired, unpaired = [], []
    for a, b in itertools.combinations(range(k), 2):
        paired.append(statistics.stdev(table[a][s] - table[b][s] for s in range(r)))
        unpaired.append(statistics.stdev(table[a][s] - table[b][t] for s in range(r) for t in range(r) if s != t))
    diff_paired, diff_unpaired = statistics.fmean(paired), statistics.fmean(unpaired)
    return {"within_allocation_std": within, "between_allocation_std_of_means": between_means,
            "between_allocation_std_within_a_stream": between_in_stream, "comparison_std_paired": diff_paired,
            "comparison_std_unpaired": diff_unpaired,
            "unpaired_over_paired": diff_unpaired / diff_paired if diff_paired else float("inf")}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.save_dir_path = Path(args.save_dir) / f"reward_noise_{args.dataset}_{args.m_name}"
    check_settings(args.save_dir_path, vars(args), ignore=("device", "save_dir_path"))
    allocations, table = reward_table(args)
    figures = noise_figures(table)
    print(f"rewards (rows: {len(table)} allocations, columns: {len(table[0])} streams), reward = gain/100 + bonus:")
    for row in table:
        print("  " + "  ".join(f"{r:+.4f}" for r in row))
    for name, value in figures.items():
        print(f"{name:<42} {value:.4f}")
    path = save_results(f"reward_noise_{args.dataset}", {"args": {k: str(v) for k, v in vars(args).items()},
                                                          "rewards": table, "allocations": allocations, **figures})
    print(f"wrote {path} ({machine()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
