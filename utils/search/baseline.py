"""The pruning baseline: val accuracy of plain pruning as a function of sparsity.

Built from the checkpoints in ``--baseline_dir`` (e.g. ``{save_dir}/{m}/iterative``). Each checkpoint is
evaluated once; its sparsity (counted from its masks, not parsed from the file name) and val accuracy are
cached in the run's cache folder (``paths.baseline_cache``: never in the input folder, which may be
read-only or shared), keyed by file size and modification time and by the evaluation settings, so a
changed file or setting is evaluated again. ``interpolate`` is linear between
the two nearest sparsities and constant beyond the ends.
"""
from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable
from pathlib import Path

from utils.core.errors import UsageError
from utils.core.files import write_json
from utils.core.log import LOG

Evaluator = Callable[[Path], tuple[float, float]]  # checkpoint -> (sparsity in [0, 1], val accuracy %)


def _fingerprint(path: Path) -> list[float]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime]


def baseline_table(folder: str | Path, evaluate: Evaluator, settings: dict, cache_path: Path) -> dict[float, float]:
    """{sparsity: val accuracy} over the checkpoints in ``folder`` (cached in ``cache_path``); unreadable
    files are skipped with a warning, and a folder with no usable checkpoint is a ``UsageError``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"--baseline_dir {folder} is not a folder")
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    settings = {**settings, "folder": str(folder.resolve())}
    entries = cache.get("entries", {}) if cache.get("settings") == settings else {}
    fresh = {}
    for path in sorted(folder.glob("*.pth")):
        entry = entries.get(path.name)
        if entry is None or entry["fingerprint"] != _fingerprint(path):
            try:
                sparsity, acc = evaluate(path)
            except UsageError as exc:
                LOG.warning("baseline: skipping %s (%s)", path.name, exc)
                continue
            entry = {"fingerprint": _fingerprint(path), "sparsity": sparsity, "val_acc": acc}
        fresh[path.name] = entry
    if not fresh:
        raise UsageError(f"--baseline_dir {folder} has no usable checkpoint (*.pth of this model with masks)")
    write_json(cache_path, {"settings": settings, "entries": fresh})
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
