"""The README's tables from run folders, by one command: Setting A (iterative pruning), Setting B (one-shot),
the regrowth outcome (baseline at the same final sparsity, result, improvement) and its cost, and the
pipeline's final table, each as mean ± std over seeds with n.

Each RUN_ROOT is one seed's --save_dir (runs/demo/seed1 runs/demo/seed2 ...), or a folder holding seed*/ roots
(what pipeline.py --seeds writes). Only what the stages wrote is read; a value a run did not write is shown as
"missing", and a regrowth result is compared with the pruning checkpoint of the same seed at the same final
sparsity (within 1e-4) or with nothing.

Example:
    python pipeline.py --seeds 1 2 3               # writes runs/demo/seed{1,2,3}/
    python report.py runs/demo                    # Markdown on stdout, runs/demo/report.png
    python report.py runs/demo --csv report.csv --json report.json

Writes report.png (accuracy vs sparsity: pruning curves with ±std bands, each regrowth result as an arrow
from its start, the matched baseline marked x) to --plot (default: beside the roots), and --csv / --json
when given; an existing file is replaced only with --overwrite.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from utils.cli.flags import cli_main, new_parser
from utils.core.errors import UsageError
from utils.core.files import write_csv, write_json
from utils.core.paths import check_output_file
from utils.results.plots import plot_report
from utils.results.records import collect, expand_roots
from utils.results.tables import flat, markdown, pruning_table, regrowth_table, tables


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("roots", nargs="+", metavar="RUN_ROOT", help="one --save_dir per seed, or a folder of seed*/")
    parser.add_argument("--csv", default=None, help="also write every table row to this CSV file")
    parser.add_argument("--json", default=None, help="also write the tables to this JSON file")
    parser.add_argument("--plot", default=None, help="figure path (default: report.png beside the roots)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files")
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


def figure(records: list[dict], path: Path) -> None:
    """One panel per model, data set and granularity: the pruning curves and the regrowth arrows."""
    curves: dict[str, list] = {}
    for setting, name in (("A", "iterative"), ("B", "one-shot")):
        for row in pruning_table(records, setting):
            if row["test_acc"].mean is not None:
                curves.setdefault(f"{row['model']} {row['granularity']} {name} pruning", []).append(
                    (row["sparsity"].mean, row["test_acc"].mean, row["test_acc"].std or 0.0))
    arrows = [(f"{r['method']} ({r['label']})", r["start_sparsity"].mean, _start_acc(records, r),
               r["final_sparsity"].mean, r["test_acc"].mean, r["baseline_test_acc"].mean)
              for r in regrowth_table(records) if None not in (r["start_sparsity"].mean, r["final_sparsity"].mean,
                                                               r["test_acc"].mean, _start_acc(records, r))]
    models = sorted({r["model"] for r in records})
    plot_report(curves, arrows, f"{', '.join(models)}: test accuracy over seeds", path)


def _start_acc(records: list[dict], row: dict) -> float | None:
    """Mean test accuracy of the sparse starts of the regrowth results behind ``row``."""
    keys = ("model", "granularity", "schedule", "method", "label")
    values = [r["start_test_acc"] for r in records if r["kind"] == "regrowth" and r["start_test_acc"] is not None
              and all(r[k] == row[k] for k in keys)]
    return sum(values) / len(values) if values else None


def check_apart(outputs: dict[str, Path], roots: list[Path]) -> None:
    """Before anything is written: no two outputs share a path, and none is a file of a run being read (a file
    under a root's ``{model}/`` folders: logs, summaries, checkpoints); a ``UsageError`` otherwise."""
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        resolved = Path(os.path.realpath(path))  # never raises, even on a symlink loop
        if resolved in seen:
            raise UsageError(f"{seen[resolved]} and {flag} both name {path}: give each its own path")
        seen[resolved] = flag
        for root in (Path(os.path.realpath(r)) for r in roots):
            if resolved.is_file() and resolved.is_relative_to(root) and len(resolved.relative_to(root).parts) > 1:
                raise UsageError(f"{flag} {path} is a file of the run being reported ({root}): write the report "
                                 "elsewhere, e.g. beside the run roots")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    roots = expand_roots(args.roots)
    named = {flag: Path(p) for flag, p in (("--plot", args.plot or default_plot(args.roots)), ("--csv", args.csv),
                                           ("--json", args.json)) if p}
    check_apart(named, roots)
    plot = check_output_file(named["--plot"], overwrite=args.overwrite, what="--plot")
    outputs = [check_output_file(p, overwrite=args.overwrite, what=flag) for flag, p in named.items()
               if flag != "--plot"]
    records = collect(roots)
    built = tables(records)
    print(f"{len(roots)} run root(s): {', '.join(str(r) for r in roots)}\n")
    print("\n\n".join(markdown(name, rows) for name, rows in built.items()))
    figure(records, plot)
    print(f"\nwrote {plot}")
    if args.csv:
        rows = [flat(name, row) for name, table in built.items() for row in table]
        write_csv(outputs[0], rows, list(dict.fromkeys(key for row in rows for key in row)))
    if args.json:
        write_json(outputs[-1], {name: [flat(name, row) for row in rows] for name, rows in built.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
