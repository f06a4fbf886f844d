"""The README's tables from what the stages wrote: records read from run folders, grouped over seeds.

Every regrowth run (one-shot or iterative search, RL or random, greedy) writes the same keys into its
``summary.json`` (``RegrowthOutcome``, marked ``"kind": "regrowth"``), so they are read in one loop; summaries
written before that schema are read through ``_legacy_outcome``.

A *root* is one seed's ``--save_dir`` (e.g. ``runs/demo/seed1``): it holds ``{model}/...`` as the stage
scripts write it. ``collect`` turns each root into flat records (one per pruning checkpoint, regrowth result
or pipeline row); ``tables`` groups equal settings over the roots (sparsities equal within ``TOLERANCE``) and
gives mean ± std and n. Nothing is guessed: a value a run did not write is ``None`` and prints as "missing",
and a regrowth result is paired with a pruning baseline only at the same model, data set, granularity and
final sparsity.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from utils.core.errors import UsageError
from utils.core.files import damaged_file, read_csv, read_json
from utils.sparsity.granularity import granularity_class, list_granularities

TOLERANCE = 1e-4  # sparsities this close are "the same sparsity"
SETTINGS = {"iterative": "A", "oneshot": "B", "gradual": "gradual"}  # pruning mode -> the README's setting letter
SEARCHES = {"": "RL", "random_": "random search"}  # search folder prefix -> method


def _folders() -> tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str, str]], dict[str, str]]:
    """What each granularity names its folders and files (``Granularity.prune_prefix`` ...): pruning folders
    -> (granularity, setting), search folders -> (granularity, schedule, method), pipeline tables ->
    granularity."""
    prune, search, pipeline = {}, {}, {}
    for name in list_granularities():
        cls = granularity_class(name)
        prune.update({f"{cls.prune_prefix}{mode}": (name, letter) for mode, letter in SETTINGS.items()})
        search.update({f"{prefix}{cls.regrowth_stem}_{schedule}": (name, schedule, method)
                       for prefix, method in SEARCHES.items() for schedule in ("oneshot", "iterative")})
        pipeline[f"{cls.summary_stem}.csv"] = name
    return prune, search, pipeline


PRUNE_FOLDERS, SEARCH_FOLDERS, PIPELINE_FILES = _folders()


@dataclass(frozen=True)
class RegrowthOutcome:
    """The keys every regrowth run's ``summary.json`` shares (beside its own), which ``report.py`` reads.
    Accuracies in %, sparsities in [0, 1] at the run's granularity."""

    method: str  # RL | random search | greedy {mode}
    schedule: str  # oneshot | iterative
    granularity: str  # weight | channel
    start_sparsity: float
    start_test_acc: float
    final_sparsity: float
    final_val_acc: float  # what picked the result (val)
    final_test_acc: float
    episodes: int | None  # search episodes in all (None: greedy)
    finetune_epochs: int | None  # per episode (search; None: episodes of --episode_steps steps) or iteration (greedy)
    seconds: float  # search or regrowth wall time, resumed segments summed
    units: str | None = None  # the units the allocator could regrow into: ssim | all (None: not recorded)

    def fields(self) -> dict:
        """The keys as written into ``summary.json``."""
        return {"kind": "regrowth", **asdict(self)}


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
    """A run's JSON object (None when absent), read through the checked reader: damaged is a ``UsageError``."""
    return read_json(path, dict)


_NUMBERS = ("start_sparsity", "start_test_acc", "final_sparsity", "final_val_acc", "final_test_acc", "episodes",
            "finetune_epochs", "seconds")  # the outcome's values: numbers or null
_NAMES = ("method", "granularity", "schedule")  # the outcome's names: strings or null


def _checked(outcome: dict | None, path: Path) -> dict | None:
    """``outcome`` when each of its values has the type a stage writes; a ``UsageError`` naming the file else."""
    for key in (*_NUMBERS, *_NAMES) if outcome else ():
        value, kinds = outcome.get(key), (int, float) if key in _NUMBERS else str
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise damaged_file(path, f"{key} is {str(value)[:40]!r}, not a {'number' if key in _NUMBERS else 'name'}")
    return outcome


def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _model_records(root: Path, folder: Path) -> list[dict]:
    """Every record of one ``{root}/{model}`` folder."""
    model = folder.name
    dense_summary = folder / "checkpoint" / "summary.json"
    dataset = _checked_name((_json(dense_summary) or {}).get("dataset"), dense_summary)
    base = {"root": str(root), "model": model, "dataset": dataset}
    records = []
    for name, (granularity, setting) in PRUNE_FOLDERS.items():
        log = folder / name / "prune_log.csv"
        for row in read_csv(log, {"sparsity": str}):
            step = str(row.get("step", ""))
            if not step.isdigit():
                raise UsageError(f"{log}: step {step!r} is not a whole number (a damaged or hand-edited log)")
            records.append({**base, "kind": "prune", "granularity": granularity, "setting": setting, "mode": name,
                            "step": int(step), "sparsity": _float(row["sparsity"]),
                            "val_acc": _float(row.get("val_acc")), "test_acc": _float(row.get("test_acc"))})
    for summary_path in sorted([*folder.glob("*/summary.json"), *folder.glob("*/*/summary.json")]):
        s = _json(summary_path) or {}
        outcome = _checked(s if s.get("kind") == "regrowth" else _legacy_outcome(s, summary_path), summary_path)
        if outcome:
            records.append({**base, "dataset": _checked_name(s.get("dataset", dataset), summary_path),
                            "kind": "regrowth",
                            "method": outcome.get("method"), "granularity": outcome.get("granularity"),
                            "schedule": outcome.get("schedule"), "label": summary_path.parent.name,
                            "start_sparsity": outcome.get("start_sparsity"),
                            "start_test_acc": outcome.get("start_test_acc"),
                            "final_sparsity": outcome.get("final_sparsity"), "val_acc": outcome.get("final_val_acc"),
                            "test_acc": outcome.get("final_test_acc"), "episodes": outcome.get("episodes"),
                            "finetune_epochs": outcome.get("finetune_epochs"), "seconds": outcome.get("seconds")})
    for name, granularity in PIPELINE_FILES.items():
        for row in read_csv(folder / name, dict.fromkeys(("model", "sparsity", "val_acc", "test_acc"), str)):
            records.append({**base, "kind": "pipeline", "granularity": granularity, "row": row["model"],
                            "sparsity": _float(row["sparsity"]), "params": _float(row.get("params")),
                            "val_acc": _float(row["val_acc"]), "test_acc": _float(row["test_acc"])})
    return records


def _legacy_outcome(s: dict, path: Path) -> dict | None:
    """The ``RegrowthOutcome`` keys of a summary written before the shared schema (None: not a regrowth run's
    summary): one-shot searches (``best``), iterative searches (``iterations`` and ``final_*``) and greedy runs
    (``mode``), told apart by their folder."""
    folder = path.parent.name
    if folder.startswith("iter_") or not s:
        return None
    if "mode" in s and "iterations" in s:  # greedy
        if not (isinstance(s["iterations"], list) and all(isinstance(i, dict) for i in s["iterations"])):
            raise damaged_file(path, "its iterations are not a list of objects")
        last = (s.get("iterations") or [{}])[-1]
        return {"method": f"greedy {s['mode']}", "granularity": s.get("granularity") or _greedy_granularity(folder),
                "schedule": "oneshot" if len(s["iterations"]) <= 1 else "iterative",
                "start_sparsity": s.get("start_sparsity"), "start_test_acc": s.get("start_test_acc"),
                "final_sparsity": last.get("sparsity"), "final_val_acc": last.get("val_acc"),
                "final_test_acc": last.get("test_acc"), "episodes": None, "finetune_epochs": s.get("final_epochs"),
                "seconds": s.get("seconds")}
    search = SEARCH_FOLDERS.get(path.parent.parent.name) or SEARCH_FOLDERS.get(folder)
    if search is None:
        return None
    granularity, schedule, method = search
    best = s.get("best", {})
    if not isinstance(best, dict):
        raise damaged_file(path, "its best is not an object")
    final = (best.get("sparsity"), best.get("val_acc"), s.get("best_test_acc")) if schedule == "oneshot" else (
        s.get("final_sparsity"), s.get("final_val_acc"), s.get("final_test_acc"))
    return {"method": method, "granularity": granularity, "schedule": schedule,
            "start_sparsity": s.get("start_sparsity"), "start_test_acc": s.get("start_test_acc"),
            "final_sparsity": final[0], "final_val_acc": final[1], "final_test_acc": final[2],
            "episodes": s.get("episodes"), "finetune_epochs": s.get("finetune_epochs"),
            "seconds": s.get("search_seconds")}


def _checked_name(value: Any, path: Path) -> str | None:
    """``value`` when it is a name (or null); a ``UsageError`` naming the file else."""
    if value is not None and not isinstance(value, str):
        raise damaged_file(path, f"the data set is {str(value)[:40]!r}, not a name")
    return value


def _greedy_granularity(folder: str) -> str | None:
    """The granularity whose greedy folder stem starts ``folder`` (the longest stem first: ``greedy_channel_``
    before ``greedy_``), for greedy summaries written before they recorded it."""
    stems = sorted(((granularity_class(n).greedy_stem, n) for n in list_granularities()), key=lambda x: -len(x[0]))
    return next((name for stem, name in stems if folder.startswith(f"{stem}_")), None)


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
