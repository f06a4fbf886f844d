"""Figures in Markdown pages that are generated from kept result files, so that a page never says a number its
file does not.

A generated block in a page::

    <!-- figures: demo_table docs/results/data/demo/resnet20_weight_seed42.json -->
    ...text written by the FIGURES entry demo_table from that file...
    <!-- /figures -->

``render_page`` rewrites every block from its files (paths relative to the page's folder); ``stale_blocks``
names the blocks whose text differs from what their file gives (the README test asserts there are none).
``python -m benchmarks.readme_figures`` runs it over the README and docs/results.
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path

from utils.core.errors import UsageError
from utils.core.files import read_json
from utils.core.provenance import PROVENANCE_KEY, describe_all
from utils.core.registry import Registry
from utils.sparsity.granularity import granularity_class

BLOCK = re.compile(r"(<!-- figures: (\w+) ([^\n]*?) -->\n)(.*?)(<!-- /figures -->)", re.S)
Renderer = Callable[[list[dict]], str]  # the JSON values of the block's files -> Markdown
FIGURES: Registry[Renderer] = Registry("figure")


def _load(root: Path, sources: str) -> list[dict]:
    """The JSON objects of the block's space-separated ``sources`` (paths from ``root``)."""
    values = []
    for name in sources.split():
        value = read_json(root / name)
        if value is None:
            raise UsageError(f"figures: {root / name} does not exist (a page's generated block names it)")
        values.append(value)
    return values


def render_page(text: str, root: Path) -> str:
    """``text`` with every generated block rewritten from its files."""
    return BLOCK.sub(lambda m: m.group(1) + FIGURES.get(m.group(2))(_load(root, m.group(3))) + m.group(5), text)


def stale_blocks(text: str, root: Path) -> list[str]:
    """The ``name sources`` of each block of ``text`` whose text differs from its files' rendering."""
    return [f"{m.group(2)} {m.group(3)}" for m in BLOCK.finditer(text)
            if FIGURES.get(m.group(2))(_load(root, m.group(3))) != m.group(4)]


ROW_KEYS = ("model", "sparsity", "params", "epochs", "val_acc", "test_acc")  # what a pipeline table row needs


def _rows(summary: dict) -> list[dict]:
    """The summary's rows, each checked to have ``ROW_KEYS`` (a summary from before the equal-epochs pipeline
    has no ``epochs``): a ``UsageError`` names what is missing."""
    rows = summary.get("rows")
    missing = sorted({key for row in rows or [{}] for key in ROW_KEYS if key not in row})
    if not rows or missing:
        raise UsageError(f"figures: a pipeline summary without {', '.join(missing) or 'rows'}: rerun pipeline.py "
                         "to make the file, or point the block at a newer one")
    return rows


def table_lines(summary: dict) -> list[str]:
    """The pipeline's table of one run (``pipeline_summary.json``): a header and one line per model."""
    exported = granularity_class(summary["granularity"]).exportable  # channels: params of the exported model
    counted = "all params" if exported else "weights kept"
    lines = [f"{'model':<28} {summary['granularity'] + ' sparsity':>16} {counted:>12} {'epochs':>7} {'val acc':>8} "
             f"{'test acc':>9}"]
    lines += [f"{r['model']:<28} {r['sparsity']:>16.4f} {r['params']:>12,} {r['epochs'] or '-':>7} "
              f"{r['val_acc']:>7.2f}% {r['test_acc']:>8.2f}%" for r in _rows(summary)]
    return lines


def _where(summaries: list[dict]) -> str:
    """Where the rows of ``summaries`` were made: their checkpoints' provenance (a stage reused from another
    commit or thread count shows as a second value), or the tables' own records for files without row records."""
    records = [r[PROVENANCE_KEY] for s in summaries for r in s["rows"] if isinstance(r.get(PROVENANCE_KEY), dict)]
    records = records or [s[PROVENANCE_KEY] for s in summaries if isinstance(s.get(PROVENANCE_KEY), dict)]
    return describe_all(records) if records else "provenance not recorded"


@FIGURES.register("demo_table")
def demo_table(summaries: list[dict]) -> str:
    """One pipeline run's table, as the pipeline prints it, where its rows were made, its seed and minutes."""
    (summary,) = summaries
    reused = summary.get("reused_stages") or 0
    took = f"{summary.get('seconds', 0) / 60:.0f} min" + (f", {reused} stage(s) reused from an earlier run"
                                                          if reused else "")
    return ("```\n" + "\n".join(table_lines(summary)) + "\n```\n\n"
            + f"({_where(summaries)}; seed {summary.get('seed', '?')}, {took})\n")


@FIGURES.register("demo_seeds")
def demo_seeds(summaries: list[dict]) -> str:
    """Test accuracy per row over several pipeline runs (one per seed): mean ± std, min-max, and the
    difference of each sparse row to ``pruned straight`` of the same run (paired by run, by row name)."""
    runs = [{r["model"]: r["test_acc"] for r in _rows(s)} for s in summaries]
    models = list(dict.fromkeys(model for run in runs for model in run))
    lines = [f"| model | test acc (%), mean ± std over {len(summaries)} seeds | min - max | paired vs pruned straight "
             "(pp) |", "|---|---:|---:|---:|"]
    for model in models:
        values = [run[model] for run in runs if model in run]
        pairs = [run[model] - run["pruned straight"] for run in runs if model in run and "pruned straight" in run]
        paired = "-" if model in ("dense", "pruned straight") or not pairs else _mean_std(pairs, signed=True)
        lines.append(f"| {model} | {_mean_std(values)} (n = {len(values)}) | {min(values):.2f} - {max(values):.2f} | "
                     f"{paired} |")
    seeds = ", ".join(str(s.get("seed", "?")) for s in summaries)
    return "\n".join(lines) + f"\n\n({_where(summaries)}; seeds {seeds})\n"


def _mean_std(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` with two decimals (std 0 for one value); ``signed``: with a + on positive means."""
    mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.2f} ± {std:.2f}" if signed else f"{mean:.2f} ± {std:.2f}"
