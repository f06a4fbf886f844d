"""The decisive comparison: RL search against random search and the greedy rules, from one sparse start, at
equal episodes and equal final finetunes.

Per seed (--seeds): a dense model (pretrain.py, --pretrain_epochs) pruned one-shot by LAMP to --sparsity
(--prune_epochs of finetune) is the start; K = --regrow_step · N_tot weights regrow into the searched units
(--units: ``ssim``, those under the SSIM threshold, or ``all``, every unit with room; both may be given: each
is its own set of arms). Arms (--arms):

| arm | what chooses the allocation |
|---|---|
| ``rl`` | regrowth_oneshot.py, --episodes episodes (no early stop), the default controller |
| ``random`` | the same with --random_search: uniform draws from the same action space, equal episodes |
| ``rl_batch`` | the controller with a batch-mean baseline (M = 8 episodes per update) and a 10x learning rate |
| ``rl_tuned`` | one update per episode at a 10x learning rate with a 40x smaller entropy bonus (0.01 -> 0.001) |
| ``greedy_{prop,uniform,fill,topk}`` | the rule of regrowth_greedy.py (its --greedy_mode), one allocation |

Every episode is a cheap one (--episode_steps S optimizer steps, reward on the first --episode_val_subset val
images, paired: every episode sees the same data); the greedy allocations are scored by the same reward once,
so their line on the curves is what a search must beat under its own reward. Each arm's chosen allocation (a
search's best episode by val reward) then gets the same final finetune (--final_epochs, AdamW, best epoch on
val, the same data stream for every arm) and its **test** accuracy is reported; nothing is selected on test.

Each finished arm is one small JSON file in --results (the settings it was run with, the per-episode rewards,
the chosen allocation, the final val/test accuracy and the seconds), so separate processes can run seeds in
parallel, or arms of one seed once its dense and start models exist (a second process would find them being
written and stop with an ``error:`` line), and a later run adds seeds without rerunning the finished ones.
Every call ends by gathering all the arm files of these settings in --results into
``search_{dataset}_{model}.md`` (the table: final val and test mean ± std over seeds, and the paired
differences to RL; for arms run with both ``--units``, the paired difference all - ssim) and
``search_{dataset}_{model}.png`` (the best-so-far curves: the chosen allocation's val reward against episodes
and against seconds, mean and min-max band over seeds).

    python -m benchmarks.bench_search --seeds 1 --dataset synthetic --train_subset 4500 --pretrain_epochs 8 \\
        --units ssim all --results docs/results/data/search          # one process per seed, then:
    python -m benchmarks.bench_search --seeds 1 2 3 ... --report      # gather only
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import regrowth_oneshot  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from benchmarks.experiment import (  # noqa: E402
    add_experiment_args,
    check_settings,
    dense_model,
    pruned_model,
    run,
    stage_flags,
)
from utils.cli.flags import cli_main, positive_int  # noqa: E402
from utils.cli.jobs import regrowth_job  # noqa: E402
from utils.cli.types import open_fraction
from utils.core.errors import UsageError  # noqa: E402
from utils.core.files import differing, write_json  # noqa: E402
from utils.core.paths import SEARCH_STATE, SUMMARY, regrowth_dir  # noqa: E402
from utils.core.registry import Registry  # noqa: E402
from utils.core.timer import Timer  # noqa: E402
from utils.regrow.allocation import greedy_allocation  # noqa: E402
from utils.regrow.apply import FINETUNE_ORDER, regrow_and_finetune  # noqa: E402
from utils.results.figures import mean_std  # noqa: E402
from utils.search.controller import Episode  # noqa: E402
from utils.search.drivers import OneShot, prepare_oneshot  # noqa: E402
from utils.search.episodes import UNIT_SETS  # noqa: E402
from utils.sparsity.granularity import default_granularity, granularity_class  # noqa: E402


@dataclass(frozen=True)
class SearchArm:
    """A search arm: the search script's extra flags."""

    flags: tuple[str, ...] = ()
    random: bool = False  # a random search (its folder is random_regrowth_oneshot)


@dataclass(frozen=True)
class GreedyArm:
    """A greedy arm: one allocation by a ``GREEDY_ALLOCATIONS`` rule over the searched units."""

    rule: str


ARMS: Registry[SearchArm | GreedyArm] = Registry("arm", {
    "rl": SearchArm(),
    "random": SearchArm(("--random_search",), random=True),
    "rl_batch": SearchArm(("--episodes_per_update", "8", "--learning_rate", "3e-3")),
    "rl_tuned": SearchArm(("--learning_rate", "3e-3", "--start_beta", "0.01", "--end_beta", "0.001")),
    "greedy_prop": GreedyArm("prop"),
    "greedy_uniform": GreedyArm("uniform"),
    "greedy_fill": GreedyArm("fill"),
    "greedy_topk": GreedyArm("topk"),
})
# what defines a result (an arm file made with other values is another experiment)
DEFINING = ("m_name", "dataset", "train_subset", "eval_subset", "batch_size", "pretrain_epochs", "prune_epochs",
            "sparsity", "regrow_step", "episodes", "episode_steps", "episode_val_subset", "final_epochs")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--sparsity", type=open_fraction, default=0.99, help="one-shot LAMP sparsity of the start")
    parser.add_argument("--regrow_step", type=open_fraction, default=0.01, help="K / N_tot")
    parser.add_argument("--units", nargs="+", choices=UNIT_SETS, default=["ssim"], help="searched unit sets")
    parser.add_argument("--arms", nargs="+", default=["rl", "random", "greedy_prop", "greedy_uniform"],
                        help=f"arms to run, of: {', '.join(ARMS)}")
    parser.add_argument("--episodes", type=positive_int, default=200, help="episodes of every search arm")
    parser.add_argument("--episode_steps", type=positive_int, default=10, help="optimizer steps per episode")
    parser.add_argument("--episode_val_subset", type=positive_int, default=500, help="val images of the reward")
    parser.add_argument("--final_epochs", type=positive_int, default=4, help="the final finetune of every arm")
    parser.add_argument("--results", default=None,
                        help="folder of the arm files and the report (default: {save_dir}/search_results)")
    parser.add_argument("--report", action="store_true", help="only gather the finished arms of --results")
    args = parser.parse_args(argv)
    for arm in args.arms:
        ARMS.canonical(arm, "--arms")
    return args


def arm_path(results: Path, args: argparse.Namespace, seed: int, units: str, arm: str) -> Path:
    return results / f"{args.dataset}_{args.m_name}_seed{seed}_{units}_{arm}.json"


def defining(args: argparse.Namespace) -> dict:
    """The settings an arm file records and is reused for (with the finetune's data-order rule)."""
    return {**{k: getattr(args, k) for k in DEFINING}, "finetune_order": FINETUNE_ORDER}


def finished(path: Path, args: argparse.Namespace) -> dict | None:
    """The arm file at ``path`` when it holds a result of these settings; a file of other settings is a usage
    error (another --results keeps both)."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    differ = differing(result["settings"], defining(args), older={}, both_ways=True)
    if differ:
        raise UsageError(f"{path} was made with other settings ({', '.join(differ)} differ); use another --results")
    return result


def search_flags(args, seed: int, root: Path, dense: Path, start: Path, units: str, label: str) -> list[str]:
    """The one-shot search script's flags of this experiment (cheap paired episodes, no early stop)."""
    return stage_flags(args, seed) + [
        "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start),
        "--regrow_step", str(args.regrow_step), "--num_epochs", str(args.episodes),
        "--episode_steps", str(args.episode_steps), "--episode_val_subset", str(args.episode_val_subset),
        "--units", units, "--early_stop_patience", str(args.episodes), "--min_epochs", str(args.episodes),
        "--label", label]


def run_search(args, seed: int, root: Path, dense: Path, start: Path, units: str, arm: str) -> dict:
    """One search arm through regrowth_oneshot.py (continued when a killed run left its state); its episodes'
    rewards, its best allocation and its seconds."""
    spec = ARMS[arm]
    flags = search_flags(args, seed, root, dense, start, units, f"{units}_{arm}") + list(spec.flags)
    out = regrowth_dir(root / "search", args.m_name, granularity_class(default_granularity()), "oneshot",
                       spec.random) / f"{units}_{arm}"
    if not (out / SUMMARY).is_file():
        run(regrowth_oneshot.main, flags + (["--resume"] if (out / SEARCH_STATE).is_file() else []))
    summary = json.loads((out / SUMMARY).read_text())
    with open(out / "episodes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"rewards": [float(r["reward"]) for r in rows], "val_accs": [float(r["val_acc"]) for r in rows],
            "allocation": summary["best"]["allocation"], "best_episode": summary["best"]["episode"],
            "search_seconds": summary["search_seconds"]}


def probe_label(units: str, arms: Sequence[str]) -> str:
    """The probe's folder name, after the set of arms this call runs (sorted): a process running another set of
    arms of the same seed (each holds its probe folder until it ends) claims another folder, and two processes
    running the same set stop at the probe, before any training."""
    return f"{units}_probe_{'-'.join(sorted(set(arms)))}"


def probe(args, seed: int, root: Path, dense: Path, start: Path, units: str, arms: Sequence[str]) -> OneShot:
    """The prepared search of ``units`` (scores, searched units, K, the episode reward) without its episodes:
    what greedy allocations are drawn from and scored with, and what every arm's final finetune regrows into."""
    flags = search_flags(args, seed, root, dense, start, units, probe_label(units, arms)) + ["--overwrite"]
    return prepare_oneshot(regrowth_job(regrowth_oneshot.parse_args(flags), default_granularity(), "oneshot"))


def greedy(job: OneShot, rule: str) -> dict:
    """The rule's allocation of K over the searched units, and its reward as an episode of the search."""
    search = job.search
    ssim, capacities = dict(zip(search.space.layers, search.space.ssim, strict=True)), dict(
        zip(search.space.layers, search.space.capacities, strict=True))
    allocation = greedy_allocation(rule, ssim, capacities, search.budget.total, None, search.scores,
                                   job.stage.granularity.masks(job.pair.sparse))
    counts = [allocation.get(n, 0) for n in search.space.layers]
    with Timer() as timer:
        row = search.evaluate(0, Episode(counts, search.budget.total, [], torch.zeros(()), torch.zeros(()))).row
    return {"rewards": [row["reward"]], "val_accs": [row["val_acc"]], "allocation": allocation, "best_episode": 1,
            "search_seconds": timer.seconds}


def run_arm(args, seed: int, root: Path, dense: Path, start: Path, units: str, arm: str, job: OneShot) -> dict:
    """One arm: its allocation (search or rule) and the final finetune of it."""
    spec = ARMS[arm]
    chosen = (run_search(args, seed, root, dense, start, units, arm) if isinstance(spec, SearchArm)
              else greedy(job, spec.rule))
    stage, init = job.stage, job.search.settings.init_strategy
    with Timer() as timer:
        final = regrow_and_finetune(stage, job.pair, chosen["allocation"], job.search.scores, init, args.final_epochs)
    return {"settings": defining(args), "seed": seed, "units": units, "arm": arm, "machine": machine(),
            "date": dt.date.today().isoformat(), "budget": job.search.budget.total,
            "searched_units": job.search.space.layers, "start_val_acc": job.start_val, **chosen,
            "final": final, "final_seconds": timer.seconds}


def run_seed(args, seed: int, results: Path) -> None:
    """Every missing arm of ``seed`` (the dense and start models made or reused under --save_dir)."""
    todo = [(u, a) for u in args.units for a in args.arms
            if finished(arm_path(results, args, seed, u, a), args) is None]
    if not todo:
        return
    root = Path(args.save_dir) / f"search_{args.dataset}_{args.m_name}" / f"seed{seed}"
    check_settings(root, {k: getattr(args, k) for k in DEFINING[:7] + ("sparsity",)} | {"seed": seed})
    # the searches' folders are reused (a finished one read back, a killed one resumed): only for these settings
    check_settings(root / "search", {k: getattr(args, k) for k in DEFINING if k != "final_epochs"} | {"seed": seed})
    dense = dense_model(args, seed, root)
    start = pruned_model(args, seed, root, dense, args.sparsity, args.prune_epochs, "start")
    for units in dict.fromkeys(u for u, _ in todo):
        arms = [a for u, a in todo if u == units]
        job = probe(args, seed, root, dense, start, units, arms)
        for arm in arms:
            result = run_arm(args, seed, root, dense, start, units, arm, job)
            write_json(arm_path(results, args, seed, units, arm), result)
            print(f"seed {seed} {units} {arm}: final val {result['final']['val_acc']:.2f}% test "
                  f"{result['final']['test_acc']:.2f}%", flush=True)


def gather(args, results: Path) -> dict[str, dict[str, dict[int, dict]]]:
    """{units: {arm: {seed: result}}} of every arm file of these settings in ``results``."""
    found: dict[str, dict[str, dict[int, dict]]] = {}
    for path in sorted(results.glob(f"{args.dataset}_{args.m_name}_seed*_*.json")):
        result = json.loads(path.read_text())
        if not differing(result.get("settings", {}), defining(args), older={}, both_ways=True):
            found.setdefault(result["units"], {}).setdefault(result["arm"], {})[result["seed"]] = result
    return found


def best_so_far(result: dict) -> np.ndarray:
    """The val gain (pp over the start's val accuracy, on the reward's images) of the allocation a search would
    choose after each episode (its best reward so far): comparable across seeds whose starts differ."""
    rewards, vals = np.array(result["rewards"]), np.array(result["val_accs"])
    best = np.maximum.accumulate(rewards)
    return vals[[int(np.flatnonzero(rewards == b)[0]) for b in best]] - result["start_val_acc"]


def table(found: dict) -> list[str]:
    """Markdown lines: per unit set and arm, the seeds, the chosen allocation's val reward, the final val and
    test accuracy (mean ± std over seeds), the paired test difference to ``rl`` and the seconds."""
    lines = ["| units | arm | seeds | episodes | reward val (%) | final val (%) | final test (%) | "
             "test - rl, paired (pp) | search s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for units, arms in found.items():
        rl = arms.get("rl", {})
        for arm, seeds in arms.items():
            rs = list(seeds.values())
            paired = [seeds[s]["final"]["test_acc"] - rl[s]["final"]["test_acc"] for s in seeds if s in rl]
            lines.append(
                f"| {units} | {arm} | {len(rs)} | {len(rs[0]['rewards'])} | "
                f"{mean_std([r['val_accs'][r['best_episode'] - 1] for r in rs])} | "
                f"{mean_std([r['final']['val_acc'] for r in rs])} | "
                f"{mean_std([r['final']['test_acc'] for r in rs])} | "
                f"{mean_std(paired, signed=True) if arm != 'rl' else ''} | "
                f"{statistics.fmean(r['search_seconds'] for r in rs):.0f} |")
    return lines


def unit_effect(found: dict) -> list[str]:
    """Markdown lines: per arm run with both unit sets, the final test accuracy over the seeds that have both
    (mean ± std) and the paired difference ``all`` - ``ssim`` (pp, mean ± std and per seed, e.g. ``s1 +0.20``):
    what the SSIM filter does to that allocator. Empty when no arm has both."""
    ssim, every = found.get("ssim", {}), found.get("all", {})
    lines = []
    for arm in (a for a in ssim if a in every):
        seeds = sorted(set(ssim[arm]) & set(every[arm]))
        if not seeds:
            continue
        tests = {units: [found[units][arm][s]["final"]["test_acc"] for s in seeds] for units in ("ssim", "all")}
        paired = [a - b for a, b in zip(tests["all"], tests["ssim"], strict=True)]
        per_seed = ", ".join(f"s{s} {d:+.2f}" for s, d in zip(seeds, paired, strict=True))
        lines.append(f"| {arm} | {len(seeds)} | {mean_std(tests['ssim'])} | {mean_std(tests['all'])} | "
                     f"{mean_std(paired, signed=True)} | {per_seed} |")
    if not lines:
        return []
    return ["| arm | seeds with both | final test, ssim (%) | final test, all (%) | all - ssim, paired (pp) | "
            "per seed |", "|---|---:|---:|---:|---:|---|", *lines]


def plot(found: dict, title: str, path: Path) -> None:
    """Best-so-far val gain against episodes and against seconds, one row per unit set; searches as a mean
    line with a min-max band over seeds, greedy rules as a level line (their one evaluation, mean over seeds)."""
    fig, axes = plt.subplots(len(found), 2, figsize=(11, 3.6 * len(found)), squeeze=False)
    for row, (units, arms) in zip(axes, found.items(), strict=True):
        for arm, seeds in arms.items():
            curves = [best_so_far(r) for r in seeds.values()]
            if isinstance(ARMS[arm], GreedyArm):
                level = statistics.fmean(c[0] for c in curves)
                for ax in row:
                    ax.axhline(level, ls="--", lw=1, label=f"{arm} ({len(curves)} seeds)",
                               color=f"C{list(ARMS).index(arm)}")
                continue
            n = min(len(c) for c in curves)
            stack = np.stack([c[:n] for c in curves])
            per_episode = statistics.fmean(r["search_seconds"] / len(r["rewards"]) for r in seeds.values())
            x = np.arange(1, n + 1)
            for ax, xs in zip(row, (x, x * per_episode), strict=True):
                color = f"C{list(ARMS).index(arm)}"
                ax.plot(xs, stack.mean(0), color=color, label=f"{arm} ({len(curves)} seeds)")
                ax.fill_between(xs, stack.min(0), stack.max(0), color=color, alpha=0.2)
        row[0].set_xlabel("episodes")
        row[1].set_xlabel("search seconds (mean seconds per episode x episodes)")
        for ax in row:
            ax.set_ylabel("chosen allocation's val gain (pp)")
            ax.set_title(f"units: {units}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(args, results: Path) -> dict:
    """Write and print the table and the curves of every finished arm of these settings in ``results``."""
    found = gather(args, results)
    if not found:
        raise UsageError(f"no finished arm of these settings in {results}")
    name = f"search_{args.dataset}_{args.m_name}"
    lines = table(found)
    effect = unit_effect(found)
    if effect:
        lines += ["", "The unit set, paired by seed (the same start, allocator and final finetune):", "", *effect]
    settings = ", ".join(f"{k} {v}" for k, v in defining(args).items())
    (results / f"{name}.md").write_text(f"Settings: {settings}\n\n" + "\n".join(lines) + "\n")
    plot(found, f"{args.m_name} on {args.dataset}: the chosen allocation's val gain over the start, best so far "
                f"({args.episodes} episodes of {args.episode_steps} steps; mean, min-max over seeds)",
         results / f"{name}.png")
    print("\n".join(lines))
    print(f"(wrote {results / name}.md and .png)")
    return found


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    results = Path(args.results or Path(args.save_dir) / "search_results")
    results.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for seed in args.seeds:
            run_seed(args, seed, results)
    return report(args, results)


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line: a settings mismatch or a folder held by another run is one ``error:`` line, exit 2."""
    main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(cli)())
