"""The README's tables from what the stages wrote: records read from run folders, grouped over seeds.

Every regrowth run (one-shot or iterative search, RL or random, greedy) writes the same keys into its
``summary.json`` (``RegrowthOutcome``, marked ``"kind": "regrowth"``), so they are read in one loop; summaries
written before that schema are read through ``_legacy_outcome``.

A *root* is one ``--save_dir`` (e.g. ``runs/demo/seed1``): it holds ``{model}/...`` as the stage scripts write
it. ``find_roots`` finds the roots under the folders given (a folder such as ``runs`` may hold stage runs of its
own and the demo's ``demo/`` beside them) and names the *experiment* each belongs to: the ``seed*/`` roots of
one folder are the seeds of one experiment, and so are the roots given by name; any other root found is one of
its own. ``collect`` turns each root into flat records (one per pruning checkpoint, regrowth result, pipeline
row or summary's provenance); ``tables`` groups equal settings over the seeds of an experiment (sparsities
equal within ``TOLERANCE``) and gives mean ± std and n. Nothing is guessed: a value a run did not write is
``None`` and prints as "missing", and a regrowth result is paired with a pruning baseline only at the same
model, data set, granularity, start schedule and final sparsity.
"""
from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models import list_models
from utils.core.errors import UsageError
from utils.core.files import damaged_file, read_csv, read_json
from utils.core.provenance import PROVENANCE_KEY
from utils.sparsity.granularity import granularity_class, list_granularities

TOLERANCE = 1e-4  # sparsities this close are "the same sparsity"
SETTINGS = {"iterative": "A", "oneshot": "B", "gradual": "gradual"}  # pruning mode -> the README's setting letter
SEARCHES = {"": "RL", "random_": "random search"}  # search folder prefix -> method
SEED_ROOT = re.compile(r"seed\d+")  # pipeline.py --seeds writes {save_dir}/seed{N}/
MAX_DEPTH = 4  # folders below a given one searched for run roots (runs/demo/seed1 is 2 deep)


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
GREEDY_PREFIXES = tuple(f"{granularity_class(name).greedy_stem}_" for name in list_granularities())


def pruning_schedule(meta: dict | None) -> str | None:
    """How a checkpoint was pruned, from its meta's ``stage`` (``prune_{mode}``, utils/prune/loop.py): ``oneshot``,
    ``iterative`` or ``gradual``; None for anything else (a regrown or finetuned start, another tool's file)."""
    stage = meta.get("stage") if isinstance(meta, dict) else None
    mode = stage.removeprefix("prune_") if isinstance(stage, str) and stage.startswith("prune_") else None
    return mode if mode in SETTINGS else None


@dataclass(frozen=True)
class RegrowthOutcome:
    """The keys every regrowth run's ``summary.json`` shares (beside its own), which ``report.py`` reads.
    Accuracies in %, sparsities in [0, 1] at the run's granularity."""

    method: str  # RL | random search | greedy {mode}
    schedule: str  # the regrowth's own: oneshot (one search or greedy step) | iterative
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
    start_schedule: str | None = None  # how the start was pruned (``pruning_schedule`` of its meta): oneshot |
    # iterative | gradual; the report pairs the result with that pruning run (None: not a pruning checkpoint)

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


@dataclass(frozen=True)
class RunRoot:
    """One ``--save_dir`` and the experiment it is a seed of (its section of the report)."""

    path: Path
    experiment: str


def _has_outputs(folder: Path) -> bool:
    """Whether ``folder`` holds what a stage writes into ``{save_dir}/{model}/``: the dense model's folder, a
    pruning, search or greedy folder, or a pipeline table."""
    return ((folder / "checkpoint").is_dir() or any((folder / name).is_dir() for name in (*PRUNE_FOLDERS,
                                                                                          *SEARCH_FOLDERS))
            or any((folder / name).is_file() for name in PIPELINE_FILES)
            or any(p.is_dir() and p.name.startswith(GREEDY_PREFIXES) for p in folder.iterdir()))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def model_folders(root: Path) -> list[Path]:
    """The ``{model}/`` folders of a ``--save_dir``: those holding stage outputs, and those named after a
    registered model that hold no other root (e.g. only a cache). A folder such as ``runs/demo`` (the demo's
    own ``--save_dir``) is not one."""
    models = set(list_models())
    return [p for p in _subfolders(root) if _has_outputs(p)
            or (p.name in models and not any(_has_outputs(q) for q in _subfolders(p)))]


def _roots_under(folder: Path, depth: int = 0) -> list[Path]:
    """``folder`` when it holds model folders, and the roots in its other sub-folders, ``MAX_DEPTH`` deep."""
    found = [folder] if model_folders(folder) else []
    if depth < MAX_DEPTH:
        own = set(model_folders(folder))
        for sub in _subfolders(folder):
            if sub not in own:
                found += _roots_under(sub, depth + 1)
    return found


def find_roots(paths: list[str | Path]) -> list[RunRoot]:
    """The run roots under ``paths``, each once, with its experiment: the roots given by name are the seeds of
    one experiment; under a given folder, the ``seed*/`` roots of one folder are the seeds of ``{folder}/seed*``
    (apart from a run root that folder is itself), and every other root found is an experiment of its own. A
    path that is not a folder, or holds no root, is a ``UsageError``."""
    given = [Path(p) for p in paths]
    for path in given:
        if not path.is_dir():
            raise UsageError(f"{path} is not a folder (give run roots such as runs/demo/seed1, or a folder of "
                             "seed*/)")
    named = [p for p in given if model_folders(p)]
    seeds = {p.parent for p in named} if all(SEED_ROOT.fullmatch(p.name) for p in named) else set()
    together = str(next(iter(seeds)) / "seed*") if len(seeds) == 1 else ", ".join(map(str, named))
    roots: dict[Path, RunRoot] = {}
    for path in given:
        found = _roots_under(path)
        if not found:
            where = (f"it is a {{model}}/ folder: give the --save_dir above it, {path.parent}" if _has_outputs(path)
                     else "pass the --save_dir of a run")
            raise UsageError(f"{path} holds no run outputs (prune_log.csv, summary.json, pipeline_summary.csv) "
                             f"under {{model}}/: {where}")
        for root in found:
            experiment = (together if root in named else str(root.parent / "seed*") if SEED_ROOT.fullmatch(root.name)
                          else str(root))
            roots.setdefault(root.resolve(), RunRoot(root, experiment))
    return list(roots.values())


def _json(path: Path) -> dict | None:
    """A run's JSON object (None when absent), read through the checked reader: damaged is a ``UsageError``."""
    return read_json(path, dict)


_NUMBERS = ("start_sparsity", "start_test_acc", "final_sparsity", "final_val_acc", "final_test_acc", "episodes",
            "finetune_epochs", "seconds")  # the outcome's values: numbers or null
_NAMES = ("method", "granularity", "schedule", "start_schedule")  # the outcome's names: strings or null


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


def _model_records(root: RunRoot, folder: Path) -> list[dict]:
    """Every record of one ``{root}/{model}`` folder. A folder whose dense summary does not name its data set
    (pretrained elsewhere) takes the one its regrowth summaries name, when they agree."""
    dense_summary = folder / "checkpoint" / "summary.json"
    dense = _json(dense_summary) or {}
    base = {"root": str(root.path), "experiment": root.experiment, "model": folder.name,
            "dataset": _checked_name(dense.get("dataset"), dense_summary)}
    records = _provenance(base, dense_summary, dense) if dense else []
    records += [*_prune_records(base, folder), *_regrowth_records(base, folder), *_pipeline_records(base, folder)]
    named = {r["dataset"] for r in records if r["dataset"] is not None}
    if base["dataset"] is None and len(named) == 1:
        for r in records:
            r["dataset"] = r["dataset"] or next(iter(named))
    return records


def _provenance(base: dict, path: Path, summary: dict) -> list[dict]:
    """The provenance record of one summary (``None`` when it has none, or not as an object: older files)."""
    record = summary.get(PROVENANCE_KEY)
    return [{**base, "kind": "provenance", "source": str(path),
             "provenance": record if isinstance(record, dict) else None}]


def _prune_records(base: dict, folder: Path) -> list[dict]:
    """One record per row of each pruning folder's ``prune_log.csv`` (accuracy after the step's own finetune)."""
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
    return records


def _regrowth_records(base: dict, folder: Path) -> list[dict]:
    """One record per regrowth run's ``summary.json`` (and its provenance record)."""
    records = []
    for summary_path in sorted([*folder.glob("*/summary.json"), *folder.glob("*/*/summary.json")]):
        s = _json(summary_path) or {}
        outcome = _checked(s if s.get("kind") == "regrowth" else _legacy_outcome(s, summary_path), summary_path)
        if outcome:
            mine = {**base, "dataset": _checked_name(s.get("dataset", base["dataset"]), summary_path)}
            records += _provenance(mine, summary_path, s)
            records.append({**mine, "kind": "regrowth",
                            "method": outcome.get("method"), "granularity": outcome.get("granularity"),
                            "schedule": outcome.get("schedule"), "start_schedule": outcome.get("start_schedule"),
                            "label": summary_path.parent.name,
                            "start_sparsity": outcome.get("start_sparsity"),
                            "start_test_acc": outcome.get("start_test_acc"),
                            "final_sparsity": outcome.get("final_sparsity"), "val_acc": outcome.get("final_val_acc"),
                            "test_acc": outcome.get("final_test_acc"), "episodes": outcome.get("episodes"),
                            "finetune_epochs": outcome.get("finetune_epochs"), "seconds": outcome.get("seconds")})
    return records


def _pipeline_records(base: dict, folder: Path) -> list[dict]:
    """One record per row of pipeline.py's final table (each model as the pipeline finally evaluates it), and the
    provenance of its JSON twin when it has one."""
    records = []
    for name, granularity in PIPELINE_FILES.items():
        rows = read_csv(folder / name, dict.fromkeys(("model", "sparsity", "val_acc", "test_acc"), str))
        twin = (folder / name).with_suffix(".json")
        if rows and twin.is_file():
            records += _provenance(base, twin, _json(twin) or {})
        for row in rows:
            records.append({**base, "kind": "pipeline", "granularity": granularity, "row": row["model"],
                            "sparsity": _float(row["sparsity"]), "params": _float(row.get("params")),
                            "epochs": _float(row.get("epochs")),  # finetune epochs after pruning, where recorded
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


def collect(roots: list[RunRoot | Path]) -> list[dict]:
    """Records of every root (a bare path is an experiment of its own), each naming its root, experiment, model
    and data set: ``sections`` splits them. Roots that hold no run output at all are a ``UsageError``."""
    records = []
    for root in roots:
        root = root if isinstance(root, RunRoot) else RunRoot(Path(root), str(root))
        records += [r for folder in model_folders(root.path) for r in _model_records(root, folder)]
    if not any(r["kind"] != "provenance" for r in records):
        raise UsageError(f"{', '.join(str(getattr(r, 'path', r)) for r in roots)} hold(s) no run outputs "
                         "(prune_log.csv, summary.json, pipeline_summary.csv) under {model}/: pass the --save_dir "
                         "of a run")
    return records


def sections(records: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """The records of each (experiment, model, data set), in the order first seen: one section of the report
    each, its tables over that experiment's seeds."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        out.setdefault((r["experiment"], r["model"], r["dataset"] or "?"), []).append(r)
    return out


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
