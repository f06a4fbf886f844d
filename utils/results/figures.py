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
from utils.core.provenance import PROVENANCE_KEY, describe, describe_all
from utils.core.registry import Registry

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


def _epochs(value: int) -> str:
    return str(value) if value else "-"


@FIGURES.register("demo_table")
def demo_table(summaries: list[dict]) -> str:
    """One pipeline run's table (``pipeline_summary.json``), as the pipeline prints it, and where it came from."""
    (summary,) = summaries
    counted = "all params" if summary["granularity"] == "channel" else "weights kept"
    lines = [f"{'model':<28} {summary['granularity'] + ' sparsity':>16} {counted:>12} {'epochs':>7} {'val acc':>8} "
             f"{'test acc':>9}"]
    lines += [f"{r['model']:<28} {r['sparsity']:>16.4f} {r['params']:>12,} {_epochs(r['epochs']):>7} "
              f"{r['val_acc']:>7.2f}% {r['test_acc']:>8.2f}%" for r in summary["rows"]]
    return "```\n" + "\n".join(lines) + "\n```\n\n" + f"({describe(summary.get(PROVENANCE_KEY))}; seed " \
        f"{summary.get('seed', '?')}, {summary.get('seconds', 0) / 60:.0f} min)\n"


@FIGURES.register("demo_seeds")
def demo_seeds(summaries: list[dict]) -> str:
    """Test accuracy per row over several pipeline runs (one per seed): mean ± std, min-max, and the
    difference of each sparse row to ``pruned straight`` paired by seed."""
    rows = {r["model"]: [] for r in summaries[0]["rows"]}
    for summary in summaries:
        for row in summary["rows"]:
            rows.setdefault(row["model"], []).append(row["test_acc"])
    straight = rows.get("pruned straight")
    lines = [f"| model | test acc (%), mean ± std over {len(summaries)} seeds | min - max | paired vs pruned straight "
             "(pp) |", "|---|---:|---:|---:|"]
    for model, values in rows.items():
        paired = ("-" if straight is None or model in ("dense", "pruned straight") or len(values) != len(straight)
                  else _mean_std([v - s for v, s in zip(values, straight, strict=True)], signed=True))
        lines.append(f"| {model} | {_mean_std(values)} | {min(values):.2f} - {max(values):.2f} | {paired} |")
    records = [s[PROVENANCE_KEY] for s in summaries if isinstance(s.get(PROVENANCE_KEY), dict)]
    seeds = ", ".join(str(s.get("seed", "?")) for s in summaries)
    where = describe_all(records) if len(records) == len(summaries) else "provenance not recorded for every seed"
    return "\n".join(lines) + f"\n\n({where}; seeds {seeds})\n"


def _mean_std(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` with two decimals (std 0 for one value); ``signed``: with a + on positive means."""
    mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.2f} ± {std:.2f}" if signed else f"{mean:.2f} ± {std:.2f}"
