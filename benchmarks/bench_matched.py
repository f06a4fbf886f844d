"""The method's central claim, checked at equal finetune epochs: is prune-further-then-regrow better than
pruning straight to the final sparsity?

Per seed (--seeds), with the stage scripts (run folders under --save_dir, reused on a rerun):

* dense: pretrain.py, --pretrain_epochs (or the --dense file of the seed: the reference dense models);
* straight: one-shot LAMP from dense to --final_sparsity, finetuned --prune_epochs + --regrow_epochs;
* start: one-shot LAMP from dense to --start_sparsity, finetuned --prune_epochs;
* allocations of K = (start - final) · N_tot weights over the start's layers: ``rl`` (regrowth_oneshot.py,
  --episodes episodes of --search_epochs), ``random_search`` (the same with --random_search, equal episodes)
  ``greedy`` (SSIM-proportional, regrowth_greedy.py's ``prop`` rule) and ``greedy_uniform`` (shares
  proportional to each layer's pruned count, its ``uniform`` rule); the searches regrow into --units (the greedy
  rules into every unit with room; --units all: the same units for all) and take cheap episodes with
  --episode_steps / --episode_val_subset;
* every allocation x every --inits strategy x every --selections selector: regrow into the start (the selector
  picks the positions inside each layer: ``saliency`` by default; ``reference`` takes those that a model
  pruned from dense to --final_sparsity with --prune_epochs (as many as the start had) keeps, and with
  ``dense`` init copies its values), finetune --regrow_epochs (AdamW, best epoch on val), test accuracy
  reported;
* ``none``: the start finetuned --regrow_epochs more without regrowing anything (the same finetune stream), which
  tells how much of an arm's gain over the start is the regrown weights and how much the extra epochs.

So every final model has had --prune_epochs + --regrow_epochs finetune epochs after pruning (the searches'
mini-finetunes only choose the allocation; their models are not used). Printed: mean ± std over seeds of
val and test accuracy per arm, and of each arm's paired difference to ``straight`` (same seed). Each seed's
arms are kept in ``{seed}/rows.json`` as each finishes (and with --results, in one small JSON per seed there, with
the fingerprint of the dense model's weights, so rows of another dense model are never paired with them): a rerun
with more --allocations, --inits or --selections runs only the new arms. Arms are named ``allocation/init``,
with ``/selection`` added for selectors other than saliency.

    python -m benchmarks.bench_matched --seeds 1 2 3                   # synthetic, CPU (~35 min a seed)
    # seeds in parallel processes, then one call that gathers their finished rows:
    python -m benchmarks.bench_matched --seeds 2 & python -m benchmarks.bench_matched --seeds 3; wait
    python -m benchmarks.bench_matched --seeds 1 2 3
    python -m benchmarks.bench_matched --seeds 1 2 3 --dataset cifar10 --data_dir /tmp/cifar --train_subset 5000
    # the swap arms (docs/results/matched_experiment.md), each seed's rows kept in the repository:
    python -m benchmarks.bench_matched --train_subset 3000 --allocations greedy none --inits zero \
        --swap_arms straight regrown gradual --save_dir runs/matched4 --results docs/results/data/matched
    # gradual pruning without swaps (the arm that separates the schedule from the swaps), in the same run
    # folders, so the new rows pair with the kept ones by the same dense models:
    python -m benchmarks.bench_matched --train_subset 3000 --allocations greedy none --inits zero \
        --swap_arms gradual --swap_every 0 --save_dir runs/matched4 --results docs/results/data/matched

    # the paper regime (docs/results/matched_paper.md): the reference dense models, 20 epochs after pruning for
    # every arm, the swap interval the README recommends (utils/sparsity/swap.py's RECOMMENDED_EVERY_EPOCHS)
    python -m benchmarks.bench_matched --seeds 1 --dataset cifar10 --data_dir DATA \
        --dense docs/results/data/dense/resnet20_cifar10_seed{seed}.pth --start_sparsity 0.99 --final_sparsity 0.98 \
        --prune_epochs 10 --regrow_epochs 10 --allocations greedy_uniform random_search rl none --inits zero \
        --units all --episodes 200 --episode_steps 10 --episode_val_subset 1000 --swap_arms straight gradual \
        --swap_every_epochs 0.83 --save_dir runs/matched_paper --results docs/results/data/matched_paper
    # then the same with --swap_arms gradual --swap_every 0 (gradual pruning without swaps)

Results: benchmarks/results/matched_{dataset}.json and .csv (and the --results files).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

import regrowth_oneshot
from benchmarks.common import ROOT, machine, save_results
from benchmarks.experiment import (
    add_experiment_args,
    check_settings,
    dense_model,
    pruned_model,
    run,
    stage_flags,
)
from utils.cli.flags import cli_main
from utils.cli.jobs import regrowth_settings
from utils.cli.prepare import prepare_dense_sparse
from utils.cli.types import non_negative_int, open_fraction, positive_float, positive_int, seed_int
from utils.core.errors import UsageError
from utils.core.files import write_csv, write_json
from utils.core.paths import pretrained_path
from utils.core.provenance import PROVENANCE_KEY
from utils.regrow.allocation import greedy_allocation
from utils.regrow.apply import FINETUNE_ORDER, regrow_and_finetune
from utils.results.figures import mean_std
from utils.runtime.checkpoint import read_checkpoint
from utils.runtime.settings import ScoringSettings
from utils.runtime.stage import DenseSparse, Stage
from utils.runtime.train import evaluate_model
from utils.scoring.layer_scores import ssim_scores
from utils.scoring.selection import SELECTORS, init_source, load_reference
from utils.search.episodes import UNIT_SETS
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.granularity import default_granularity
from utils.sparsity.swap import SwapSettings

ALLOCATIONS = ("rl", "random_search", "greedy", "greedy_uniform", "none")
GREEDY_RULES = {"greedy": "prop", "greedy_uniform": "uniform"}  # allocation -> regrowth_greedy.py's --greedy_mode
SWAP_ARMS = ("straight", "regrown", "gradual")  # --swap_arms: the arms finetuned with swap cycles


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(parser)
    parser.add_argument("--seeds", type=seed_int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--start_sparsity", type=open_fraction, default=0.99)
    parser.add_argument("--final_sparsity", type=open_fraction, default=0.98)
    parser.add_argument("--regrow_epochs", type=positive_int, default=4, help="finetune epochs after regrowth")
    parser.add_argument("--episodes", type=positive_int, default=12, help="episodes of the RL and random searches")
    parser.add_argument("--search_epochs", type=positive_int, default=1, help="mini-finetune epochs per episode")
    parser.add_argument("--episode_steps", type=positive_int, default=None,
                        help="cheap episodes: a mini-finetune of this many optimizer steps instead of --search_epochs")
    parser.add_argument("--episode_val_subset", type=positive_int, default=None,
                        help="cheap episodes: rewards on the first N val images")
    parser.add_argument("--units", choices=UNIT_SETS, default="ssim",
                        help="units the searches may regrow into (the greedy rules split over every unit with room; "
                             "all: the same units for every allocator)")
    parser.add_argument("--inits", nargs="+", default=["zero", "dense", "magnitude", "kaiming"])
    parser.add_argument("--allocations", nargs="+", default=list(ALLOCATIONS), choices=ALLOCATIONS)
    parser.add_argument("--selections", nargs="+", default=["saliency"], choices=list(SELECTORS),
                        help="within-layer selectors (reference: a model pruned to --final_sparsity with "
                             "--prune_epochs is the reference)")
    parser.add_argument("--swap_arms", nargs="+", default=[], choices=SWAP_ARMS,
                        help="arms with swap cycles (RigL: 30%% of each layer's kept weights at first, cosine "
                             "decay, none in the last 25%% of the steps) every --swap_every steps: straight "
                             "(one-shot to --final_sparsity), regrown (greedy/zero regrown into the start, then "
                             "finetuned) and gradual (dense to --final_sparsity during one finetune)")
    parser.add_argument("--swap_every", type=non_negative_int, default=20,
                        help="optimizer steps between swaps; 0: the --swap_arms without swaps (named like their "
                             "plain arms, e.g. gradual; straight and greedy/zero are then the plain arms themselves)")
    parser.add_argument("--swap_every_epochs", type=positive_float, default=None,
                        help="instead of --swap_every: epochs between swaps (0.25: four an epoch), the same "
                             "interval on any data size; arms named +rigl{E}ep")
    parser.add_argument("--results", default=None,
                        help="also keep each seed's finished rows here (one small JSON per seed and settings, e.g. "
                             "docs/results/data/matched) and read them back, so a later run adds seeds or arms "
                             "without the run folders")
    return parser.parse_args(argv)


# which arms to run does not change how any arm is made: the arm lists are not settings (swaps: in the arm names)
NOT_SETTINGS = ("seeds", "device", "save_dir", "allocations", "inits", "selections", "swap_arms", "swap_every",
                "swap_every_epochs", "results")


# flags added after rows were kept: at these values they are left out of the settings, so the kept rows of
# earlier runs keep their digests
ADDED_LATER = {"dense": None, "units": "ssim", "episode_steps": None, "episode_val_subset": None}


def run_settings(args: argparse.Namespace) -> dict[str, str]:
    """The flags that define how the arms are made (not which arms, not where the data folder is)."""
    return {k: str(v) for k, v in sorted(made_with(args).items()) if k not in NOT_SETTINGS + ("data_dir",)}


def made_with(args: argparse.Namespace) -> dict:
    """The flags (those added later only where they are not at their old value) and the finetune's data-order
    rule: what a run folder and its kept rows were made with."""
    flags = {k: v for k, v in vars(args).items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}
    return {**flags, "finetune_order": FINETUNE_ORDER}


def kept_path(args: argparse.Namespace, seed: int) -> Path | None:
    """The --results file of ``seed`` (None without --results); its name carries a digest of ``run_settings``,
    so runs of other settings keep their own files."""
    if args.results is None:
        return None
    digest = hashlib.sha256(json.dumps(run_settings(args)).encode()).hexdigest()[:8]
    return Path(args.results) / f"{args.dataset}_{args.m_name}_regrow{args.regrow_epochs}_{digest}_seed{seed}.json"


def searched_allocation(args, seed: int, root: Path, dense: Path, start: Path, kind: str) -> dict[str, int]:
    """Best allocation of an RL or random search from ``start`` (run once, then read from its summary)."""
    label = f"matched_{kind}"
    folder = "random_regrowth_oneshot" if kind == "random_search" else "regrowth_oneshot"
    summary = root / "search" / args.m_name / folder / label / "summary.json"
    if not summary.is_file():
        run(regrowth_oneshot.main, stage_flags(args, seed) + [
            "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start),
            "--regrow_step", f"{args.start_sparsity - args.final_sparsity:.6f}", "--num_epochs", str(args.episodes),
            "--finetune_epochs", str(args.search_epochs), "--label", label, "--overwrite", "--units", args.units,
            *(["--episode_steps", str(args.episode_steps)] if args.episode_steps else []),
            *(["--episode_val_subset", str(args.episode_val_subset)] if args.episode_val_subset else []),
            *(["--random_search"] if kind == "random_search" else [])])
    return json.loads(summary.read_text())["best"]["allocation"]


def one_seed(args: argparse.Namespace, seed: int) -> list[dict]:
    """The rows of the asked arms for ``seed``. Finished arms are kept in ``{seed root}/rows.json`` and never run
    again, so seeds can run in separate processes, a last call only gathers them, and a call asking for more
    arms runs only those."""
    root = Path(args.save_dir) / f"matched_{args.dataset}_{args.m_name}" / f"seed{seed}"
    check_settings(root.parent, made_with(args), ignore=NOT_SETTINGS)
    path, kept = root / "rows.json", kept_path(args, seed)
    stored = json.loads(kept.read_text()) if kept and kept.is_file() else {"rows": []}
    done = {row["arm"]: row for row in stored["rows"]}
    done.update({row["arm"]: row for row in json.loads(path.read_text())} if path.is_file() else {})
    for row in done.values():  # rows written before --selections existed were all saliency
        row.setdefault("selection", "-" if row["init"] == "-" else "saliency")
    wanted = list(dict.fromkeys(["straight"] + [arm_name(*arm) for arm in planned(args)] + swap_names(args)))
    missing = any(arm not in done for arm in wanted)
    given = bool(args.dense)  # --dense: a dense checkpoint from elsewhere (the reference models)
    trained = dense_model(args, seed, root) if missing or given else pretrained_path(root, args.m_name)
    dense = stored.get("dense")
    if given or trained.with_name("summary.json").is_file():  # the rows must come from the kept rows' dense model
        dense = same_dense(trained, dense, kept)

    def keep() -> None:
        """Write the finished rows (after each arm, so an interrupted run loses at most the arm it was in)."""
        write_json(path, list(done.values()))
        if kept is not None:
            write_json(kept, {"settings": run_settings(args), **({"dense": dense} if dense else {}),
                              "rows": list(done.values())})

    for row in arms(args, seed, root, set(done)) if missing else ():
        done[row["arm"]] = row
        keep()
    keep()
    return [done[arm] for arm in wanted]


def same_dense(path: Path, kept: str | None, where: Path | None) -> str:
    """The weights' fingerprint of the dense model at ``path`` (its lineage); a ``UsageError`` when the kept rows
    (file ``where``) were made from a dense model with other weights (``kept``), so new arms never pair with
    them."""
    fingerprint = read_checkpoint(path).lineage
    if kept is not None and kept != fingerprint:
        raise UsageError(f"the rows kept in {where} come from another dense model than {path} (weights "
                         f"{kept} vs {fingerprint}); run in the --save_dir they were made in, or give another "
                         "--results")
    return fingerprint


def planned(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(allocation, init, selection) of every regrowth arm, in the order asked; ``none`` regrows nothing, so it
    has one arm, with no init and no selection (``-``)."""
    wanted = [(kind, init, selection) if kind != "none" else ("none", "-", "-")
              for kind in args.allocations for init in args.inits for selection in args.selections]
    return list(dict.fromkeys(wanted))  # an arm asked twice runs once


# the swap rule in the arm and folder names: "rigl" grows just-dropped weights back as RigL's Algorithm 1 does;
# the rows named "+swap{N}" (docs/results/data/matched) left them out, so the two are never paired or reused
SWAP_RULE = "rigl"


def swap_interval(args: argparse.Namespace) -> str:
    """The swap interval in the arm names: ``{E}ep`` (--swap_every_epochs), ``{N}`` (--swap_every), '' for none."""
    if args.swap_every_epochs:
        return f"{args.swap_every_epochs:g}ep"
    return str(args.swap_every) if args.swap_every else ""


def swap_names(args: argparse.Namespace) -> list[str]:
    """The names of the --swap_arms arms (``straight+rigl20``: with swaps every 20 steps; with --swap_every 0
    the plain names: ``straight``, ``greedy/zero``, ``gradual``)."""
    suffix = f"+{SWAP_RULE}{swap_interval(args)}" if swap_interval(args) else ""
    return [f"{arm if arm != 'regrown' else 'greedy/zero'}{suffix}" for arm in args.swap_arms]


def arm_name(kind: str, init: str, selection: str) -> str:
    """``allocation/init``, plus ``/selection`` for a selector other than saliency; ``none`` alone."""
    if kind == "none":
        return kind
    return f"{kind}/{init}" + ("" if selection == "saliency" else f"/{selection}")


def arms(args: argparse.Namespace, seed: int, root: Path, done: set[str]) -> Iterator[dict]:
    """The rows of the arms of ``seed`` not in ``done``, in ``root`` (see the module docstring), each as soon as
    its arm finished."""
    dense = dense_model(args, seed, root)
    start = pruned_model(args, seed, root, dense, args.start_sparsity, args.prune_epochs, "start")
    todo = [arm for arm in planned(args) if arm_name(*arm) not in done]
    reference = None
    if any(selection == "reference" for _, _, selection in todo):
        reference = pruned_model(args, seed, root, dense, args.final_sparsity, args.prune_epochs, "reference")
    stage_args = regrowth_oneshot.parse_args(stage_flags(args, seed) + [
        "--save_dir", str(root / "search"), "--pretrained", str(dense), "--initial_ckpt", str(start),
        *(["--selection", "reference", "--reference_ckpt", str(reference)] if reference else [])])
    settings = regrowth_settings(stage_args, default_granularity(), "oneshot")
    stage, pair = prepare_dense_sparse(stage_args, start, reparam=True)
    record = stage.provenance()  # each row says where it came from: later runs add rows to the kept file
    if "straight" not in done:
        path = pruned_model(args, seed, root, dense, args.final_sparsity, args.prune_epochs + args.regrow_epochs,
                            "straight")
        yield {**straight_row(stage, seed, path), PROVENANCE_KEY: record}
    plain = {"straight", *(arm_name(*arm) for arm in planned(args))}  # made below (--swap_every 0 names them)
    swaps = [(arm, name) for arm, name in zip(args.swap_arms, swap_names(args), strict=True)
             if name not in done | plain]
    for arm, name in swaps:  # the pruned arms first: they need no allocation
        if arm != "regrown":
            yield swap_arm_row(args, seed, root, dense, (stage, pair), (arm, name), {}, record)
    needs_greedy = any(arm == "regrown" for arm, _ in swaps)
    allocations = {kind: allocation(args, seed, root, (stage, pair), kind, settings.scoring)
                   for kind in dict.fromkeys([kind for kind, _, _ in todo] + (["greedy"] if needs_greedy else []))}
    # checks that it is less sparse and from the same dense model
    reference_model = load_reference(stage, pair, settings.selection)
    selections = [selection for _, _, selection in todo] + (["saliency"] if needs_greedy else [])
    scores = {name: SELECTORS.get(name)(stage, pair, reference_model, settings.scoring)
              for name in dict.fromkeys(selections) if name != "-"}
    for kind, init, selection in todo:
        source = init_source(pair, reference_model if selection == "reference" else None)
        result = regrow_and_finetune(stage, pair, allocations[kind], scores.get(selection),
                                     None if init == "-" else init, args.regrow_epochs, source=source)
        print(f"seed {seed} {kind:<14} {init:<10} {selection:<10} regrew {result['regrown']:>6}  "
              f"val {result['val_acc']:.2f}%  test {result['test_acc']:.2f}%", flush=True)
        yield {"seed": seed, "arm": arm_name(kind, init, selection), "allocation": kind, "init": init,
               "selection": selection, **result, PROVENANCE_KEY: record}
    for arm, name in swaps:
        if arm == "regrown":
            yield swap_arm_row(args, seed, root, dense, (stage, pair), (arm, name),
                               {"greedy": allocations["greedy"], "saliency": scores["saliency"]}, record)


def swap_arm_row(args: argparse.Namespace, seed: int, root: Path, dense: Path,
                 prepared: tuple[Stage, DenseSparse], arm: tuple[str, str], regrown: dict, record: dict) -> dict:
    """``swap_row`` of ``arm`` (its --swap_arms kind, its row name) with its provenance ``record``, printed;
    ``regrown``: the greedy allocation and the saliency scores (the ``regrown`` arm only)."""
    kind, name = arm
    row = swap_row(args, seed, root, dense, prepared, kind, name, regrown.get("greedy"), regrown.get("saliency"))
    print(f"seed {seed} {name:<36} val {row['val_acc']:.2f}%  test {row['test_acc']:.2f}%", flush=True)
    return {**row, PROVENANCE_KEY: record}


def swap_row(args: argparse.Namespace, seed: int, root: Path, dense: Path, prepared: tuple[Stage, DenseSparse],
             arm: str, name: str, greedy: dict[str, int] | None, saliency: dict[str, torch.Tensor] | None) -> dict:
    """The row of swap arm ``arm`` (see --swap_arms): as many finetune epochs after pruning as every other arm
    (--prune_epochs + --regrow_epochs), the same swap cycles (none with --swap_every 0); ``regrown`` regrows the
    ``greedy`` allocation at the ``saliency`` positions."""
    stage, pair = prepared
    flags = (["--swap_every_epochs", str(args.swap_every_epochs)] if args.swap_every_epochs
             else ["--swap_every", str(args.swap_every)] if args.swap_every else [])
    epochs = args.prune_epochs + args.regrow_epochs
    if arm == "regrown":
        result = regrow_and_finetune(stage, pair, greedy, saliency, "zero", args.regrow_epochs,
                                     swap=SwapSettings(every=args.swap_every, every_epochs=args.swap_every_epochs))
        return {"seed": seed, "arm": name, "allocation": "greedy", "init": "zero", "selection": "saliency", **result}
    mode = "oneshot" if arm == "straight" else "gradual"
    label = f"{arm}_{SWAP_RULE}{swap_interval(args)}" if swap_interval(args) else arm
    path = pruned_model(args, seed, root, dense, args.final_sparsity, epochs, label, mode, flags)
    return {**straight_row(stage, seed, path), "arm": name}


def allocation(args: argparse.Namespace, seed: int, root: Path, prepared: tuple[Stage, DenseSparse], kind: str,
               scoring: ScoringSettings) -> dict[str, int]:
    """{layer: weights to regrow} of allocation ``kind`` for the start model ``pair.sparse`` of ``prepared``
    (stage, pair): K weights by the greedy SSIM-proportional rule (SSIM by ``scoring``) or the best of a search,
    nothing for ``none``."""
    stage, pair = prepared
    if kind == "none":
        return {}
    gran = stage.granularity
    caps = {n: c for n, c in gran.capacity(pair.sparse).items() if c > 0}
    if kind in GREEDY_RULES:
        budget = regrowth_budget(gran.total(pair.sparse), args.start_sparsity - args.final_sparsity,
                                 sum(caps.values()))
        ssim = ssim_scores(stage, scoring, pair.dense, pair.sparse) if GREEDY_RULES[kind] == "prop" else {}
        return greedy_allocation(GREEDY_RULES[kind], ssim, caps, budget)
    dense, start = pair.dense_path, pair.sparse_path  # what the stage was prepared from
    return searched_allocation(args, seed, root, dense, start, kind)


def straight_row(stage, seed: int, path: Path) -> dict:
    """The row of the model pruned straight to the final sparsity (``path``): its val and test accuracy (%)."""
    model = stage.load_model(path, sparse=True)
    return {"seed": seed, "arm": "straight", "allocation": "-", "init": "-", "selection": "-",
            "sparsity": stage.granularity.sparsity(model), "regrown": 0,
            "val_acc": evaluate_model(model, stage.data.val, amp=stage.amp)[1],
            "test_acc": evaluate_model(model, stage.data.test, amp=stage.amp)[1]}


def table(rows: list[dict]) -> str:
    """Markdown: mean ± std over seeds of val and test accuracy per arm, and of the difference to straight."""
    straight = {r["seed"]: r for r in rows if r["arm"] == "straight"}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["| arm | n | regrown | val acc (%) | test acc (%) | test - straight (pp) |",
             "|---|---:|---:|---:|---:|---:|"]
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        diff = [r["test_acc"] - straight[r["seed"]]["test_acc"] for r in mine]
        lines.append(f"| {arm} | {len(mine)} | {statistics.fmean(r['regrown'] for r in mine):.0f} | "
                     f"{mean_std([r['val_acc'] for r in mine])} | {mean_std([r['test_acc'] for r in mine])} | "
                     f"{'-' if arm == 'straight' else mean_std(diff)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [row for seed in args.seeds for row in one_seed(args, seed)]
    text = table(rows)
    print(text)
    results = save_results(f"matched_{args.dataset}", {"args": vars(args), "rows": rows, "table": text})
    write_csv(ROOT / "benchmarks" / "results" / f"matched_{args.dataset}.csv",  # provenance: in the JSON
              [{k: v for k, v in row.items() if k != PROVENANCE_KEY} for row in rows])
    print(f"wrote {results} ({machine()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main)())
