"""Where a result came from: the record every summary, result JSON and checkpoint carries under ``provenance``.

Digits of a training run change with the code, the torch build, the CPU's kernels (``capability``: AVX2,
AVX512, ...), the thread count, the precision and the data, so each written result names all of them::

    {"commit": "2242d0b1c3f4", "dirty": false, "torch": "2.14.1", "device": "cpu",
     "cpu": "Intel(R) Xeon(R) ...", "capability": "AVX512", "threads": 1, "precision": "bf16",
     "data": {"name": "cifar10", "train": 45000, "val": 5000, "test": 10000, "fingerprint": "9c1e..."},
     "command": "python pretrain.py --m_name resnet20 ..."}

``data`` is absent where no images were read; ``commit`` is None outside a git checkout (``dirty`` then None).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import platform
import shlex
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from utils.core.files import git_revision

PROVENANCE_KEY = "provenance"
FIELDS = ("commit", "dirty", "torch", "device", "cpu", "capability", "threads", "precision", "command")


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s first ``model name``; else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_name(device: torch.device) -> str:
    """``cpu`` or ``cuda:N <GPU name>``."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device.type


_COMMANDS: list[str] = []  # the stage commands running in this process, innermost last (pipeline.py runs stages)


def script_command(globals_: dict[str, Any], argv: Sequence[str] | None) -> str:
    """The shell command that runs the script or module whose globals are ``globals_`` with ``argv`` (None: this
    process's arguments): ``python pretrain.py --flag value`` or ``python -m benchmarks.bench_matched ...``."""
    spec = globals_.get("__spec__")
    args = list(sys.argv[1:] if argv is None else argv)
    if spec is not None and "." in spec.name:
        return shlex.join(["python", "-m", spec.name, *args])
    return shlex.join(["python", Path(globals_.get("__file__") or sys.argv[0]).name, *args])


@contextlib.contextmanager
def running(command: str) -> Iterator[None]:
    """Within the block, ``command_line()`` is ``command`` (``cli_main`` wraps every script's main with it)."""
    _COMMANDS.append(command)
    try:
        yield
    finally:
        _COMMANDS.pop()


def command_line() -> str:
    """The stage command running now (the innermost ``running`` block), else the command that started this
    process (``python -m package.module ...`` for a module)."""
    main = sys.modules.get("__main__")
    return _COMMANDS[-1] if _COMMANDS else script_command(vars(main) if main else {}, None)


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex digits) of the tensors' bytes in order: the same images and labels give the same
    fingerprint whatever file format they were read from, and a re-encoded copy (e.g. JPEG) another one.
    About 0.3 s for CIFAR-10's 184 MB."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # its buffer, no copy
    return digest.hexdigest()[:16]


def _dirty(revision: str | None) -> bool | None:
    """Whether the tree differed from the commit: True / False as git said, None where unknown (no checkout, or no
    git binary, when the commit was read from ``.git/HEAD`` without a dirty flag)."""
    if revision is None:
        return None
    return True if revision.endswith("+dirty") else (False if shutil.which("git") else None)


def provenance(device: torch.device, precision: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of this process (see the module docstring). ``precision``: ``bf16`` or ``fp32`` (what the
    stage trains and evaluates in); ``data``: the data set's ``{name, train, val, test, fingerprint}``."""
    revision = git_revision()
    record: dict[str, Any] = {
        "commit": revision.removesuffix("+dirty") if revision else None,
        "dirty": _dirty(revision),
        "torch": torch.__version__,
        "device": device_name(device),
        "cpu": cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "command": command_line(),
    }
    if data is not None:
        record["data"] = dict(data)
    return record


def field_text(record: dict[str, Any], name: str) -> str:
    """One field of a provenance ``record`` as text: ``commit`` (with ``(dirty)``), ``device`` (``cpu <model>
    <capability>`` or the GPU), ``threads``, ``torch``, ``precision`` or ``data`` (name, split sizes, fingerprint);
    ``?`` where absent."""
    def get(key: str) -> Any:
        return record.get(key) if record.get(key) not in (None, "") else "?"

    if name == "commit":
        return f"{get('commit')}{' (dirty)' if record.get('dirty') is True else ''}"
    if name == "device":
        device = str(get("device"))
        return f"cpu {get('cpu')} {record.get('capability') or ''}".rstrip() if device == "cpu" else device
    if name == "data":
        data = record.get("data")
        if not isinstance(data, dict):
            return "?"
        return (f"{data.get('name', '?')} {data.get('train', '?')}/{data.get('val', '?')}/{data.get('test', '?')} "
                f"images (train/val/test), fingerprint {data.get('fingerprint', '?')}")
    return str(get(name))


DESCRIBED = ("commit", "torch", "device", "threads", "precision", "data")  # what one line of ``describe`` gives


def describe(record: dict[str, Any] | None) -> str:
    """One line for logs, pages and reports: ``commit 2242d0b1c3f4 (dirty); torch 2.14.1; device cpu <model>
    AVX512; threads 1; precision bf16; data cifar10 45000/5000/10000 images (train/val/test), fingerprint ...``;
    ``provenance not recorded`` for files written before the record existed."""
    if not isinstance(record, dict):
        return "provenance not recorded"
    return "; ".join(f"{name} {field_text(record, name)}" for name in DESCRIBED if name != "data" or "data" in record)


def describe_all(records: list[dict[str, Any]]) -> str:
    """``describe`` over several records: each field once, its different values joined by `` / `` (e.g.
    ``threads 2 / 1`` for runs at two thread counts)."""
    fields = {name: list(dict.fromkeys(field_text(r, name) for r in records)) for name in DESCRIBED}
    return "; ".join(f"{name} {' / '.join(values)}" for name, values in fields.items())

