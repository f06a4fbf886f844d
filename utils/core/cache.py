"""Caches of derived data, one rule for all of them (the pruning baselines of the searches, the per-image val
results of find_drop_point.py, the saliency and channel scores, the decoded Tiny-ImageNet).

A cache holds what a stage can compute again. It is keyed by everything that changes its content (its file name
carries a content digest, or it records the settings it was made with and a ``file_stamp`` per input file), it is
written whole (atomically) and sealed with a checksum of its content, and a cache file that is damaged,
hand-edited, from an older version or of another shape is computed again after one warning: never used, never an
error. A cache that cannot be written (a read-only folder) is a warning too; the stage goes on without it.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.core.errors import UsageError
from utils.core.files import SEAL_CHECKSUM, SEALED, atomic_save, check_seal, seal
from utils.core.log import LOG

Check = Callable[[dict], bool]  # whether a cache's content has the shape its reader expects


def read_cache(path: Path, what: str, valid: Check = lambda content: True) -> dict | None:
    """The content of the sealed cache file ``path`` (a dict, the seal removed) when it is intact and ``valid``
    says its shape is right; None when there is no such file, or, with one warning naming ``what`` (e.g.
    "scores"), when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not check_seal(blob, path):
            reason = "not sealed: written by an older version or by hand"
        elif not valid(content := {k: v for k, v in blob.items() if k not in (SEALED, SEAL_CHECKSUM)}):
            reason = "not the table this version writes"
        else:
            return content
    except UsageError:
        reason = "its content does not match its checksum"
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on a truncated or foreign file
        reason = f"cannot read it: {type(exc).__name__}"
    LOG.warning("%s: the cache %s is damaged, hand-edited or from an older version (%s); computing it again", what,
                path, reason)
    return None


def write_cache(path: Path, content: dict[str, Any], what: str) -> None:
    """Write ``content`` (tensors, numbers, strings, nested dicts and lists) sealed and atomically to ``path``; a
    folder that cannot be written is one warning naming ``what``, not an error (a cache is an optimisation)."""
    try:
        atomic_save(seal(content), Path(path))
    except OSError as exc:
        LOG.warning("%s: could not write the cache %s (%s); continuing without it", what, path, exc)


def file_stamp(path: Path) -> list[float]:
    """[size in bytes, modification time in s] of ``path``: what a table cache compares to tell that an input
    file changed since its entry was made (cheap; a rewritten file gets a new time)."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime]


def table_entries(cache: dict | None, settings: dict) -> dict:
    """The ``entries`` of a table cache (``{"settings", "entries"}``) made with ``settings``; {} when there is no
    cache or it was made with other settings (every entry is then made again)."""
    return cache["entries"] if cache and cache.get("settings") == settings else {}
