"""The README's tables from run folders, by one command: Setting A (iterative pruning), Setting B (one-shot),
gradual pruning, the regrowth outcome (baseline at the same final sparsity, result, improvement) and its cost,
and the pipeline's final table, each as mean ± std over seeds with n.

A RUN_ROOT is a --save_dir (runs/demo/seed1), a folder of seed*/ roots (what pipeline.py --seeds writes), or
any folder above run roots: `report.py runs` reports the stage runs of runs/{model}/ and the demo's
runs/demo/{model}/ apart. The report has one section per experiment, model and data set; the seeds of an
experiment are the roots given by name, or the seed*/ roots of one folder ({folder}/seed*). Only what the
stages wrote is read; a value a run did not write is shown as "missing", and a regrowth result is compared
with the pruning checkpoint of the same seed, pruned the way its start was, at the same final sparsity (within
1e-4) or with nothing. Each table's caption says what its accuracies are of (before or after a final
finetune); a section whose summaries record their provenance gets one line naming commit, device, threads,
precision and data.

Example:
    python pipeline.py --seeds 1 2 3               # writes runs/demo/seed{1,2,3}/
    python report.py runs/demo                    # Markdown on stdout, runs/demo/report.png
    python report.py runs/demo/seed1 runs/demo/seed2 --csv report.csv --json report.json
    python report.py runs --plot report.png      # every run under runs/, a section each

Writes report.png (one panel per section and granularity, accuracy vs sparsity: pruning curves with ±std
bands, each regrowth result as an arrow from its start, the matched baseline marked x) to --plot (default:
beside the roots), and --csv / --json when given (each row names its experiment); an existing file is replaced
only with --overwrite.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from utils.cli.flags import add_run_flags, cli_main, new_parser
from utils.core.errors import UsageError
from utils.core.files import write_csv, write_json
from utils.core.paths import check_output_file
from utils.results.plots import Panel, plot_report_panels
from utils.results.records import RunRoot, collect, find_roots, model_folders, sections
from utils.results.tables import flat, markdown, provenance_line, pruning_table, regrowth_table, tables


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("roots", nargs="+", metavar="RUN_ROOT",
                        help="one --save_dir per seed, a folder of seed*/, or any folder above run roots (runs)")
    parser.add_argument("--csv", default=None, help="also write every table row to this CSV file")
    parser.add_argument("--json", default=None, help="also write the tables to this JSON file")
    parser.add_argument("--plot", default=None, help="figure path (default: report.png beside the roots)")
    add_run_flags(parser, {"overwrite": "replace existing report files"})
    return parser.parse_args(argv)


def default_plot(paths: list[str]) -> Path:
    """report.png in the one folder given, or in the common parent of several roots."""
    given = [Path(p).resolve() for p in paths]
    folder = given[0] if len(given) == 1 else Path(*Path(given[0]).parts[:_common_depth(given)])
    return folder / "report.png"


def _common_depth(paths: list[Path]) -> int:
    depth = 0
    for parts in zip(*(p.parts for p in paths), strict=False):
        if len(set(parts)) > 1:
            break
        depth += 1
    return depth


CURVES = (("A", "iterative"), ("B", "one-shot"), ("gradual", "gradual"))  # pruning tables drawn as curves


def panels(records: list[dict]) -> list[Panel]:
    """One panel per section and granularity: its pruning curves and its regrowth arrows (sparsities of
    different granularities never share an axis)."""
    out = []
    for (experiment, model, dataset), mine in sections(records).items():
        for granularity in dict.fromkeys(r["granularity"] for r in mine if r["kind"] in ("prune", "regrowth")):
            own = [r for r in mine if r.get("granularity") == granularity]
            curves: dict[str, list] = {}
            for setting, name in CURVES:
                for row in pruning_table(own, setting):
                    if row["test_acc"].mean is not None:
                        curves.setdefault(f"{name} pruning", []).append(
                            (row["sparsity"].mean, row["test_acc"].mean, row["test_acc"].std or 0.0))
            arrows = [(f"{r['method']} ({r['label']})", r["start_sparsity"].mean, _start_acc(own, r),
                       r["final_sparsity"].mean, r["test_acc"].mean, r["baseline_test_acc"].mean)
                      for r in regrowth_table(own) if None not in (r["start_sparsity"].mean, r["final_sparsity"].mean,
                                                                   r["test_acc"].mean, _start_acc(own, r))]
            if curves or arrows:
                out.append(Panel(f"{model} on {dataset}, {granularity}s: {experiment}", curves, arrows))
    return out


def _start_acc(records: list[dict], row: dict) -> float | None:
    """Mean test accuracy of the sparse starts of the regrowth results behind ``row``."""
    keys = ("model", "granularity", "schedule", "method", "label")
    values = [r["start_test_acc"] for r in records if r["kind"] == "regrowth" and r["start_test_acc"] is not None
              and all(r[k] == row[k] for k in keys) and (r.get("start_schedule") or "missing") == row["start_schedule"]]
    return sum(values) / len(values) if values else None


def print_sections(records: list[dict], roots: list[RunRoot]) -> dict[str, list[dict]]:
    """Each section's heading, provenance line and tables as Markdown on stdout; returns every table's rows as
    flat rows (CSV / JSON), each naming its experiment."""
    print(f"{len(roots)} run root(s): {', '.join(str(r.path) for r in roots)}")
    flat_rows: dict[str, list[dict]] = {}
    for (experiment, model, dataset), mine in sections(records).items():
        built = tables(mine)
        if not built:
            continue
        seeds, data = len({r["root"] for r in mine}), dataset if dataset != "?" else "a data set not recorded"
        print(f"\n## {model} on {data}: {experiment} ({seeds} root{'s' if seeds != 1 else ''})\n")
        line = provenance_line(mine)
        if line:
            print(f"{line}\n")
        print("\n\n".join(markdown(name, rows) for name, rows in built.items()))
        for name, rows in built.items():
            flat_rows.setdefault(name, []).extend({"experiment": experiment, **flat(name, row)} for row in rows)
    return flat_rows


def check_apart(outputs: dict[str, Path], roots: list[Path]) -> None:
    """Before anything is written: no two outputs share a path, and none is a file of a run being read (an existing
    file under a root's ``{model}/`` folders: logs, summaries, checkpoints); a ``UsageError`` otherwise."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        resolved = Path(os.path.realpath(path))  # never raises, even on a symlink loop
        if resolved in seen:
            raise UsageError(f"{seen[resolved]} and {flag} both name {path}: give each its own path")
        seen[resolved] = flag
        for root in roots:
            folders = [Path(os.path.realpath(folder)) for folder in model_folders(root)]
            if resolved.is_file() and any(resolved.is_relative_to(folder) for folder in folders):
                raise UsageError(f"{flag} {path} is a file of the run being reported ({root}): write the report "
                                 "elsewhere, e.g. beside the run roots")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    roots = find_roots(args.roots)
    named = {flag: Path(p) for flag, p in (("--plot", args.plot or default_plot(args.roots)), ("--csv", args.csv),
                                           ("--json", args.json)) if p}
    check_apart(named, [r.path for r in roots])
    plot = check_output_file(named["--plot"], overwrite=args.overwrite, what="--plot")
    outputs = [check_output_file(p, overwrite=args.overwrite, what=flag) for flag, p in named.items()
               if flag != "--plot"]
    records = collect(roots)
    built = print_sections(records, roots)
    plot_report_panels(panels(records), plot)
    print(f"\nwrote {plot}")
    if args.csv:
        rows = [row for table in built.values() for row in table]
        write_csv(outputs[0], rows, list(dict.fromkeys(key for row in rows for key in row)))
    if args.json:
        write_json(outputs[-1], built)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
