"""Every run-folder path, in one place (open_lth's ``paths.py``).

Layout under ``{save_dir}/{model}/``; a granularity gives its folder tags (``FolderTags``; weight keeps the
original repository's names):

| what | weight | channel |
| --- | --- | --- |
| dense model | ``checkpoint/ckpt.pth`` | (the same) |
| pruning run | ``{mode}/{m}_{s:.4f}.pth`` | ``structured_{mode}/{m}_ch{s:.4f}.pth`` |
| one-shot regrowth search | ``regrowth_oneshot/{label}/`` | ``regrowth_structure_oneshot/{label}/`` |
| iterative regrowth | ``regrowth_iterative/iter_{i}/`` | ``regrowth_structure_iterative/iter_{i}/`` |
| random-search regrowth | ``random_regrowth_{schedule}/...`` | ``random_regrowth_structure_{schedule}/...`` |
| greedy regrowth | ``greedy_{mode}/iter_{i}/`` | ``greedy_channel_{mode}/iter_{i}/`` |
| layer analysis | ``analysis/{ckpt stem}/`` | (the same) |
| single-layer analysis | ``single_layer/{ckpt stem}/`` | (the same) |
| boundary estimates | ``boundary/{pruning folder name}/`` | (the same) |
| score caches | ``cache/`` | (the same) |

``mode`` is ``oneshot`` or ``iterative``. File names that several modules share are constants here too, and
so are the checks every stage runs on its outputs before it trains (``check_output_file``,
``check_output_dir``: right kind, writable, never an input, never replacing a result without --overwrite).
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from utils.core.distributed import is_main_process
from utils.core.errors import UsageError

PRUNE_LOG = "prune_log.csv"
SEARCH_STATE = "search_state.pt"
BEST_MODEL = "best_grown_model.pth"
BEST_PRE_FINETUNE = "best_pre_finetune.pth"
SUMMARY = "summary.json"



class FolderTags(Protocol):
    """What a granularity (class or instance, ``utils.sparsity.granularity``) names its folders and files by."""

    prune_prefix: str
    file_tag: str
    regrowth_stem: str
    greedy_stem: str


def model_root(save_dir: str | Path, model_name: str) -> Path:
    """``{save_dir}/{model_name}``: everything one model's runs write."""
    return Path(save_dir) / model_name


def pretrained_path(save_dir: str | Path, model_name: str) -> Path:
    """Where pretrain.py keeps the best dense model: ``{save_dir}/{model_name}/checkpoint/ckpt.pth``."""
    return model_root(save_dir, model_name) / "checkpoint" / "ckpt.pth"


def prune_dir(save_dir: str | Path, model_name: str, granularity: FolderTags, mode: str) -> Path:
    """Folder of a pruning run: ``{mode}`` (weights) or ``structured_{mode}`` (channels)."""
    return model_root(save_dir, model_name) / f"{granularity.prune_prefix}{mode}"


def prune_checkpoint(folder: Path, model_name: str, granularity: FolderTags, sparsity: float) -> Path:
    """``{m}_{sparsity:.4f}.pth`` (weights) or ``{m}_ch{sparsity:.4f}.pth`` (channels) in ``folder``."""
    return folder / f"{model_name}_{granularity.file_tag}{sparsity:.4f}.pth"


def regrowth_dir(save_dir: str | Path, model_name: str, granularity: FolderTags, schedule: str,
                 random_search: bool = False) -> Path:
    """Root of a regrowth search: ``regrowth[_structure]_{oneshot|iterative}`` (RL), or the same with a
    ``random_`` prefix for a random search."""
    prefix = "random_" if random_search else ""
    return model_root(save_dir, model_name) / f"{prefix}{granularity.regrowth_stem}_{schedule}"


def iteration_dir(root: Path, iteration: int) -> Path:
    """``{root}/iter_{iteration}``: one iteration of an iterative regrowth or greedy run."""
    return root / f"iter_{iteration}"


def greedy_dir(save_dir: str | Path, model_name: str, granularity: FolderTags, mode: str) -> Path:
    """Folder of a greedy regrowth run: ``greedy_{mode}`` (weights) or ``greedy_channel_{mode}`` (channels)."""
    return model_root(save_dir, model_name) / f"{granularity.greedy_stem}_{mode}"


def analysis_dir(save_dir: str | Path, model_name: str, ckpt: str | Path) -> Path:
    """Default output of analyze_layers.py for ``ckpt``."""
    return model_root(save_dir, model_name) / "analysis" / Path(ckpt).stem


def single_layer_dir(save_dir: str | Path, model_name: str, ckpt: str | Path) -> Path:
    """Default output of single_layer_regrowth_analysis.py for ``ckpt``."""
    return model_root(save_dir, model_name) / "single_layer" / Path(ckpt).stem


def boundary_dir(save_dir: str | Path, model_name: str, folder: str | Path) -> Path:
    """Default output of find_drop_point.py for the pruning run in ``folder``."""
    return model_root(save_dir, model_name) / "boundary" / Path(folder).name


def cache_dir(save_dir: str | Path, model_name: str) -> Path:
    """Content-keyed caches (saliency and channel scores)."""
    return model_root(save_dir, model_name) / "cache"


def folder_cache(save_dir: str | Path, model_name: str, folder: str | Path, kind: str, suffix: str) -> Path:
    """Cache of what a stage measured on the checkpoints in an input ``folder`` (``kind``: e.g. the
    pruning baseline), in the cache folder and named after the folder's absolute path: the input folder
    itself is never written."""
    key = zlib.crc32(str(Path(folder).resolve()).encode())
    return cache_dir(save_dir, model_name) / f"{kind}_{Path(folder).name}_{key:08x}{suffix}"


def baseline_cache(save_dir: str | Path, model_name: str, folder: str | Path) -> Path:
    """Cache of the pruning baseline read from ``folder`` (``--baseline_dir``)."""
    return folder_cache(save_dir, model_name, folder, "baseline", ".pt")


def benchmark_dir(save_dir: str | Path, model_name: str) -> Path:
    """Default output of benchmark_regrowth.py."""
    return model_root(save_dir, model_name) / "benchmark"


def exported_path(ckpt: str | Path) -> Path:
    """Default physical export of ``ckpt``: ``{stem}_exported.pth`` beside it."""
    ckpt = Path(ckpt)
    return ckpt.with_name(f"{ckpt.stem}_exported.pth")


def finetuned_path(ckpt: str | Path) -> Path:
    """Default output of finetune.py for ``ckpt``: ``{stem}_finetuned.pth`` beside it."""
    ckpt = Path(ckpt)
    return ckpt.with_name(f"{ckpt.stem}_finetuned.pth")


NAME_MAX = 255  # bytes in one file or folder name (ext4, xfs, btrfs, tmpfs)


def check_path(path: str | Path, what: str) -> Path:
    """``path`` resolved to an absolute path, or a ``UsageError`` when no file can ever live there: a name longer
    than ``NAME_MAX`` bytes, or a symlink loop on the way."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise UsageError(f"{what} {path} has a name of {len(os.fsencode(part))} bytes ({part[:24]}...); file "
                             f"systems allow {NAME_MAX}: pick a shorter name")
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: Python < 3.13's "Symlink loop from ..."
        raise UsageError(f"{what} {path} cannot be resolved (a symlink loop or an unreadable link: {exc}); fix the "
                         "links or pick another path") from None


def _existing_ancestor(path: Path) -> Path:
    """The nearest part of ``path`` (itself included) that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_writable(folder: Path, what: str) -> None:
    """A ``UsageError`` unless ``folder`` could be created and written: its nearest existing part must be a
    folder in which a file can really be made (probed, then removed; nothing else is created)."""
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise UsageError(f"{what} {folder} cannot be created: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".bridge-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {folder} is not writable ({exc.strerror or type(exc).__name__} in {base}); "
                         "pick another --save_dir / output path") from exc


LOCKS = Path(tempfile.gettempdir()) / "bridge-locks"  # one lock file per output (never inside a run folder)
_HELD: dict[str, int] = {}  # resolved path -> file descriptor of the claims this process holds (until it ends)
_LOCKED: dict[str, tuple[int, int]] = {}  # lock key (device, inode, name) -> (file descriptor, flock mode held)


def _lock_key(folder: Path, name: str = "") -> tuple[str, str]:
    """(key, label) of the lock of ``folder`` (``name`` empty) or of the file ``name`` in it: the folder's device
    and inode, not its path, so every alias (a symlink, a bind mount, ``./a//b``) meets the same lock. The folder
    is made first (an output folder a stage is about to write)."""
    folder.mkdir(parents=True, exist_ok=True)
    stat = folder.stat()
    label = (name or folder.name)[:40] or "root"
    suffix = f"-{zlib.crc32(name.encode()):08x}" if name else ""
    return f"{stat.st_dev:x}-{stat.st_ino}{suffix}", label


def _lock(key: str, label: str, mode: int, target: Path, what: str) -> None:
    """Take the flock ``mode`` (``LOCK_EX`` to write a folder or file, ``LOCK_SH`` on the folder a file is written
    into) on lock file ``key``, or raise the ``UsageError`` naming the run that holds it."""
    held = _LOCKED.get(key)
    if held is not None and (held[1] == fcntl.LOCK_EX or mode == fcntl.LOCK_SH):
        return
    path = LOCKS / f"{key}-{label}.lock"
    try:
        LOCKS.mkdir(parents=True, exist_ok=True)
        fd = held[0] if held else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:  # the lock folder is a file, the lock file a folder, TMPDIR not writable, ...
        raise UsageError(f"cannot make the lock file {path} ({exc.strerror or type(exc).__name__}): remove what is "
                         "in its way, or set TMPDIR to a writable folder") from None
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        if not held:
            os.close(fd)
        raise UsageError(f"{what} {target} is being written by another run (pid {holder}); wait for it to end, or "
                         "give this run another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _LOCKED[key] = (fd, mode)


def claim(target: Path, what: str, *, is_file: bool = False) -> None:
    """Make this process the one writer of ``target`` (a run folder, or with ``is_file`` an output file): an
    exclusive OS lock (``flock``) on a lock file named after the folder's device and inode (``_lock_key``), held
    until the process ends, so a killed run leaves no stale lock. A file's claim also holds its folder shared, so
    no run writes a file into a folder another run holds whole (finetune.py --save_path into a running pretrain's
    folder). A second process claiming the same target gets a ``UsageError`` naming the holder's pid; this process
    may claim a target again (stages run in-process, one after the other). Only rank 0 of a ``torchrun`` launch
    writes, so only it claims. Local file systems only (flock over NFS is not reliable)."""
    if not is_main_process():
        return
    resolved = str(target.resolve())
    if resolved in _HELD:
        return
    if is_file:
        folder_key, folder_label = _lock_key(target.parent)
        _lock(folder_key, folder_label, fcntl.LOCK_SH, target.parent, what)
        key, label = _lock_key(target.parent, target.name)
    else:
        key, label = _lock_key(target)
    _lock(key, label, fcntl.LOCK_EX, target, what)
    _HELD[resolved] = _LOCKED[key][0]


def check_output_file(path: str | Path, *, inputs: Sequence[str | Path] = (), overwrite: bool = False,
                      what: str = "output") -> Path:
    """``path`` as a file a stage may write: not one of its ``inputs``, not a folder, not being written by
    another run (``claim``), not an existing file unless ``overwrite``, in a writable place. Returns it as a
    ``Path``."""
    path = Path(path)
    resolved = check_path(path, what)
    if any(resolved == Path(source).resolve() for source in inputs):
        raise UsageError(f"{what} {path} is also an input of this stage; pick another path")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file path")
    check_writable(path.parent, what)
    claim(path, what, is_file=True)
    if path.exists() and not overwrite:
        raise UsageError(f"{what} {path} exists; pass --overwrite to replace it")
    return path


def check_output_dir(folder: str | Path, *, products: Sequence[str] = (), overwrite: bool = False,
                     what: str = "output folder") -> Path:
    """``folder`` as a place a stage may write ``products`` (file names inside it): not a file, not being written
    by another run (``claim``, before anything is compared), writable, and holding none of them already unless
    ``overwrite``. Returns it as a ``Path``."""
    folder = Path(folder)
    check_path(folder, what)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} is a file, not a folder")
    check_writable(folder, what)
    claim(folder, what)
    existing = [name for name in products if (folder / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{folder / existing[0]} exists (a finished earlier run); pass --overwrite to replace it")
    return folder


def clean_stale_temps(folder: Path, recursive: bool = True) -> list[Path]:
    """Remove the temp files (``.{name}.{pid}.tmp``) that a killed atomic write left in ``folder`` (and, when
    ``recursive``, any folder below it: a run folder's ``iter_*``) when their process is gone; returns what
    was removed."""
    removed = []
    found = (folder.rglob if recursive else folder.glob)(".*.tmp") if folder.is_dir() else []
    for tmp in found:
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
