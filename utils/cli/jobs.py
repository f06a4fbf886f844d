"""Flags into jobs: the regrowth search scripts' command line turned into a ``RegrowthJob`` (its ``Stage``, the
dense and sparse models, the ``--selection reference`` model and the typed ``RegrowthSettings``), checked before
anything loads where it can; ``search_entry`` is the whole of each of the four search scripts."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.cli.flags import (
    add_search_args,
    cli_main,
    new_parser,
    profile_from_args,
    scoring_settings,
    search_settings,
    selection_settings,
)
from utils.cli.prepare import prepare_dense_sparse
from utils.core.errors import UsageError
from utils.scoring.selection import load_reference
from utils.search.drivers import RegrowthJob, RegrowthSettings, run_iterative, run_oneshot
from utils.sparsity.granularity import granularity_class


def regrowth_settings(args: argparse.Namespace, granularity: str, schedule: str) -> RegrowthSettings:
    """The settings of a regrowth search script at ``granularity`` and ``schedule`` (oneshot | iterative), from
    the flags of ``add_search_args``; the init strategy is resolved and checked, a device profile read."""
    kind = granularity_class(granularity)
    profile = profile_from_args(args) if schedule == "oneshot" else None
    selection = selection_settings(args, kind.default_init)
    kind.check_init(selection.init_strategy)
    common = dict(search=search_settings(args, schedule, selection.init_strategy), scoring=scoring_settings(args),
                  selection=selection, random_search=args.random_search, baseline_dir=args.baseline_dir,
                  units=args.units)
    if schedule == "oneshot":
        if args.label is not None and (Path(args.label).name != args.label or args.label in (".", "..")):
            raise UsageError(f"--label {args.label!r} must be a plain folder name (no '/' or '..'): the search "
                             "writes to {save_dir}/{m}/regrowth_oneshot/{label}/")
        return RegrowthSettings(**common, regrow_step=args.regrow_step, label=args.label, profile=profile)
    return RegrowthSettings(**common, target_sparsity=args.target_sparsity, num_iters=args.num_iters,
                            budget_space_size=args.budget_space_size, min_budget_frac=args.min_budget_frac,
                            max_budget_frac=args.max_budget_frac)


def regrowth_job(args: argparse.Namespace, granularity: str, schedule: str) -> RegrowthJob:
    """The prepared job of a regrowth search script: settings first (bad flags fail before any load), then the
    stage, the dense and sparse models of --initial_ckpt and the --selection reference."""
    settings = regrowth_settings(args, granularity, schedule)
    args.init_strategy = settings.selection.init_strategy  # recorded as resolved, as the search state compares it
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True, granularity=granularity)
    return RegrowthJob(stage, pair, load_reference(stage, pair, settings.selection), settings)


SEARCH_DRIVERS: dict[str, Callable[[RegrowthJob], object]] = {"oneshot": run_oneshot, "iterative": run_iterative}


def search_entry(doc: str | None, granularity: str, schedule: str) -> tuple[
        Callable[[Sequence[str] | None], argparse.Namespace], Callable[[Sequence[str] | None], int]]:
    """``(parse_args, main)`` of the regrowth search script at ``granularity`` (weight | channel) and ``schedule``
    (oneshot | iterative) whose module docstring is ``doc``: its flags (``add_search_args``), its job and its
    driver. The calling script's file names the parser."""
    caller = sys._getframe(1).f_globals  # noqa: SLF001  (the script's: its file names the parser and the command)

    def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
        parser = new_parser(doc, caller.get("__file__"))
        add_search_args(parser, granularity, schedule)
        return parser.parse_args(argv)

    def main(argv: Sequence[str] | None = None) -> int:
        SEARCH_DRIVERS[schedule](regrowth_job(parse_args(argv), granularity, schedule))
        return 0

    return parse_args, cli_main(main, caller)
