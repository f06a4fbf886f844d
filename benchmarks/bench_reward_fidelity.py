"""Reward fidelity: does the cheap reward a search learns from rank allocations as the final finetune does?

From one sparse start (a dense model pruned one-shot by LAMP), draw ``--allocations`` allocations of the same
budget K: the greedy rules (prop, fill, uniform over the SSIM-selected units), draws of the untrained policy
(RL episodes before any learning), and uniform random draws over every unit. Score each with the rewards a
search could use, and with the truth, the accuracy the allocation reaches after the final finetune a user
would give the winner (``--truth_epochs`` epochs, best epoch on val; test reported):

| reward | what it is |
|---|---|
| ``val@S`` | val accuracy after S AdamW steps (zero init, the search's mini-finetune), S in ``--steps`` |
| ``val@epoch`` | val accuracy after one epoch (today's search default at the demo's fidelity) |
| ``loss@S`` | training loss over the last steps before S (lower is better) |
| ``bn_recal`` | ``dense`` init, BatchNorm statistics recomputed on ``--bn_batches`` train batches, no training |
| ``saliency`` | the summed saliency of the regrown positions (what greedy maximises) |

Rewards use the first ``--val_subset`` val images (the same for every allocation); the truth uses all of them.
Per reward: seconds per allocation, Kendall tau and Spearman rho with the truth's val accuracy (bootstrap 95%
interval over allocations) and whether its best allocation is the truth's. Writes ``fidelity.json``,
``fidelity.csv`` and ``fidelity.png`` (rank correlation against seconds) into the experiment folder, and
prints the table. Finished allocations are kept (``rows.json``), so a stopped run continues.

    python -m benchmarks.bench_reward_fidelity --dataset synthetic --train_subset 4500 --pretrain_epochs 8
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from scipy.stats import kendalltau, spearmanr  # noqa: E402

import regrowth_oneshot  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from benchmarks.experiment import add_experiment_args, check_settings, dense_model, pruned_model, stage_flags  # noqa: E402
from utils.cli.jobs import regrowth_settings  # noqa: E402
from utils.cli.prepare import prepare_dense_sparse  # noqa: E402
from utils.core.files import write_csv, write_json  # noqa: E402
from utils.core.seeds import make_generator  # noqa: E402
from utils.core.timer import Timer  # noqa: E402
from utils.regrow.allocation import GREEDY_ALLOCATIONS  # noqa: E402
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation  # noqa: E402
from utils.runtime.settings import FinetuneSettings, LoopSettings  # noqa: E402
from utils.runtime.train import evaluate_model, train_epoch  # noqa: E402
from utils.scoring.layer_scores import ssim_scores  # noqa: E402
from utils.scoring.selection import selection_scores  # noqa: E402
from utils.search.controller import AllocationPolicy  # noqa: E402
from utils.search.episodes import search_space  # noqa: E402
from utils.sparsity.budget import regrowth_budget  # noqa: E402
from utils.sparsity.granularity import default_granularity  # noqa: E402
from utils.sparsity.grow import top_pruned  # noqa: E402
from utils.sparsity.masks import clone_model  # noqa: E402

LR, WEIGHT_DECAY = 3e-4, 0.01  # the search's mini-finetune (AdamW)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sparsity", type=float, default=0.99, help="one-shot LAMP sparsity of the start")
    parser.add_argument("--regrow_step", type=float, default=0.01, help="K / N_tot")
    parser.add_argument("--allocations", type=int, default=16, help="allocations drawn (>= 5: 3 greedy + draws)")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 10, 30, 100, 300], help="S of the val@S rewards")
    parser.add_argument("--val_subset", type=int, default=1000, help="val images of the cheap rewards")
    parser.add_argument("--bn_batches", type=int, default=10, help="train batches of the BN recalibration")
    parser.add_argument("--truth_epochs", type=int, default=4, help="epochs of the final finetune (the truth)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    return parser.parse_args(argv)


def draw_allocations(args, stage, pair, ssim: dict[str, float]) -> list[tuple[str, dict[str, int]]]:
    """(name, allocation) pairs: greedy prop / fill / uniform over the SSIM-selected units, then untrained-policy
    draws over the same units and uniform random draws over every unit, alternating, all of budget K."""
    gran = stage.granularity
    caps = {n: c for n, c in gran.capacity(pair.sparse).items() if c > 0}
    space = search_space(ssim, caps, regrowth_settings_of(args, stage).scoring.ssim_threshold)
    selected = dict(zip(space.layers, space.capacities, strict=True))
    budget = regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(space.capacities))
    drawn = [(f"greedy {rule}", GREEDY_ALLOCATIONS[rule](ssim, selected, budget)) for rule in ("prop", "fill",
                                                                                                "uniform")]
    torch.manual_seed(args.seed)  # the policy's initial weights, as a search of this seed starts with
    policy, rng = AllocationPolicy(11, 64), make_generator(args.seed, "fidelity")
    while len(drawn) < args.allocations:
        if len(drawn) % 2:
            ep = policy.sample(space.capacities, space.ssim, rng, budget=budget)
            drawn.append((f"policy {len(drawn)}", {n: c for n, c in zip(space.layers, ep.counts, strict=True) if c}))
        else:
            drawn.append((f"random {len(drawn)}", GREEDY_ALLOCATIONS["random"](ssim, caps, budget, rng)))
    return drawn


def regrowth_settings_of(args, stage):
    """The one-shot search settings the start's stage was prepared with (thresholds, selection)."""
    return regrowth_settings(args.stage_args, stage.granularity.name, "oneshot")


def bn_recalibrated(model: nn.Module, train, batches: int) -> nn.Module:
    """``model`` with every BatchNorm's running statistics recomputed (cumulative average) on ``batches``
    training batches, weights untouched."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for images, _ in train.steps(batches):
            model(images)
    return model.eval()


def score(args, stage, pair, scores, allocation: dict[str, int]) -> dict:
    """Every reward of ``allocation`` and the truth, with the seconds each took."""
    gran, data, seed = stage.granularity, stage.data, args.seed
    val = data.val.first(args.val_subset)
    row: dict = {}
    masks = gran.masks(pair.sparse)
    with Timer() as t:
        row["saliency"] = float(sum(scores[n].reshape(-1)[top_pruned(scores[n], masks[n], k)].sum()
                                    for n, k in allocation.items()))
    row["saliency_s"] = t.seconds
    with Timer() as t:
        model = clone_model(pair.sparse)
        gran.regrow(model, allocation, scores, "dense", pair.dense, generator=make_generator(seed, "init"))
        train = data.train.with_generator(make_generator(seed, "bn"))
        row["bn_recal"] = evaluate_model(bn_recalibrated(model, train, args.bn_batches), val, amp=stage.amp)[1]
    row["bn_recal_s"] = t.seconds
    # val@S: one zero-init mini-finetune, evaluated at each S (the same data stream for every allocation)
    model = clone_model(pair.sparse)
    gran.regrow(model, allocation, scores, "zero", pair.dense, generator=make_generator(seed, "init"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    train, done, seconds = data.train.with_generator(make_generator(seed, "episode/data")), 0, 0.0
    for s in sorted(set(args.steps) | {len(data.train)}):
        with Timer() as t:
            if s > done:
                loss, _ = train_epoch(model, train.steps(s - done), optimizer, amp=stage.amp, progress=False)
            else:
                loss = math.nan
            acc = evaluate_model(model, val, amp=stage.amp)[1]
        seconds += t.seconds
        name = "epoch" if s == len(data.train) and s not in args.steps else str(s)
        row[f"val@{name}"], row[f"loss@{name}"], row[f"val@{name}_s"] = acc, loss, seconds
        row[f"loss@{name}_s"], done = seconds, s
    truth = Finetuning(FinetuneSettings(epochs=args.truth_epochs, lr=LR, weight_decay=WEIGHT_DECAY),
                       data.train.with_generator(make_generator(seed, "final")), data.val,
                       LoopSettings(progress=False, verbose=False, amp=stage.amp))
    with Timer() as t:
        regrowth = Regrowth(allocation, scores, "zero", pair.dense, make_generator(seed, "init"))
        final = apply_allocation(gran, pair.sparse, regrowth, truth, test=data.test)
    row.update(truth_val=final.fit.best_val_acc, truth_test=final.test_acc, truth_s=t.seconds)
    return row


def rank_stats(rewards: np.ndarray, truth: np.ndarray, higher: bool, resamples: int, seed: int) -> dict:
    """Kendall tau and Spearman rho of ``rewards`` with ``truth`` (signed so that +1 is a perfect predictor),
    bootstrap 95% intervals over allocations, and whether the reward's best allocation is the truth's."""
    sign = 1.0 if higher else -1.0
    if np.ptp(rewards) == 0 or np.ptp(truth) == 0:  # a constant reward (or truth) ranks nothing
        return {"tau": None, "tau_ci": None, "rho": None, "rho_ci": None, "picks_best": False}
    tau, rho = sign * kendalltau(rewards, truth)[0], sign * spearmanr(rewards, truth)[0]
    rng, taus, rhos = np.random.default_rng(seed), [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(truth), len(truth))
        if np.ptp(rewards[idx]) > 0 and np.ptp(truth[idx]) > 0:
            taus.append(sign * kendalltau(rewards[idx], truth[idx])[0])
            rhos.append(sign * spearmanr(rewards[idx], truth[idx])[0])
    best = int(np.argmax(sign * rewards))
    interval = (lambda xs: [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))] if xs else None)
    return {"tau": float(tau), "tau_ci": interval(taus), "rho": float(rho), "rho_ci": interval(rhos),
            "picks_best": bool(truth[best] == truth.max())}


def summarise(args, rows: list[dict]) -> list[dict]:
    """One line per reward: seconds per allocation and its rank statistics against the truth's val accuracy."""
    truth = np.array([r["truth_val"] for r in rows])
    names = [k for k in rows[0] if not k.endswith("_s") and not k.startswith(("truth", "name", "allocation"))]
    table = []
    for name in names:
        values = np.array([r[name] for r in rows], dtype=float)
        if np.isnan(values).any():
            continue
        stats = rank_stats(values, truth, not name.startswith("loss"), args.bootstrap, args.seed)
        table.append({"reward": name, "seconds": float(np.mean([r[f"{name}_s"] for r in rows])), **stats})
    return table


def plot(table: list[dict], truth_seconds: float, title: str, path: Path) -> None:
    """Kendall tau (with its interval) against seconds per allocation, one point per reward."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table:
        if row["tau"] is None or row["tau_ci"] is None:
            continue
        low, high = row["tau_ci"]
        ax.errorbar([row["seconds"]], [row["tau"]], yerr=[[row["tau"] - low], [high - row["tau"]]], fmt="o",
                    capsize=3)
        ax.annotate(row["reward"], (row["seconds"], row["tau"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.axvline(truth_seconds, ls=":", color="grey", label=f"the truth itself ({truth_seconds:.0f} s)")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per allocation (log scale)")
    ax.set_ylabel("Kendall tau with the final val accuracy")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    root = Path(args.save_dir) / f"fidelity_{args.dataset}_{args.m_name}" / f"seed{args.seed}"
    check_settings(root, vars(args), ignore=("device", "save_dir", "bootstrap"))
    dense = dense_model(args, args.seed, root)
    start = pruned_model(args, args.seed, root, dense, args.sparsity, args.prune_epochs, "start")
    args.stage_args = regrowth_oneshot.parse_args(stage_flags(args, args.seed) + [
        "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start)])
    settings = regrowth_settings(args.stage_args, default_granularity(), "oneshot")
    stage, pair = prepare_dense_sparse(args.stage_args, start, reparam=True)
    ssim = ssim_scores(stage, settings.scoring, pair.dense, pair.sparse)
    scores = selection_scores(stage, pair, None, settings.selection, settings.scoring)
    path = root / "rows.json"
    rows = json.loads(path.read_text()) if path.is_file() else []
    for name, allocation in draw_allocations(args, stage, pair, ssim)[len(rows):]:
        rows.append({"name": name, "allocation": allocation, **score(args, stage, pair, scores, allocation)})
        write_json(path, rows)
        print(f"{name:<12} truth val {rows[-1]['truth_val']:.2f}%  val@{max(args.steps)} "
              f"{rows[-1][f'val@{max(args.steps)}']:.2f}%", flush=True)
    table = summarise(args, rows)
    truth_s = float(np.mean([r["truth_s"] for r in rows]))
    result = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k != "stage_args"},
              "truth_seconds": truth_s, "table": table, "rows": rows}
    write_json(root / "fidelity.json", result)
    write_csv(root / "fidelity.csv", [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()}
                                      for r in table])
    plot(table, truth_s, f"{args.m_name} on {args.dataset}, seed {args.seed}: {len(rows)} allocations of K = "
         f"{args.regrow_step:g} N_tot at {args.sparsity:g} sparsity", root / "fidelity.png")
    print(f"\n{'reward':<12} {'s/alloc':>8} {'tau':>6} {'tau 95%':>16} {'rho':>6} {'best?':>6}")
    for r in table:
        if r["tau"] is None:
            print(f"{r['reward']:<12} {r['seconds']:>8.1f}  constant (reward or truth): ranks nothing")
            continue
        low, high = r["tau_ci"] or (math.nan, math.nan)
        print(f"{r['reward']:<12} {r['seconds']:>8.1f} {r['tau']:>6.2f} [{low:>6.2f}, {high:>5.2f}] "
              f"{r['rho']:>6.2f} {'yes' if r['picks_best'] else 'no':>6}")
    print(f"(truth: {args.truth_epochs}-epoch finetune, {truth_s:.1f} s per allocation; wrote {root}/fidelity.json)")
    return result


if __name__ == "__main__":
    main()
