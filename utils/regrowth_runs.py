"""The RL regrowth stages, once for both granularities: one-shot (one budget) and iterative (an RL-chosen
budget per iteration, until a target sparsity), over weights or channel groups.

``regrowth_oneshot.py`` / ``regrowth_structure_oneshot.py`` and ``regrowth_iterative.py`` /
``regrowth_structure_iterative.py`` are thin scripts: their flags (``add_search_args``, with each
granularity's defaults and the original's flag names as aliases) and a call of ``run_oneshot`` or
``run_iterative``. A unit is a prunable layer (weights) or a coupled channel group (channels); the budget is
a fraction of all its entries (N_tot weights, or all groupable channels); SSIM probes each unit's layer;
scores reduce ``(dL/dθ)^2 θ^2`` (``fisher``) or ``|dL/dθ · θ|`` (``taylor``) over each unit's slices.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.baseline import baseline_table, interpolate
from utils.budget import regrowth_budget
from utils.cli import (
    add_common_args,
    add_controller_args,
    add_scoring_args,
    add_speed_args,
    fraction,
    open_fraction,
    positive_float,
    positive_int,
)
from utils.device import UNIT_NAMES, DeviceProfile, add_device_args, fit, model_costs, profile_from_args
from utils.device_budget import device_budget
from utils.errors import UsageError
from utils.export import verify_export
from utils.granularity import granularity_class
from utils.paths import (
    BEST_MODEL,
    BEST_PRE_FINETUNE,
    SEARCH_STATE,
    SUMMARY,
    baseline_cache,
    iteration_dir,
    prune_dir,
    regrowth_dir,
)
from utils.run import LOG, log_outputs, setup_logging, write_json
from utils.scores import ssim_scores
from utils.search import (
    Search,
    SearchResult,
    check_search_dir,
    config_from_args,
    search_space,
    trainer_from_args,
    widen_space,
)
from utils.selection import add_selection_args, default_init, init_source, load_reference, selection_scores
from utils.stage import DenseSparse, Stage, check_parent, prepare_dense_sparse
from utils.train import evaluate


def add_search_args(parser: argparse.ArgumentParser, granularity: str, schedule: str) -> None:
    """Every flag of a regrowth search script at ``granularity`` (weight|channel) and ``schedule``
    (oneshot|iterative), with the original scripts' names as aliases."""
    kind = granularity_class(granularity)
    episodes, actions, epochs, patience = kind.search_defaults[schedule]
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_controller_args(parser, episodes=episodes, action_space_size=actions, finetune_epochs=epochs,
                        patience=patience, default_init=kind.default_init)
    add_selection_args(parser)
    parser.set_defaults(saliency_batches=kind.score_batches)
    default_baseline = {"iterative": f"{{save_dir}}/{{m_name}}/{prune_dir('', '', granularity, 'iterative').name}",
                        "oneshot": "none: the sparse start's own val accuracy"}[schedule]
    parser.add_argument("--baseline_dir", default=None, help="pruning checkpoints whose val accuracy, interpolated "
                        f"at the regrown sparsity, is the reward's zero point (default {default_baseline})")
    if schedule == "oneshot":
        parser.add_argument("--regrow_step", "--sparsity_delta", dest="regrow_step", type=open_fraction, default=0.01,
                            help="budget K as a fraction of N_tot (all weights, or all groupable channels); with a "
                                 "device profile, K is what fills it (weights: its bytes; channels: its MACs)")
        add_device_args(parser)
        parser.add_argument("--reward_temperature", type=positive_float, default=0.005, help="advantage divisor τ")
        parser.add_argument("--label", default=None, help="output sub-folder (default: start sparsity, e.g. 0.9900)")
    else:
        parser.add_argument("--target_sparsity", type=fraction, required=True, help="stop at or below this sparsity")
        parser.add_argument("--num_iters", type=positive_int, default=10, help="maximum regrowth iterations")
        parser.add_argument("--budget_space_size", type=positive_int, default=kind.budget_space_size,
                            help="B budget options")
        low, high = kind.budget_fracs
        parser.add_argument("--min_budget_frac", "--min_restore_frac", dest="min_budget_frac", type=open_fraction,
                            default=low, help="smallest budget / N_tot")
        parser.add_argument("--max_budget_frac", "--max_restore_frac", dest="max_budget_frac", type=open_fraction,
                            default=high, help="largest budget / N_tot")


# ---- shared pieces -----------------------------------------------------------------------------------------

def start(args: argparse.Namespace, granularity: str) -> tuple[Stage, DenseSparse, nn.Module | None]:
    """Stage, (dense, sparse) pair and --selection reference model of a search; the init strategy is
    resolved and checked before anything loads."""
    kind = granularity_class(granularity)
    args.init_strategy = default_init(args, kind.default_init)
    kind.check_init(args.init_strategy)
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True, granularity=granularity)
    return stage, pair, load_reference(stage, pair)


def pruning_baseline(stage: Stage, folder: Path) -> dict[float, float]:
    """{sparsity: val acc} of the plain-pruning checkpoints in ``folder`` (cached beside them), counted at the
    stage's granularity."""
    def measure(path: Path) -> tuple[float, float]:
        model = stage.load_model(path, sparse=True)
        check_parent(stage, path)  # a baseline pruned from another dense model is no zero point for this one
        return stage.granularity.sparsity(model), evaluate(model, stage.data.val, amp=stage.amp)[1]

    settings = {"model": stage.model_name, **stage.val_settings, "granularity": stage.granularity.name}
    return baseline_table(folder, measure, settings, baseline_cache(stage.args.save_dir, stage.model_name, folder))


def budget_options(args: argparse.Namespace, n_tot: int, total_capacity: int) -> list[int]:
    """The B budgets the controller chooses from: linspace(min, max) fractions of N_tot, capped by capacity."""
    fracs = np.linspace(args.min_budget_frac, args.max_budget_frac, args.budget_space_size)
    return [regrowth_budget(n_tot, float(f), total_capacity) for f in fracs]


def finish(stage: Stage, best_path: Path, acc_key: str) -> dict:
    """Test accuracy of the best model (under ``acc_key``), its granularity's figures (exported params and
    MACs for channels), and (channels) its physical export beside it, checked to give the same outputs."""
    model = stage.load_model(best_path)
    report = {acc_key: evaluate(model, stage.data.test, amp=stage.amp)[1], **stage.granularity.describe(model)}
    exported = stage.granularity.export(model)
    if exported is not None:
        verify_export(model, exported[0], stage.granularity.input_size)
        path = best_path.with_name(f"{best_path.stem}_exported.pth")
        meta = {"stage": "export", "parent": str(best_path), "test_acc": report[acc_key],
                **{k: v for k, v in report.items() if k != acc_key}}
        stage.save(path, exported[0], meta, export_history=exported[1])
        report["exported_checkpoint"] = str(path)
    return report


# ---- one-shot ---------------------------------------------------------------------------------------------

@dataclass
class OneShot:
    """A prepared one-shot search and what its summary reports."""

    stage: Stage
    pair: DenseSparse
    search: Search
    start_sparsity: float
    start_val: float
    baseline: dict[float, float] | None
    profile: DeviceProfile | None = None


def prepare_oneshot(args: argparse.Namespace, granularity: str) -> OneShot:
    """Everything before the first episode of a one-shot search: inputs and outputs checked, scores, the
    searched units, the budget K = --regrow_step · N_tot, and the ``Search`` (resumed with --resume)."""
    profile = profile_from_args(args)
    stage, pair, reference = start(args, granularity)
    gran = stage.granularity
    sparsity = gran.sparsity(pair.sparse)
    fills = device_budget(profile, gran, pair.sparse) if profile is not None else None  # fails before writing
    out = (regrowth_dir(args.save_dir, stage.model_name, gran.name, "oneshot", args.random_search)
           / (args.label or f"{sparsity:.4f}"))
    check_search_dir(out, args)
    regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(gran.capacity(pair.sparse).values()))  # not 0
    table = pruning_baseline(stage, Path(args.baseline_dir)) if args.baseline_dir else None
    setup_logging(out)
    ssim = ssim_scores(stage, pair.dense, pair.sparse)
    capacities = gran.capacity(pair.sparse)
    space = search_space(ssim, capacities, args.ssim_threshold)
    if fills is not None:  # the searched units must be able to hold what fills the device
        selected, space = len(space.layers), widen_space(space, ssim, capacities,
                                                         lambda caps: fills.room(caps) >= fills.need)
        if len(space.layers) > selected:
            LOG.info("the %d unit(s) under --ssim_threshold cannot hold what fills the device: searching the next "
                     "%d most damaged as well", selected, len(space.layers) - selected)
    budget = (fills.budget(dict(zip(space.layers, space.capacities, strict=True))) if fills is not None
              else regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(space.capacities)))
    scores = selection_scores(stage, pair, reference)
    _, start_val = evaluate(pair.sparse, stage.data.val, amp=stage.amp)
    unit = "MACs" if fills is not None and fills.macs is not None else f"{gran.name}s"  # what K counts
    LOG.info("start: %s sparsity %.4f, val %.2f%%; K = %s %s; searching %s", gran.name, sparsity, start_val,
             f"{budget:,}", unit, space.layers)
    zero_point = (lambda s: interpolate(table, s)) if table else (lambda s: start_val)
    search = Search(stage, pair.sparse, scores, init_source(pair, reference), space,
                    trainer_from_args(args, temperature=args.reward_temperature, clip=100.0), config_from_args(args),
                    zero_point=zero_point, out=out, parent=pair.sparse_path, budget=budget,
                    macs=fills.macs if fills is not None else None)
    if args.resume:
        search.resume()
    return OneShot(stage, pair, search, sparsity, start_val, table, profile)


def run_oneshot(args: argparse.Namespace, granularity: str) -> SearchResult:
    """One search regrowing K = --regrow_step · N_tot units into the SSIM-selected units of --initial_ckpt."""
    job = prepare_oneshot(args, granularity)
    stage, search, gran = job.stage, job.search, job.stage.granularity
    limit = "macs" if search.macs is not None else "bytes"  # what a device profile's regrowth fills
    best = search.run()
    space = search.space
    summary = {
        "model": stage.model_name, "dataset": stage.dataset, "granularity": gran.name,
        "start_sparsity": job.start_sparsity, "start_val_acc": job.start_val, "budget": search.budget,
        "budget_unit": "macs" if search.macs is not None else f"{gran.name}s",  # K counts MACs or units
        "baseline_dir": args.baseline_dir, "search": "random" if args.random_search else "rl",
        "start_test_acc": evaluate(job.pair.sparse, stage.data.test, amp=stage.amp)[1],
        "searched_layers": dict(zip(space.layers, space.ssim, strict=True)), "episodes": len(search.history),
        "finetune_epochs": args.finetune_epochs, "search_seconds": search.seconds,
        "best": vars(best), **finish(stage, search.out / BEST_MODEL, "best_test_acc")}
    if job.profile is not None:
        summary["device"] = fit(job.profile, model_costs(job.profile, gran, stage.load_model(search.out / BEST_MODEL),
                                                          stage.device))
        device = summary["device"]
        LOG.info("device profile %s: the best model %s (margin %s %s)", job.profile.name,
                 "fits" if device["fits"] else "DOES NOT FIT", f"{device['limits'][limit]['margin']:+,.0f}",
                 UNIT_NAMES[limit])
    write_json(search.out / SUMMARY, summary)
    LOG.info("best episode %d: val %.2f%% (gain %+.2f pp over the %s), %s sparsity %.4f, test %.2f%%",
             best.episode, best.val_acc, best.acc_gain, "pruning baseline" if job.baseline else "sparse start",
             gran.name, best.sparsity, summary["best_test_acc"])
    out = search.out
    log_outputs([out / BEST_MODEL, out / BEST_PRE_FINETUNE, out / "episodes.csv", out / SUMMARY,
                 out / "reward_curve.png", out / SEARCH_STATE, out / "log.txt"]
                + ([summary["exported_checkpoint"]] if "exported_checkpoint" in summary else []),
                f"python finetune.py --ckpt {out / BEST_MODEL} --epochs 400   (the final finetune)")
    return best


# ---- iterative --------------------------------------------------------------------------------------------

def run_iteration(stage: Stage, pair: DenseSparse, source: nn.Module, current: nn.Module, current_path: Path,
                  scores: dict[str, torch.Tensor], table: dict[float, float], it: int, out: Path) -> dict:
    """One search from ``current``; writes ``out`` and returns the iteration's summary row."""
    args, gran = stage.args, stage.granularity
    space = search_space(ssim_scores(stage, pair.dense, current), gran.capacity(current), args.ssim_threshold)
    options = budget_options(args, gran.total(current), sum(space.capacities))
    LOG.info("iteration %d: sparsity %.4f; budgets %s; searching %s", it, gran.sparsity(current), options,
             space.layers)
    search = Search(stage, current, scores, source, space,
                    trainer_from_args(args, args.budget_space_size, temperature=None, clip=10.0),
                    config_from_args(args), zero_point=lambda s: interpolate(table, s), out=out,
                    parent=current_path, budget_options=options)
    if args.resume and (out / SEARCH_STATE).is_file():
        search.resume()
    best = search.run()
    row = {"iteration": it, **vars(best), "baseline_acc": interpolate(table, best.sparsity),
           "episodes": len(search.history), "search_seconds": search.seconds}
    write_json(out / SUMMARY, row)
    LOG.info("iteration %d: sparsity %.4f  val %.2f%%  (%+.2f pp over the pruning baseline)", it, best.sparsity,
             best.val_acc, best.acc_gain)
    return row


def run_iterative(args: argparse.Namespace, granularity: str) -> dict:
    """Searches from --initial_ckpt, each carrying its best post-finetune model forward, until
    --target_sparsity or --num_iters; rewards against the pruning baseline of --baseline_dir."""
    stage, pair, reference = start(args, granularity)
    gran = stage.granularity
    first = gran.sparsity(pair.sparse)
    if args.target_sparsity >= first:
        raise UsageError(f"--target_sparsity {args.target_sparsity} is not below the start sparsity {first:.4f}")
    if args.min_budget_frac > args.max_budget_frac:
        raise UsageError("--min_budget_frac is larger than --max_budget_frac")
    root = regrowth_dir(args.save_dir, stage.model_name, gran.name, "iterative", args.random_search)
    check_search_dir(iteration_dir(root, 0), args)
    table = pruning_baseline(stage, Path(args.baseline_dir or prune_dir(args.save_dir, stage.model_name, gran.name,
                                                                        "iterative")))
    budget_options(args, gran.total(pair.sparse), sum(gran.capacity(pair.sparse).values()))  # none of them 0
    setup_logging(root)
    scores = selection_scores(stage, pair, reference)
    current, current_path, rows = pair.sparse, pair.sparse_path, []
    for it in range(args.num_iters):
        out = iteration_dir(root, it)
        if args.resume and (out / SUMMARY).is_file():  # finished before the interruption
            row = json.loads((out / SUMMARY).read_text())
        else:
            row = run_iteration(stage, pair, init_source(pair, reference), current, current_path, scores, table,
                                it, out)
        rows.append(row)
        current_path = out / BEST_MODEL
        current = stage.load_model(current_path, reparam=True)
        if gran.sparsity(current) <= args.target_sparsity:
            break
    summary = {"model": stage.model_name, "dataset": stage.dataset, "granularity": gran.name,
               "search": "random" if args.random_search else "rl", "start_sparsity": first,
               "start_test_acc": evaluate(pair.sparse, stage.data.test, amp=stage.amp)[1],
               "final_sparsity": gran.sparsity(current), "final_val_acc": rows[-1]["val_acc"],
               "final_checkpoint": str(current_path), "iterations": rows,
               "episodes": sum(r.get("episodes", 0) for r in rows), "finetune_epochs": args.finetune_epochs,
               "search_seconds": sum(r.get("search_seconds", 0.0) for r in rows),
               **finish(stage, current_path, "final_test_acc")}
    write_json(root / SUMMARY, summary)
    LOG.info("final: sparsity %.4f, test %.2f%% (%s)", summary["final_sparsity"], summary["final_test_acc"],
             current_path)
    log_outputs([root / SUMMARY, f"{len(rows)} iteration folder(s) iter_*/ in {root}/ (best model, episodes.csv, "
                                 "reward_curve.png each)"],
                f"python finetune.py --ckpt {current_path} --epochs 400   (the final finetune)")
    return summary
