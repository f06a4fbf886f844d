"""Files: atomic writes (temp file, fsync, rename), JSON and CSV, the git revision, and the --resume settings check."""
from __future__ import annotations

import csv
import errno
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from utils.core.distributed import is_main_process
from utils.core.errors import UsageError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """The one atomic writer: ``write(tmp)`` fills a temp file beside ``path``, which is flushed to disk
    (fsync) and renamed over ``path``. A crash leaves the old file or the new one, never half of one; the
    temp file is removed when ``write`` fails. Only rank 0 of a ``torchrun`` launch writes (the others skip)."""
    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        free = shutil.disk_usage(path.parent).free
        if not (full or (tmp.exists() and free < max(2 * tmp.stat().st_size, 1 << 20))):
            raise
        raise UsageError(f"cannot write {path}: the disk is full ({free:,} bytes free); the files written before "
                         "are kept: free some space and rerun (with --resume where the stage has it)") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Write ``rows`` (dicts) as a CSV table atomically; columns are ``fields`` or the first row's keys."""
    columns = fields if fields is not None else (list(rows[0]) if rows else [])

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (empty when the file does not exist)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def trim_csv(path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Rewrite the CSV ``path`` (atomically) with only the rows ``keep`` accepts; a missing file stays missing.
    A resumed run uses it to drop the rows its killed predecessor logged after its last checkpoint."""
    if Path(path).exists():
        with open(path, newline="") as f:
            fields = csv.DictReader(f).fieldnames or []
        write_csv(path, [row for row in read_csv(path) if keep(row)], list(fields))


# flags added after runs had been recorded without them, with the value those runs had in effect
NEWER_FLAGS = {"eval_subset": None, "episode_steps": None, "episode_val_subset": None, "units": "ssim"}


def check_same_run(saved: dict, current: Mapping[str, Any], may_change: set[str]) -> None:
    """On --resume: a ``UsageError`` naming the first flag whose value differs from the one the run was
    started with (``saved``: its recorded args; a ``NEWER_FLAGS`` flag it lacks had its old value), except the
    flags in ``may_change``. ``current``: this run's flags (``Stage.flags``)."""
    saved = {**NEWER_FLAGS, **saved}
    for key, old in saved.items():
        if key in may_change or key not in current:
            continue
        new = current[key]
        if _comparable(new) != _comparable(old):
            raise UsageError(f"--resume: --{key} is {new!r} but the run being resumed used {old!r}; resume with "
                             f"the same value (or start over with --overwrite)")


def _comparable(value: Any) -> Any:
    """Values as a checkpoint stores them (tuples as lists, paths as absolute strings)."""
    if isinstance(value, (list, tuple)):
        return [_comparable(v) for v in value]
    if isinstance(value, (str, Path)) and ("/" in str(value) or str(value).endswith(".pth")):
        return os.path.abspath(str(value))
    return value


@functools.cache
def git_revision() -> str | None:
    """The code's git commit (12 hex digits), with ``+dirty`` when tracked files differ from it; None outside a
    checkout or without git. Read once per process (through ``git``, so worktrees and packed refs work)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")[:12]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the one atomic writer (never a half-written file)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def plain(obj: Any) -> Any:
    """Recursively turn ``obj`` into str/int/float/bool/None/list/dict so it loads with ``weights_only``."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None:
        return None
    for kind in (bool, int, float, str):  # exact built-in types (e.g. TorchVersion is a str subclass)
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)
