"""The pruning baseline: val accuracy of plain pruning as a function of sparsity.

Built from the pruning checkpoints in ``--baseline_dir`` (e.g. ``{save_dir}/{m}/iterative``): those the folder's
``prune_log.csv`` lists or, in a folder without one, those whose meta ``stage`` says a pruning stage wrote them
(``prune_oneshot`` / ``prune_iterative``, from ``prune_unstructure.py`` and ``prune_structure.py``); a file with
no recorded stage (the original repository's, another tool's) counts unless its name marks it as a derived copy
(``_finetuned``, ``_final``, ``_exported``). Finetuned, exported or regrown files beside the pruned ones would
otherwise replace the pruning point at their sparsity and move the reward's zero point; the ignored files are
named in one log line. Each checkpoint is evaluated once; its sparsity (counted from its masks, not parsed from
the file name) and val accuracy are cached in the run's cache folder (``paths.baseline_cache``: never in the
input folder, which may be read-only or shared), keyed by file size and modification time and by the evaluation
settings, so a changed file or setting is evaluated again. ``interpolate`` is linear between the two nearest
sparsities and constant beyond the ends.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path

from utils.core.cache import file_stamp, read_cache, table_entries, write_cache
from utils.core.errors import UsageError
from utils.core.files import read_csv
from utils.core.log import LOG
from utils.core.paths import PRUNE_LOG
from utils.runtime.checkpoint import read_checkpoint

Evaluator = Callable[[Path], tuple[float, float]]  # checkpoint -> (sparsity in [0, 1], val accuracy %)
StageReader = Callable[[Path], str | None]  # checkpoint -> the stage its meta records (None: none recorded)

PRUNING_STAGE_PREFIX = "prune_"  # meta["stage"] of utils/prune/loop.py: prune_oneshot, prune_iterative
DERIVED_TAGS = ("_exported", "_final", "_finetuned")  # names of copies derived from a checkpoint (+ _final_swap...)
SELECTION = "pruning-checkpoints-v1"  # in the cache's settings: caches built before the selection are rebuilt


def checkpoint_stage(path: Path) -> str | None:
    """The ``stage`` a checkpoint's meta records (None: the file records none, e.g. the original repo's)."""
    stage = read_checkpoint(path).meta.get("stage")
    return stage if isinstance(stage, str) else None


def _written_by_pruning(path: Path, stage_of: StageReader) -> bool:
    """Whether ``path`` is a pruning checkpoint by its recorded stage (by its name when it records none or
    cannot be read: the evaluator then names what is wrong with it)."""
    try:
        stage = stage_of(path)
    except UsageError:
        stage = None
    if stage is not None:
        return stage.startswith(PRUNING_STAGE_PREFIX)
    return not any(tag in path.stem for tag in DERIVED_TAGS)


def pruning_checkpoints(folder: Path, stage_of: StageReader, known: dict[str, dict]) -> list[Path]:
    """The pruning checkpoints of ``folder``, sorted by name: those its prune_log.csv lists (a listed file that
    is missing is a warning), or else every ``*.pth`` a pruning stage wrote (``known``: cache entries whose
    file is unchanged, already selected). Logs the ``*.pth`` files left out, in one line."""
    every = sorted(folder.glob("*.pth"))
    log = read_csv(folder / PRUNE_LOG)
    if log:
        listed = {row.get("checkpoint", "") for row in log}
        missing = sorted(name for name in listed if not (folder / name).is_file())
        if missing:
            LOG.warning("baseline: %s lists checkpoints that are not there: %s", PRUNE_LOG, ", ".join(missing))
        chosen = [p for p in every if p.name in listed]
        why = f"not in {PRUNE_LOG}"
    else:
        chosen = [p for p in every if (p.name in known and known[p.name]["fingerprint"] == file_stamp(p))
                  or _written_by_pruning(p, stage_of)]
        why = "not written by a pruning stage"
    ignored = [p.name for p in every if p not in chosen]
    if ignored:
        LOG.info("baseline: ignoring %d file(s) in %s (%s): %s", len(ignored), folder, why, ", ".join(ignored))
    return chosen


def _valid_entry(entry: object) -> bool:
    """A cache entry as ``baseline_table`` writes it: fingerprint [size, mtime], sparsity and val accuracy."""
    number = (int, float)
    return (isinstance(entry, dict) and isinstance(entry.get("fingerprint"), list)
            and len(entry["fingerprint"]) == 2 and all(isinstance(x, number) for x in entry["fingerprint"])
            and isinstance(entry.get("sparsity"), number) and isinstance(entry.get("val_acc"), number)
            and not isinstance(entry["sparsity"], bool) and not isinstance(entry["val_acc"], bool))


def read_baseline_cache(path: Path) -> dict:
    """The baseline cache (``{"settings", "entries"}``; empty when there is none, or, after one warning, when it is
    damaged or hand-edited: every checkpoint is then evaluated again and the cache written anew)."""
    return read_cache(path, "baseline", _valid_table) or {}


def _valid_table(cache: dict) -> bool:
    """A baseline cache as ``baseline_table`` writes it: its settings and one ``_valid_entry`` per checkpoint."""
    entries = cache.get("entries")
    return isinstance(entries, dict) and all(_valid_entry(entry) for entry in entries.values())


def baseline_table(folder: str | Path, evaluate: Evaluator, settings: dict, cache_path: Path,
                   stage_of: StageReader = checkpoint_stage) -> dict[float, float]:
    """{sparsity: val accuracy} over the pruning checkpoints in ``folder`` (``pruning_checkpoints``; cached in
    ``cache_path``); unreadable files are skipped with a warning, and a folder with no usable checkpoint is a
    ``UsageError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--baseline_dir {folder} is not a folder")
    settings = {**settings, "folder": str(folder.resolve()), "selection": SELECTION}
    entries = table_entries(read_baseline_cache(cache_path), settings)
    fresh = {}
    for path in pruning_checkpoints(folder, stage_of, entries):
        entry = entries.get(path.name)
        if entry is None or entry["fingerprint"] != file_stamp(path):
            try:
                sparsity, acc = evaluate(path)
            except UsageError as exc:
                LOG.warning("baseline: skipping %s (%s)", path.name, exc)
                continue
            entry = {"fingerprint": file_stamp(path), "sparsity": sparsity, "val_acc": acc}
        fresh[path.name] = entry
    if not fresh:
        raise UsageError(f"--baseline_dir {folder} has no usable checkpoint (a pruning checkpoint its {PRUNE_LOG} "
                         "lists, or a *.pth of this model with masks that a pruning stage wrote)")
    write_cache(cache_path, {"settings": settings, "entries": fresh}, "baseline")
    return {e["sparsity"]: e["val_acc"] for e in fresh.values()}


def interpolate(table: dict[float, float], sparsity: float) -> float:
    """Baseline accuracy at ``sparsity``: piecewise linear in the table, clamped to its end values."""
    points = sorted(table.items())
    xs = [s for s, _ in points]
    if sparsity <= xs[0]:
        return points[0][1]
    if sparsity >= xs[-1]:
        return points[-1][1]
    i = bisect.bisect_right(xs, sparsity)
    (s1, a1), (s2, a2) = points[i - 1], points[i]
    return a1 + (sparsity - s1) / (s2 - s1) * (a2 - a1)
