"""Run set-up: seeds, the device (resolved once), run folders and logging."""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import random
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.distributed import is_main_process
from utils.errors import UsageError

LOG = logging.getLogger("bridge")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def role_seed(seed: int, role: str) -> int:
    """A seed derived from the run seed for one role ('val_split', 'data_order', 'policy', ...).

    Separate roles get independent streams, so e.g. changing the number of augmentation draws never
    shifts the validation split.
    """
    return (seed * 1_000_003 + zlib.crc32(role.encode())) % 2**63


def make_generator(seed: int, role: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``role_seed(seed, role)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(role_seed(seed, role))
    return gen


def resolve_device(name: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device once at start; CUDA without a GPU is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but CUDA is not available here; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def setup_logging(run_dir: Path | None = None, name: str = "log.txt") -> logging.Logger:
    """Log INFO lines to stderr and, when ``run_dir`` is given, append them to ``run_dir/name``. Ranks other
    than 0 of a ``torchrun`` launch log warnings only, and to stderr only (rank 0 writes the files)."""
    main = is_main_process()
    LOG.setLevel(logging.INFO if main else logging.WARNING)
    LOG.propagate = False
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    LOG.addHandler(console)
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(run_dir / name)
        file_handler.setFormatter(fmt)
        LOG.addHandler(file_handler)
    return LOG


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
NEWER_FLAGS = {"eval_subset": None}


def check_same_run(saved: dict, args: argparse.Namespace, may_change: set[str]) -> None:
    """On --resume: a ``UsageError`` naming the first flag whose value differs from the one the run was
    started with (``saved``: its recorded args; a ``NEWER_FLAGS`` flag it lacks had its old value), except the
    flags in ``may_change``."""
    current, saved = vars(args), {**NEWER_FLAGS, **saved}
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


def git_revision() -> str | None:
    """The short git commit of the code, or None outside a checkout (read from .git, no subprocess)."""
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return ref[:12]
    except OSError:
        return None


_SUMMARIES = {"on": True}  # off while pipeline.py runs the stages (it prints its own summary)


@contextlib.contextmanager
def inner_stage() -> Iterator[None]:
    """Within: stages run as parts of a larger job, so ``log_outputs`` stays quiet."""
    _SUMMARIES["on"] = False
    try:
        yield
    finally:
        _SUMMARIES["on"] = True


def log_outputs(written: Iterable[Path | str], next_command: str | None = None) -> None:
    """The last lines of a stage: every file or folder it wrote, then the natural next command (if any)."""
    if not _SUMMARIES["on"]:
        return
    LOG.info("wrote:")
    for path in written:
        LOG.info("  %s", path)
    if next_command:
        LOG.info("next: %s", next_command)
