"""Reward fidelity: does the cheap reward a search learns from rank allocations as the final finetune does?

From one sparse start (a dense model pruned one-shot by LAMP), draw ``--allocations`` allocations of the same
budget K: the greedy rules (prop, fill, uniform over the SSIM-selected units), draws of the untrained policy
(RL episodes before any learning, topped up uniformly to exactly K where a draw leaves some of K unspent), and
uniform random draws over every unit. Score each with the rewards a search could use, and with the truth: the
accuracy the allocation reaches after the final finetune a user would give the winner (``--truth_epochs``
epochs, best epoch on val), on the **test** images, which no reward sees (the rewards' val images are part of
the val split the truth's best epoch is picked on, so a val truth would share their noise; it is reported too):

| reward | what it is |
|---|---|
| ``val@S`` | val accuracy after S AdamW steps (zero init): the search's ``--episode_steps S`` reward |
| ``val@epoch`` | the same after one epoch (the demo's search fidelity); absent when one of ``--steps`` is an epoch |
| ``loss@S`` | mean training loss of the steps since the previous checkpoint (lower is better) |
| ``bn_recal`` | ``dense`` init, BatchNorm statistics recomputed on ``--bn_batches`` train batches, no training |
| ``saliency`` | the summed saliency of the regrown positions (the score that picks positions inside a unit) |

All ``val@S`` come from one mini-finetune whose data stream is the search's (one ``steps`` iterator), evaluated
at each S; a reward's seconds are what it costs alone (training to S plus one evaluation).

Rewards use the first ``--val_subset`` val images (the same for every allocation); the truth uses all of them.
Per reward: seconds per allocation, Kendall tau and Spearman rho with the truth (bootstrap 95% interval over
allocations), and the regret of its pick (the truth's best minus the truth of the reward's top allocation,
ties averaged). A reward that is NaN for some allocation (``loss@0``) is left out and named. Writes ``fidelity.json``,
``fidelity.csv`` and ``fidelity.png`` (rank correlation against seconds) into the experiment folder, and
prints the table. Finished allocations are kept (``rows.json``), so a stopped run continues and a run asking for
more allocations scores only the new ones (the draws are the same for a seed).

    python -m benchmarks.bench_reward_fidelity --dataset synthetic --train_subset 4500 --pretrain_epochs 8
"""
from __future__ import annotations

import argparse
import itertools
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
from utils.cli.types import non_negative_int, open_fraction, positive_int, seed_int
from utils.core.files import write_csv, write_json  # noqa: E402
from utils.core.seeds import make_generator  # noqa: E402
from utils.core.timer import Timer  # noqa: E402
from utils.regrow.allocation import GREEDY_ALLOCATIONS  # noqa: E402
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation  # noqa: E402
from utils.runtime.settings import FinetuneSettings, LoopSettings, SearchSettings  # noqa: E402
from utils.runtime.train import evaluate_model, train_epoch  # noqa: E402
from utils.scoring.layer_scores import ssim_scores  # noqa: E402
from utils.scoring.selection import selection_scores  # noqa: E402
from utils.search.drivers import make_trainer  # noqa: E402
from utils.search.episodes import search_space  # noqa: E402
from utils.sparsity.budget import regrowth_budget  # noqa: E402
from utils.sparsity.granularity import default_granularity  # noqa: E402
from utils.sparsity.grow import top_pruned  # noqa: E402
from utils.sparsity.masks import clone_model  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seed", type=seed_int, default=1)
    parser.add_argument("--sparsity", type=open_fraction, default=0.99, help="one-shot LAMP sparsity of the start")
    parser.add_argument("--regrow_step", type=open_fraction, default=0.01, help="K / N_tot")
    parser.add_argument("--allocations", type=positive_int, default=16,
                        help="allocations drawn (>= 5: 3 greedy + draws)")
    parser.add_argument("--steps", type=non_negative_int, nargs="+", default=[0, 10, 30, 100, 300],
                        help="S of the val@S rewards")
    parser.add_argument("--val_subset", type=positive_int, default=1000, help="val images of the cheap rewards")
    parser.add_argument("--bn_batches", type=positive_int, default=10, help="train batches of the BN recalibration")
    parser.add_argument("--truth_epochs", type=positive_int, default=4, help="epochs of the final finetune (the truth)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the intervals")
    return parser.parse_args(argv)


def draw_allocations(args, stage, pair, ssim: dict[str, float], search: SearchSettings,
                     threshold: float) -> list[tuple[str, dict[str, int]]]:
    """(name, allocation) pairs: greedy prop / fill / uniform over the units with SSIM <= ``threshold`` (the
    search's), then untrained-policy draws over the same units and uniform random draws over every unit,
    alternating; greedy and random spend the budget K, a policy draw at most K (as an episode does)."""
    gran = stage.granularity
    caps = {n: c for n, c in gran.capacity(pair.sparse).items() if c > 0}
    space = search_space(ssim, caps, threshold)
    selected = dict(zip(space.layers, space.capacities, strict=True))
    budget = regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(space.capacities))
    drawn = [(f"greedy {rule}", GREEDY_ALLOCATIONS[rule](ssim, selected, budget)) for rule in ("prop", "fill",
                                                                                                "uniform")]
    # the untrained policy a search of this seed starts with
    policy, rng = make_trainer(search, args.seed).policy, make_generator(args.seed, "fidelity")
    while len(drawn) < args.allocations:
        if len(drawn) % 2:
            ep = policy.sample(space.capacities, space.ssim, rng, budget=budget)
            counts = dict(zip(space.layers, ep.counts, strict=True))
            left = {n: selected[n] - counts[n] for n in space.layers}
            extra = GREEDY_ALLOCATIONS["uniform"](ssim, left, budget - sum(counts.values()))
            drawn.append((f"policy {len(drawn)}", {n: c + extra.get(n, 0) for n, c in counts.items()
                                                    if c + extra.get(n, 0)}))
        else:
            drawn.append((f"random {len(drawn)}", GREEDY_ALLOCATIONS["random"](ssim, caps, budget, rng)))
    return drawn


class _Chunk:
    """The next ``n`` batches of one shared batch iterator, as a loader ``train_epoch`` can train on."""

    def __init__(self, batches, n: int, device: torch.device) -> None:
        self.batches, self.n, self.device, self.shards = batches, n, device, 1

    def __iter__(self):
        return itertools.islice(self.batches, self.n)

    def __len__(self) -> int:
        return self.n


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


def score(args, stage, pair, scores, allocation: dict[str, int], search: SearchSettings) -> dict:
    """Every reward of ``allocation`` and the truth, with the seconds each took; the finetunes use the search's
    AdamW settings (``search.lr``, ``search.weight_decay``)."""
    gran, data, seed, device = stage.granularity, stage.data, args.seed, stage.device
    val = data.val.first(args.val_subset)
    row: dict = {}
    masks = gran.masks(pair.sparse)
    with Timer() as t:
        row["saliency"] = float(sum(scores[n].reshape(-1)[top_pruned(scores[n], masks[n], k)].sum()
                                    for n, k in allocation.items()))
    row["saliency_s"] = t.seconds
    with Timer() as t:
        model = clone_model(pair.sparse)
        gran.regrow(model, allocation, scores, "dense", pair.dense, generator=make_generator(seed, "init", device))
        train = data.train.with_generator(make_generator(seed, "bn", device))
        row["bn_recal"] = evaluate_model(bn_recalibrated(model, train, args.bn_batches), val, amp=stage.amp)[1]
    row["bn_recal_s"] = t.seconds
    # val@S: one zero-init mini-finetune on one data stream (the search's --episode_steps stream), evaluated at each S
    model = clone_model(pair.sparse)
    gran.regrow(model, allocation, scores, "zero", pair.dense, generator=make_generator(seed, "init", device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=search.lr, weight_decay=search.weight_decay)
    checkpoints = sorted(set(args.steps) | {len(data.train)})
    stream = iter(data.train.with_generator(make_generator(seed, "episode/data", device)).steps(max(checkpoints)))
    done, trained = 0, 0.0  # steps taken, seconds spent training so far
    for s in checkpoints:
        with Timer() as t:
            chunk = _Chunk(stream, s - done, device)
            loss = train_epoch(model, chunk, optimizer, amp=stage.amp, progress=False)[0] if s > done else math.nan
        trained += t.seconds
        with Timer() as t:
            acc = evaluate_model(model, val, amp=stage.amp)[1]
        name = "epoch" if s == len(data.train) and s not in args.steps else str(s)
        row[f"val@{name}"], row[f"loss@{name}"] = acc, loss
        row[f"val@{name}_s"], row[f"loss@{name}_s"], done = trained + t.seconds, trained, s
    truth = Finetuning(FinetuneSettings(epochs=args.truth_epochs, lr=search.lr, weight_decay=search.weight_decay),
                       data.train.with_generator(make_generator(seed, "final", device)), data.val,
                       LoopSettings(progress=False, verbose=False, amp=stage.amp))
    with Timer() as t:
        regrowth = Regrowth(allocation, scores, "zero", pair.dense, make_generator(seed, "init", device))
        final = apply_allocation(gran, pair.sparse, regrowth, truth, test=data.test)
    row.update(truth_val=final.fit.best_val_acc, truth_test=final.test_acc, truth_s=t.seconds)
    return row


def rank_stats(rewards: np.ndarray, truth: np.ndarray, higher: bool, resamples: int, seed: int) -> dict:
    """Kendall tau and Spearman rho of ``rewards`` with ``truth`` (signed so that +1 is a perfect predictor),
    bootstrap 95% intervals over allocations, and whether the reward's best allocation is the truth's."""
    sign = 1.0 if higher else -1.0
    if np.ptp(rewards) == 0 or np.ptp(truth) == 0:  # a constant reward (or truth) ranks nothing
        return {"tau": None, "tau_ci": None, "rho": None, "rho_ci": None, "regret": None, "resamples": 0}
    tau, rho = sign * kendalltau(rewards, truth)[0], sign * spearmanr(rewards, truth)[0]
    rng, taus, rhos = np.random.default_rng(seed), [], []
    for _ in range(resamples):
        idx = rng.integers(0, len(truth), len(truth))
        if np.ptp(rewards[idx]) > 0 and np.ptp(truth[idx]) > 0:
            taus.append(sign * kendalltau(rewards[idx], truth[idx])[0])
            rhos.append(sign * spearmanr(rewards[idx], truth[idx])[0])
    top = sign * rewards == (sign * rewards).max()  # the reward's pick; ties averaged, not broken by list order
    interval = (lambda xs: [float(np.percentile(xs, 2.5)), float(np.percentile(xs, 97.5))] if xs else None)
    return {"tau": float(tau), "tau_ci": interval(taus), "rho": float(rho), "rho_ci": interval(rhos),
            "regret": float(truth.max() - truth[top].mean()), "resamples": len(taus)}


def summarise(args, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """One line per reward: seconds per allocation, its rank statistics against the truth's test accuracy and
    (``tau_val``) against its val accuracy; and the rewards left out for a NaN."""
    test, val = np.array([r["truth_test"] for r in rows]), np.array([r["truth_val"] for r in rows])
    names = [k for k in rows[0] if not k.endswith("_s") and not k.startswith(("truth", "name", "allocation"))]
    table, dropped = [], []
    for name in names:
        values = np.array([r[name] for r in rows], dtype=float)
        if np.isnan(values).any():
            dropped.append(name)
            continue
        higher = not name.startswith("loss")
        stats = rank_stats(values, test, higher, args.bootstrap, args.seed)
        on_val = rank_stats(values, val, higher, 0, args.seed)["tau"]
        table.append({"reward": name, "seconds": float(np.mean([r[f"{name}_s"] for r in rows])), **stats,
                      "tau_val": on_val})
    return table, dropped


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
    ax.set_ylabel("Kendall tau with the final test accuracy")
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
    scoring = ("allocations", "steps", "val_subset", "bn_batches", "truth_epochs", "bootstrap")  # not the models'
    check_settings(root, vars(args), ignore=("device", "save_dir", *scoring))
    dense = dense_model(args, args.seed, root)
    start = pruned_model(args, args.seed, root, dense, args.sparsity, args.prune_epochs, "start")
    stage_args = regrowth_oneshot.parse_args(stage_flags(args, args.seed) + [
        "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start)])
    settings = regrowth_settings(stage_args, default_granularity(), "oneshot")
    stage, pair = prepare_dense_sparse(stage_args, start, reparam=True)
    ssim = ssim_scores(stage, settings.scoring, pair.dense, pair.sparse)
    scores = selection_scores(stage, pair, None, settings.selection, settings.scoring)
    path, kept = root / "rows.json", {k: getattr(args, k) for k in scoring if k not in ("allocations", "bootstrap")}
    stored = json.loads(path.read_text()) if path.is_file() else {}
    rows = stored.get("rows", []) if stored.get("scoring") == kept else []  # the same draws, scored the same way
    drawn = draw_allocations(args, stage, pair, ssim, settings.search, settings.scoring.ssim_threshold)
    rows = rows[:len(drawn)]
    for name, allocation in drawn[len(rows):]:
        scored = score(args, stage, pair, scores, allocation, settings.search)
        rows.append({"name": name, "allocation": allocation, **scored})
        write_json(path, {"scoring": kept, "rows": rows})
        print(f"{name:<12} truth val {rows[-1]['truth_val']:.2f}%  val@{max(args.steps)} "
              f"{rows[-1][f'val@{max(args.steps)}']:.2f}%", flush=True)
    table, dropped = summarise(args, rows)
    truth_s = float(np.mean([r["truth_s"] for r in rows]))
    result = {"machine": machine(), "settings": vars(args),
              "truth_seconds": truth_s, "table": table,
              "dropped": dropped, "rows": rows}
    write_json(root / "fidelity.json", result)
    write_csv(root / "fidelity.csv", [{k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()}
                                      for r in table])
    plot(table, truth_s, f"{args.m_name} on {args.dataset}, seed {args.seed}: {len(rows)} allocations of K = "
         f"{args.regrow_step:g} N_tot at {args.sparsity:g} sparsity", root / "fidelity.png")
    print(f"\n{'reward':<12} {'s/alloc':>8} {'tau':>6} {'tau 95%':>16} {'rho':>6} {'regret':>7} {'tau val':>8}")
    for r in table:
        if r["tau"] is None:
            print(f"{r['reward']:<12} {r['seconds']:>8.1f}  constant (reward or truth): ranks nothing")
            continue
        low, high = r["tau_ci"] or (math.nan, math.nan)
        tau_val = "-" if r["tau_val"] is None else f"{r['tau_val']:.2f}"
        print(f"{r['reward']:<12} {r['seconds']:>8.1f} {r['tau']:>6.2f} [{low:>6.2f}, {high:>5.2f}] "
              f"{r['rho']:>6.2f} {r['regret']:>7.2f} {tau_val:>8}")
    print(f"(truth: test accuracy after a {args.truth_epochs}-epoch finetune, {truth_s:.1f} s per allocation; "
          f"left out for a NaN: {', '.join(dropped) or 'none'}; wrote {root}/fidelity.json)")
    return result


if __name__ == "__main__":
    main()
