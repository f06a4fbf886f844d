"""Files: atomic writes (temp file, fsync, rename), JSON and CSV, the git revision, and the --resume settings check."""
from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Collection, Mapping
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
        full = isinstance(exc, OSError) and exc.errno in DISK_FULL
        free = shutil.disk_usage(path.parent).free
        if not (full or (tmp.exists() and free < max(2 * tmp.stat().st_size, 1 << 20))):
            raise
        raise disk_full(path, free) from None
    finally:
        tmp.unlink(missing_ok=True)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device, disk quota exceeded


def disk_full(path: Path, free: int | None = None) -> UsageError:
    """The one error line of a write to ``path`` that found the disk full (``free``: bytes left, measured when
    not given)."""
    if free is None:
        free = shutil.disk_usage(Path(path).parent).free
    return UsageError(f"cannot write {path}: the disk is full ({free:,} bytes free); the files written before are "
                      "kept: free some space and rerun (with --resume where the stage has it)")


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` whole or not at all: unbuffered writes, and one that fails part-way (a
    full disk) is cut back to the file's earlier length; a full disk is a ``UsageError`` (``disk_full``)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        view = memoryview(text.encode("utf-8"))
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            with contextlib.suppress(OSError):  # a device such as /dev/full cannot be cut back
                os.ftruncate(fd, start)
            if exc.errno in DISK_FULL:
                raise disk_full(path) from None
            raise
    finally:
        os.close(fd)


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


def damaged_file(path: Path, what: str) -> UsageError:
    """The one error for a run file that cannot be what the stage that wrote it wrote."""
    return UsageError(f"{path} is damaged or hand-edited ({what}): restore it, or delete it and rerun the stage that "
                      "wrote it")


def read_csv(path: Path, columns: Mapping[str, Callable[[str], Any]] | None = None) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (empty when the file does not exist). A file that is not UTF-8 CSV text, or
    (``columns``: {name: parser such as int or float}) lacks one of the columns or holds a value its parser
    refuses, is a ``UsageError`` naming it."""
    if not Path(path).exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise damaged_file(path, f"not CSV text: {type(exc).__name__}") from None
    for line, row in enumerate(rows, start=2):
        for column, parse in (columns or {}).items():
            try:
                parse(row[column])
            except (KeyError, TypeError, ValueError):
                value = row.get(column)
                raise damaged_file(path, f"line {line} has no column '{column}'" if value is None
                                   else f"line {line}: {column} {value[:40]!r} is not a {parse.__name__}") from None
    return rows


def read_json(path: Path, kind: type = dict) -> Any:
    """The JSON value of ``path`` (None when the file does not exist); a file that is not UTF-8 JSON, or whose
    value is not a ``kind``, is a ``UsageError`` naming it."""
    if not Path(path).is_file():
        return None
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise damaged_file(path, f"not JSON text: {type(exc).__name__}") from None
    if not isinstance(value, kind):
        raise damaged_file(path, f"a JSON {type(value).__name__}, not a {kind.__name__}")
    return value


def trim_csv(path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Rewrite the CSV ``path`` (atomically) with only the rows ``keep`` accepts; a missing file stays missing.
    A resumed run uses it to drop the rows its killed predecessor logged after its last checkpoint."""
    if Path(path).exists():
        rows = read_csv(path)
        with open(path, newline="", encoding="utf-8") as f:
            fields = csv.DictReader(f).fieldnames or []
        try:
            kept = [row for row in rows if keep(row)]
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged_file(path, f"a row it cannot read: {type(exc).__name__} {exc}") from None
        write_csv(path, kept, list(fields))


# flags added after runs had been recorded without them, with the value those runs had in effect
NEWER_FLAGS = {"eval_subset": None, "episode_steps": None, "episode_val_subset": None, "units": "ssim",
               "fisher": "batch", "swap_every_epochs": None, "lr_schedule": "cosine", "warmup_epochs": 0.0,
               "nesterov": False, "label_smoothing": 0.0, "recipe": "original"}


def differing(stored: Mapping[str, Any], current: Mapping[str, Any], ignore: Collection[str] = (),
              older: Mapping[str, Any] = NEWER_FLAGS, both_ways: bool = False) -> list[str]:
    """The settings whose values differ between those an earlier run recorded (``stored``) and this run's
    (``current``), sorted; the one comparison behind ``--resume`` and every reuse of a finished run. A key of
    ``older`` that ``stored`` predates had that value; a key ``stored`` lacks otherwise differs; keys in ``ignore``
    (those that may change) are not compared. A key ``current`` lacks differs only with ``both_ways`` (a folder's
    settings file: a setting left out of this run's record is not the same run); without it, it is a flag this
    version no longer has (``--resume``). Values compare as a checkpoint stores them (``_comparable``: tuples as
    lists, paths absolute)."""
    stored = {**older, **stored}
    keys = (current.keys() | (stored.keys() - older.keys())) if both_ways else current.keys()
    missing = object()
    return sorted(key for key in keys if key not in ignore
                  and _comparable(stored.get(key, missing)) != _comparable(current.get(key, missing)))


def check_same_run(saved: dict, current: Mapping[str, Any], may_change: set[str]) -> None:
    """On --resume: a ``UsageError`` naming the first flag (alphabetically) whose value differs from the one the
    run was started with (``saved``: its recorded args; ``differing``), except the flags in ``may_change``.
    ``current``: this run's flags (``Stage.flags``)."""
    differ = differing(saved, current, may_change)
    if not differ:
        return
    key, recorded = differ[0], {**NEWER_FLAGS, **saved}
    was = f"used {recorded[key]!r}" if key in recorded else f"predates --{key} (recorded before it existed)"
    raise UsageError(f"--resume: --{key} is {current[key]!r} but the run being resumed {was}; resume with the same "
                     "value (or start over with --overwrite)")


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
    checkout. Read once per process through ``git`` (worktrees and packed refs work; no index lock is taken),
    else from ``.git/HEAD`` without the dirty flag (no git, or git refuses the folder)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")[:12]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return _head_commit(root / ".git" / "HEAD")
    return commit + ("+dirty" if dirty else "") if commit else None


def _head_commit(head: Path) -> str | None:
    """The commit ``.git/HEAD`` names (a loose ref followed once), or None."""
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return ref[:12] or None
    except OSError:
        return None


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through the one atomic writer (never a half-written file)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


# a sealed dict records a checksum of its whole content (tensors, numbers, strings, nested dicts and lists) under
# SEAL_CHECKSUM, and SEALED = True beside it: a flip in either key's name leaves the other, so it is refused too
SEALED, SEAL_CHECKSUM = "sealed", "content_checksum"


def file_digest(path: Path) -> str:
    """The sha1 (hex) of the bytes of the file ``path``, read in 1 MiB blocks: what tells that an input file's
    content changed (a copy keeps it, unlike its modification time)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def object_fingerprint(obj: Any) -> str:
    """The first 16 hex digits of a sha256 over a nested structure of dicts (keys sorted), lists/tuples,
    tensors (dtype, shape, raw bytes) and scalars (type and repr): equal exactly when the contents are."""
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()[:16]


def _feed(digest: Any, obj: Any) -> None:
    """Add ``obj`` to ``digest`` with a type tag and length before each part (no two structures collide)."""
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(obj.shape)}:".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the tensor's bytes as they are: no copy
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}:".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(_scalar_text(obj).encode())


def _scalar_text(obj: Any) -> str:
    """A leaf as ``type length:repr``, built-in subclasses as their base type (a str subclass reads back a str)."""
    for kind in (bool, int, float, str, bytes):
        if isinstance(obj, kind):
            text = repr(kind(obj))
            return f"{kind.__name__}{len(text)}:{text}"
    text = repr(obj)
    return f"{type(obj).__name__}{len(text)}:{text}"


def seal(obj: dict) -> dict:
    """``obj`` with ``SEALED`` and the ``SEAL_CHECKSUM`` of all of its content (``object_fingerprint``), for a file
    ``check_seal`` verifies whole when it is read back."""
    content = {k: v for k, v in obj.items() if k not in (SEALED, SEAL_CHECKSUM)}
    return {**content, SEALED: True, SEAL_CHECKSUM: object_fingerprint({**content, SEALED: True})}


def check_seal(obj: Any, path: Path) -> bool:
    """True when ``obj`` (a file's content) is sealed and intact, False when it was written unsealed (older
    versions); a ``UsageError`` when it is damaged: its content differs from its checksum, or half of the seal
    is missing."""
    if not isinstance(obj, dict) or (SEALED not in obj and SEAL_CHECKSUM not in obj):
        return False
    recorded = obj.get(SEAL_CHECKSUM)
    content = {k: v for k, v in obj.items() if k != SEAL_CHECKSUM}
    if obj.get(SEALED) is not True or not isinstance(recorded, str) or object_fingerprint(content) != recorded:
        raise UsageError(f"{path} is damaged: its content does not match the checksum written with it; use an "
                         "intact copy or rerun the stage that wrote it")
    return True

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
