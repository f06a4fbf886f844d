"""The RL regrowth stages, once for both granularities: one-shot (one budget) and iterative (an RL-chosen
budget per iteration, until a target sparsity), over weights or channel groups.

``regrowth_oneshot.py`` / ``regrowth_structure_oneshot.py`` and ``regrowth_iterative.py`` /
``regrowth_structure_iterative.py`` are thin scripts: their flags (``add_search_args``, with each
granularity's defaults and the original's flag names as aliases), translated into a ``Stage``, its models and
``RegrowthSettings`` (``utils.cli.jobs``), and a call of ``run_oneshot`` or ``run_iterative``. A unit is a
prunable layer (weights) or a coupled channel group (channels); the budget is a fraction of all its entries
(N_tot weights, or all groupable channels); SSIM probes each unit's layer; scores reduce ``(dL/dθ)^2 θ^2``
(``fisher``) or ``|dL/dθ · θ|`` (``taylor``) over each unit's slices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from utils.core.errors import UsageError
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import (
    BEST_MODEL,
    BEST_PRE_FINETUNE,
    SEARCH_STATE,
    SUMMARY,
    baseline_cache,
    iteration_dir,
    prune_dir,
    regrowth_dir,
)
from utils.core.provenance import PROVENANCE_KEY
from utils.device.fill import device_budget
from utils.device.profiles import UNIT_NAMES, DeviceProfile, check_fit, model_costs
from utils.results.boundary import CHANCE_MARGIN
from utils.results.records import SEARCHES, RegrowthOutcome, pruning_schedule
from utils.runtime.settings import ScoringSettings, SearchSettings
from utils.runtime.stage import DenseSparse, Stage, check_parent, finetune_suggestion
from utils.runtime.train import evaluate_model
from utils.scoring.layer_scores import ssim_scores
from utils.scoring.selection import SelectionSettings, init_source, selection_scores
from utils.search.baseline import baseline_table, interpolate
from utils.search.controller import AllocationPolicy, Reinforce
from utils.search.episodes import (
    Budget,
    Search,
    SearchResult,
    SearchStart,
    check_search_dir,
    episode_val,
    read_search_state,
    search_space,
    widen_space,
)
from utils.sparsity.budget import asked_budget, regrowth_budget
from utils.sparsity.physical import verify_export

SEARCH_METHODS = {False: SEARCHES[""], True: SEARCHES["random_"]}  # --random_search -> the method's name


def check_search_state(out: Path, stage: Stage) -> None:
    """With --resume, before anything is written: the search state in ``out`` (if any) is intact."""
    if stage.run.resume and (out / SEARCH_STATE).is_file():
        read_search_state(out / SEARCH_STATE)


@dataclass(frozen=True)
class RegrowthSettings:
    """A regrowth search stage's own choices, beside the ``RunSettings`` of its ``Stage``."""

    search: SearchSettings
    scoring: ScoringSettings
    selection: SelectionSettings
    random_search: bool = False  # allocations drawn uniformly, no policy step (random_regrowth_* folders)
    units: str = "ssim"  # the units searched: ssim (SSIM <= threshold) | all (every unit with room)
    baseline_dir: str | None = None  # pruning checkpoints whose interpolated val accuracy is the zero point
    # one-shot
    regrow_step: float = 0.01  # K as a fraction of N_tot, in (0, 1)
    label: str | None = None  # output sub-folder (None: the start sparsity, e.g. 0.9900)
    profile: DeviceProfile | None = None  # regrow up to this device's limit instead of K
    # iterative
    target_sparsity: float = 0.0  # stop at or below this sparsity, in [0, 1]
    num_iters: int = 10  # maximum iterations
    budget_space_size: int = 5  # B budget options
    min_budget_frac: float = 0.001  # smallest budget / N_tot
    max_budget_frac: float = 0.005  # largest budget / N_tot


@dataclass
class RegrowthJob:
    """A prepared regrowth stage: its ``Stage``, the dense and sparse models, the ``--selection reference``
    model (None for the other selectors) and its settings."""

    stage: Stage
    pair: DenseSparse
    reference: nn.Module | None
    settings: RegrowthSettings


def make_trainer(settings: SearchSettings, seed: int, budget_space_size: int = 0) -> Reinforce:
    """A freshly initialised policy (its weights drawn from ``seed``) and its REINFORCE trainer."""
    torch.manual_seed(seed)  # policy weights
    policy = AllocationPolicy(settings.action_space_size, settings.hidden_size, budget_space_size,
                              skip=settings.skip)
    return Reinforce(policy, settings)


def pruning_baseline(stage: Stage, folder: Path, search: SearchSettings) -> dict[float, float]:
    """{sparsity: val acc} of the plain-pruning checkpoints in ``folder`` (cached beside them), counted at the
    stage's granularity, on the val images the search's rewards use (``episode_val``)."""
    val = episode_val(stage, search)

    def measure(path: Path) -> tuple[float, float]:
        model = stage.load_model(path, sparse=True)
        check_parent(stage, path)  # a baseline pruned from another dense model is no zero point for this one
        return stage.granularity.sparsity(model), evaluate_model(model, val, amp=stage.amp)[1]

    subset = {} if search.episode_val_subset is None else {"episode_val_subset": search.episode_val_subset}
    settings = {"model": stage.model_name, **stage.val_settings, "granularity": stage.granularity.name, **subset}
    return baseline_table(folder, measure, settings, baseline_cache(stage.run.save_dir, stage.model_name, folder))


def episode_epochs(search: SearchSettings) -> int | None:
    """Mini-finetune epochs per episode, for the summary (None: episodes of ``episode_steps`` steps)."""
    return None if search.episode_steps is not None else search.finetune_epochs


def fidelity(search: SearchSettings) -> dict:
    """The cheap-episode settings of a search, for its summary (none when it used whole epochs on all val)."""
    return {k: v for k, v in (("episode_steps", search.episode_steps),
                              ("episode_val_subset", search.episode_val_subset)) if v is not None}


def warn_if_at_chance(val_acc: float, num_classes: int) -> None:
    """A warning when the start's val accuracy (%) is within ``CHANCE_MARGIN`` points of chance."""
    chance = 100.0 / num_classes
    if val_acc < chance + CHANCE_MARGIN:
        LOG.warning("the start model's val accuracy %.2f%% is within %.0f points of chance (%.1f%% for %d classes): "
                    "episodes will differ by their budget bonus and noise; prune less or finetune the start longer",
                    val_acc, CHANCE_MARGIN, chance, num_classes)


def budget_options(settings: RegrowthSettings, n_tot: int, total_capacity: int) -> list[int]:
    """The B budgets the controller chooses from: linspace(min, max) fractions of N_tot, capped by capacity."""
    fracs = np.linspace(settings.min_budget_frac, settings.max_budget_frac, settings.budget_space_size)
    return [regrowth_budget(n_tot, float(f), total_capacity) for f in fracs]


def finish(stage: Stage, best_path: Path, acc_key: str) -> dict:
    """Test accuracy of the best model (under ``acc_key``), its granularity's figures (exported params and
    MACs for channels), and (channels) its physical export beside it, checked to give the same outputs."""
    model = stage.load_model(best_path)
    report = {acc_key: evaluate_model(model, stage.data.test, amp=stage.amp)[1], **stage.granularity.describe(model)}
    exported = stage.granularity.export(model)
    if exported is not None:
        verify_export(model, exported[0], stage.granularity.input_size)
        path = best_path.with_name(f"{best_path.stem}_exported.pth")
        meta = {"stage": "export", "parent": str(best_path), "test_acc": report[acc_key],
                **{k: v for k, v in report.items() if k != acc_key}}
        stage.save(path, exported[0], meta, export_history=exported[1])
        report["exported_checkpoint"] = str(path)
    return report


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


def prepare_oneshot(job: RegrowthJob) -> OneShot:
    """Everything before the first episode of a one-shot search: inputs and outputs checked, scores, the
    searched units, the budget K = --regrow_step · N_tot, and the ``Search`` (resumed with --resume)."""
    stage, pair, reference, cfg = job.stage, job.pair, job.reference, job.settings
    profile, gran = cfg.profile, stage.granularity
    sparsity = gran.sparsity(pair.sparse)
    fills = device_budget(profile, gran, pair.sparse) if profile is not None else None  # fails before writing
    out = (regrowth_dir(stage.run.save_dir, stage.model_name, gran, "oneshot", cfg.random_search)
           / (cfg.label or f"{sparsity:.4f}"))
    check_search_state(out, stage)
    check_search_dir(out, stage)
    regrowth_budget(gran.total(pair.sparse), cfg.regrow_step, sum(gran.capacity(pair.sparse).values()))  # not 0
    table = pruning_baseline(stage, Path(cfg.baseline_dir), cfg.search) if cfg.baseline_dir else None
    setup_logging(out)
    ssim = ssim_scores(stage, cfg.scoring, pair.dense, pair.sparse)
    capacities = gran.capacity(pair.sparse)
    space = search_space(ssim, capacities, cfg.scoring.ssim_threshold, cfg.units)
    if fills is not None:  # the searched units must be able to hold what fills the device
        selected, space = len(space.layers), widen_space(space, ssim, capacities,
                                                         lambda caps: fills.room(caps) >= fills.need)
        if len(space.layers) > selected:
            LOG.info("the %d unit(s) under --ssim_threshold cannot hold what fills the device: searching the next "
                     "%d most damaged as well", selected, len(space.layers) - selected)
    budget = (fills.budget(dict(zip(space.layers, space.capacities, strict=True))) if fills is not None
              else regrowth_budget(gran.total(pair.sparse), cfg.regrow_step, sum(space.capacities)))
    asked = asked_budget(gran.total(pair.sparse), cfg.regrow_step)
    if fills is None and budget < asked:
        LOG.warning("--regrow_step %g asks for %s %ss but the searched units hold only %s pruned ones: K is cut to "
                    "%s", cfg.regrow_step, f"{asked:,}", gran.name, f"{budget:,}", f"{budget:,}")
    scores = selection_scores(stage, pair, reference, cfg.selection, cfg.scoring)
    _, start_val = evaluate_model(pair.sparse, episode_val(stage, cfg.search), amp=stage.amp)  # the rewards' images
    counted = Budget(total=budget, cost=fills.cost) if fills is not None else Budget(total=budget)
    unit = UNIT_NAMES.get(counted.cost.unit(f"{gran.name}s"), f"{gran.name}s")  # what K counts
    subset = cfg.search.episode_val_subset
    LOG.info("start: %s sparsity %.4f, val %.2f%%%s; K = %s %s; searching %s", gran.name, sparsity, start_val,
             f" (first {subset} val images, as every reward)" if subset else "",
             f"{budget:,}", unit, space.layers)
    warn_if_at_chance(start_val, stage.num_classes)
    zero_point = (lambda s: interpolate(table, s)) if table else (lambda s: start_val)
    start = SearchStart(pair.sparse, pair.sparse_path, scores, init_source(pair, reference))
    search = Search(stage, start, space, make_trainer(cfg.search, stage.run.seed), cfg.search,
                           zero_point=zero_point, out=out, budget=counted)
    if stage.run.resume:
        search.resume()
    return OneShot(stage, pair, search, sparsity, start_val, table, profile)


def run_oneshot(regrowth: RegrowthJob) -> SearchResult:
    """One search regrowing K = --regrow_step · N_tot units into the SSIM-selected units of --initial_ckpt."""
    job, cfg = prepare_oneshot(regrowth), regrowth.settings
    stage, search, gran = job.stage, job.search, job.stage.granularity
    limit = gran.device_limit  # what a device profile's regrowth fills
    best = search.run()
    space = search.space
    summary = {
        "model": stage.model_name, "dataset": stage.dataset, "granularity": gran.name,
        "start_sparsity": job.start_sparsity, "start_val_acc": job.start_val, "budget": search.budget.total,
        "budget_unit": search.budget.cost.unit(f"{gran.name}s"),  # K counts MACs or units
        "baseline_dir": cfg.baseline_dir, "search": "random" if cfg.random_search else "rl",
        "start_test_acc": evaluate_model(job.pair.sparse, stage.data.test, amp=stage.amp)[1],
        "searched_layers": dict(zip(space.layers, space.ssim, strict=True)), "episodes": len(search.history),
        "finetune_epochs": cfg.search.finetune_epochs, "search_seconds": search.seconds,
        "precisions": search.precisions,
        "best": vars(best), **finish(stage, search.out / BEST_MODEL, "best_test_acc")}
    summary.update(RegrowthOutcome(
        SEARCH_METHODS[cfg.random_search], "oneshot", gran.name, job.start_sparsity, summary["start_test_acc"],
        best.sparsity, best.val_acc, summary["best_test_acc"], len(search.history), episode_epochs(cfg.search),
        search.seconds, cfg.units, pruning_schedule(job.pair.sparse_meta)).fields(), **fidelity(cfg.search))
    if job.profile is not None:
        best_model = stage.load_model(search.out / BEST_MODEL)
        summary["device"] = check_fit(job.profile, model_costs(job.profile, gran, best_model, stage.device))
        device = summary["device"]
        LOG.info("device profile %s: the best model %s (margin %s %s)", job.profile.name,
                 "fits" if device["fits"] else "DOES NOT FIT", f"{device['limits'][limit]['margin']:+,.0f}",
                 UNIT_NAMES[limit])
    stage.write_summary(search.out / SUMMARY, summary)
    LOG.info("best episode %d: val %.2f%% (gain %+.2f pp over the %s), %s sparsity %.4f, test %.2f%%",
             best.episode, best.val_acc, best.acc_gain, "pruning baseline" if job.baseline else "sparse start",
             gran.name, best.sparsity, summary["best_test_acc"])
    out = search.out
    log_outputs([out / BEST_MODEL, out / BEST_PRE_FINETUNE, out / "episodes.csv", out / SUMMARY,
                 out / "reward_curve.png", out / SEARCH_STATE, out / "log.txt"]
                + ([summary["exported_checkpoint"]] if "exported_checkpoint" in summary else []),
                finetune_suggestion(stage, out / BEST_MODEL, job.pair.sparse_meta))
    return best


def run_iteration(job: RegrowthJob, source: nn.Module, current: nn.Module, current_path: Path,
                  scores: dict[str, torch.Tensor], table: dict[float, float], it: int, out: Path) -> dict:
    """One search from ``current``; writes ``out`` and returns the iteration's summary row."""
    stage, pair, cfg, gran = job.stage, job.pair, job.settings, job.stage.granularity
    space = search_space(ssim_scores(stage, cfg.scoring, pair.dense, current), gran.capacity(current),
                         cfg.scoring.ssim_threshold, cfg.units)
    options = budget_options(cfg, gran.total(current), sum(space.capacities))
    LOG.info("iteration %d: sparsity %.4f; budgets %s; searching %s", it, gran.sparsity(current), options,
             space.layers)
    search = Search(stage, SearchStart(current, current_path, scores, source), space,
                           make_trainer(cfg.search, stage.run.seed, cfg.budget_space_size), cfg.search,
                           zero_point=lambda s: interpolate(table, s), out=out, budget=Budget(options=options))
    if stage.run.resume and (out / SEARCH_STATE).is_file():
        search.resume()
    best = search.run()
    row = {"iteration": it, **vars(best), "baseline_acc": interpolate(table, best.sparsity),
           "episodes": len(search.history), "search_seconds": search.seconds, "precisions": search.precisions}
    stage.write_summary(out / SUMMARY, row)
    LOG.info("iteration %d: sparsity %.4f  val %.2f%%  (%+.2f pp over the pruning baseline)", it, best.sparsity,
             best.val_acc, best.acc_gain)
    return row


def run_iterative(job: RegrowthJob) -> dict:
    """Searches from --initial_ckpt, each carrying its best post-finetune model forward, until
    --target_sparsity or --num_iters; rewards against the pruning baseline of --baseline_dir."""
    stage, pair, reference, cfg = job.stage, job.pair, job.reference, job.settings
    gran, run = stage.granularity, stage.run
    first = gran.sparsity(pair.sparse)
    if cfg.target_sparsity >= first:
        raise UsageError(f"--target_sparsity {cfg.target_sparsity} is not below the start sparsity {first:.4f}")
    if cfg.min_budget_frac > cfg.max_budget_frac:
        raise UsageError("--min_budget_frac is larger than --max_budget_frac")
    root = regrowth_dir(run.save_dir, stage.model_name, gran, "iterative", cfg.random_search)
    check_search_state(iteration_dir(root, 0), stage)
    check_search_dir(iteration_dir(root, 0), stage)
    baseline_dir = cfg.baseline_dir or prune_dir(run.save_dir, stage.model_name, gran, "iterative")
    table = pruning_baseline(stage, Path(baseline_dir), cfg.search)
    budget_options(cfg, gran.total(pair.sparse), sum(gran.capacity(pair.sparse).values()))  # none of them 0
    setup_logging(root)
    scores = selection_scores(stage, pair, reference, cfg.selection, cfg.scoring)
    current, current_path, rows = pair.sparse, pair.sparse_path, []
    for it in range(cfg.num_iters):
        out = iteration_dir(root, it)
        if run.resume and (out / SUMMARY).is_file():  # finished before the interruption
            row = {k: v for k, v in json.loads((out / SUMMARY).read_text()).items() if k != PROVENANCE_KEY}
        else:
            row = run_iteration(job, init_source(pair, reference), current, current_path, scores, table, it, out)
        rows.append(row)
        current_path = out / BEST_MODEL
        current = stage.load_model(current_path, reparam=True)
        if gran.sparsity(current) <= cfg.target_sparsity:
            break
    summary = {"model": stage.model_name, "dataset": stage.dataset, "granularity": gran.name,
               "search": "random" if cfg.random_search else "rl", "start_sparsity": first,
               "start_test_acc": evaluate_model(pair.sparse, stage.data.test, amp=stage.amp)[1],
               "final_sparsity": gran.sparsity(current), "final_val_acc": rows[-1]["val_acc"],
               "final_checkpoint": str(current_path), "iterations": rows,
               "episodes": sum(r.get("episodes", 0) for r in rows), "finetune_epochs": cfg.search.finetune_epochs,
               "search_seconds": sum(r.get("search_seconds", 0.0) for r in rows),
               **finish(stage, current_path, "final_test_acc")}
    summary.update(RegrowthOutcome(
        SEARCH_METHODS[cfg.random_search], "iterative", gran.name, first, summary["start_test_acc"],
        summary["final_sparsity"], summary["final_val_acc"], summary["final_test_acc"], summary["episodes"],
        episode_epochs(cfg.search), summary["search_seconds"], cfg.units, pruning_schedule(pair.sparse_meta)).fields(),
        **fidelity(cfg.search))
    stage.write_summary(root / SUMMARY, summary)
    LOG.info("final: sparsity %.4f, test %.2f%% (%s)", summary["final_sparsity"], summary["final_test_acc"],
             current_path)
    log_outputs([root / SUMMARY, f"{len(rows)} iteration folder(s) iter_*/ in {root}/ (best model, episodes.csv, "
                                 "reward_curve.png each)"],
                finetune_suggestion(stage, current_path, pair.sparse_meta))
    return summary
