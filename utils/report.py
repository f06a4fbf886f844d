"""The README's tables from what the stages wrote: records read from run folders, grouped over seeds.

A *root* is one seed's ``--save_dir`` (e.g. ``runs/demo/seed1``): it holds ``{model}/...`` as the stage
scripts write it. ``collect`` turns each root into flat records (one per pruning checkpoint, regrowth result
or pipeline row); ``tables`` groups equal settings over the roots (sparsities equal within ``TOLERANCE``) and
gives mean ± std and n. Nothing is guessed: a value a run did not write is ``None`` and prints as "missing",
and a regrowth result is paired with a pruning baseline only at the same model, data set, granularity and
final sparsity.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from utils.errors import UsageError
from utils.run import read_csv

TOLERANCE = 1e-4  # sparsities this close are "the same sparsity"
PRUNE_FOLDERS = {"iterative": ("weight", "A"), "oneshot": ("weight", "B"),
                 "structured_iterative": ("channel", "A"), "structured_oneshot": ("channel", "B")}
SEARCH_FOLDERS = {"regrowth_oneshot": ("weight", "oneshot", "RL"),
                  "regrowth_structure_oneshot": ("channel", "oneshot", "RL"),
                  "random_regrowth_oneshot": ("weight", "oneshot", "random search"),
                  "random_regrowth_structure_oneshot": ("channel", "oneshot", "random search")}
ITERATIVE_FOLDERS = {"regrowth_iterative": ("weight", "RL"), "regrowth_structure_iterative": ("channel", "RL"),
                     "random_regrowth_iterative": ("weight", "random search"),
                     "random_regrowth_structure_iterative": ("channel", "random search")}
PIPELINE_FILES = {"pipeline_summary.csv": "weight", "pipeline_structure_summary.csv": "channel"}


@dataclass(frozen=True)
class Stat:
    """Mean and sample std (None for n < 2) of the values a group has; ``n`` counts them."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        got = [float(v) for v in values if v is not None]
        return cls(statistics.fmean(got) if got else None, statistics.stdev(got) if len(got) > 1 else None, len(got))

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "missing"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


def expand_roots(paths: list[str | Path]) -> list[Path]:
    """The seed roots: each path itself, or its ``seed*/`` sub-folders when it holds those."""
    roots: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UsageError(f"{path} is not a folder (give run roots such as runs/demo/seed1, or a folder of "
                             "seed*/)")
        seeds = sorted(p for p in path.glob("seed*") if p.is_dir())
        roots.extend(seeds or [path])
    return roots


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _model_records(root: Path, folder: Path) -> list[dict]:
    """Every record of one ``{root}/{model}`` folder."""
    model = folder.name
    dataset = (_json(folder / "checkpoint" / "summary.json") or {}).get("dataset")
    base = {"root": str(root), "model": model, "dataset": dataset}
    records = []
    for name, (granularity, setting) in PRUNE_FOLDERS.items():
        for row in read_csv(folder / name / "prune_log.csv"):
            records.append({**base, "kind": "prune", "granularity": granularity, "setting": setting, "mode": name,
                            "step": int(row["step"]), "sparsity": _float(row["sparsity"]),
                            "val_acc": _float(row.get("val_acc")), "test_acc": _float(row.get("test_acc"))})
    for name, (granularity, schedule, method) in SEARCH_FOLDERS.items():
        for summary_path in sorted((folder / name).glob("*/summary.json")):
            s = _json(summary_path) or {}
            best = s.get("best", {})
            records.append({**base, "dataset": s.get("dataset", dataset), "kind": "regrowth", "method": method,
                            "granularity": granularity, "schedule": schedule, "label": summary_path.parent.name,
                            "start_sparsity": s.get("start_sparsity"), "start_test_acc": s.get("start_test_acc"),
                            "final_sparsity": best.get("sparsity"), "val_acc": best.get("val_acc"),
                            "test_acc": s.get("best_test_acc"), "episodes": s.get("episodes"),
                            "finetune_epochs": s.get("finetune_epochs"), "seconds": s.get("search_seconds")})
    for name, (granularity, method) in ITERATIVE_FOLDERS.items():
        s = _json(folder / name / "summary.json")
        if s:
            records.append({**base, "dataset": s.get("dataset", dataset), "kind": "regrowth", "method": method,
                            "granularity": granularity, "schedule": "iterative", "label": name,
                            "start_sparsity": s.get("start_sparsity"), "start_test_acc": s.get("start_test_acc"),
                            "final_sparsity": s.get("final_sparsity"), "val_acc": s.get("final_val_acc"),
                            "test_acc": s.get("final_test_acc"), "episodes": s.get("episodes"),
                            "finetune_epochs": s.get("finetune_epochs"), "seconds": s.get("search_seconds")})
    for summary_path in sorted(folder.glob("greedy_*/summary.json")):
        s = _json(summary_path) or {}
        last = (s.get("iterations") or [{}])[-1]
        records.append({**base, "dataset": s.get("dataset", dataset), "kind": "regrowth",
                        "method": f"greedy {s.get('mode', summary_path.parent.name)}",
                        "granularity": s.get("granularity", "channel" if "channel" in summary_path.parent.name
                                             else "weight"),
                        "schedule": "oneshot" if len(s.get("iterations", [])) <= 1 else "iterative",
                        "label": summary_path.parent.name, "start_sparsity": s.get("start_sparsity"),
                        "start_test_acc": s.get("start_test_acc"), "final_sparsity": last.get("sparsity"),
                        "val_acc": last.get("val_acc"), "test_acc": last.get("test_acc"), "episodes": None,
                        "finetune_epochs": s.get("final_epochs"), "seconds": s.get("seconds")})
    for name, granularity in PIPELINE_FILES.items():
        for row in read_csv(folder / name):
            records.append({**base, "kind": "pipeline", "granularity": granularity, "row": row["model"],
                            "sparsity": _float(row["sparsity"]), "params": _float(row.get("params")),
                            "val_acc": _float(row["val_acc"]), "test_acc": _float(row["test_acc"])})
    return records


def collect(roots: list[Path]) -> list[dict]:
    """Records of every root; a root without run outputs, or roots holding different models or data sets,
    are a ``UsageError``."""
    records, contents = [], {}
    for root in roots:
        mine = [r for folder in sorted(p for p in root.iterdir() if p.is_dir()) for r in _model_records(root, folder)]
        if not mine:
            raise UsageError(f"{root} holds no run outputs (prune_log.csv, summary.json, pipeline_summary.csv) "
                             "under {model}/: pass the --save_dir of a run")
        contents[root] = sorted({(r["model"], r["dataset"] or "?") for r in mine})
        records.extend(mine)
    if len({tuple(c) for c in contents.values()}) > 1:
        detail = "; ".join(f"{root}: {', '.join(f'{m} on {d}' for m, d in c)}" for root, c in contents.items())
        raise UsageError(f"the roots hold different models or data sets ({detail}): report one experiment at a time")
    return records


def same_sparsity(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) <= TOLERANCE


def cluster(values: list[float]) -> list[float]:
    """Representative sparsities: sorted values, each starting a new cluster unless within TOLERANCE of the
    current one's first value."""
    heads: list[float] = []
    for v in sorted(values):
        if not heads or v - heads[-1] > TOLERANCE:
            heads.append(v)
    return heads
