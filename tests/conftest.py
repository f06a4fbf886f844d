"""Shared fixtures: small CIFAR-style files written by the tests, and helpers to run stage scripts."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n N``) share the cores among the N workers: each worker, and every process it
    starts, gets ``cores // N`` threads (at least 1). Two PyTorch processes that each spin a pool over all
    cores run several times slower than one (OpenMP's idle threads spin), not twice."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with more ``slow`` tests first (otherwise in collection order): with ``--dist loadfile`` each file
    runs on one worker, and the long ones must not be left for the end while the other workers idle."""
    slow: dict[Path, int] = {}
    for item in items:
        slow[item.path] = slow.get(item.path, 0) + (item.get_closest_marker("slow") is not None)
    order = {path: i for i, path in enumerate(slow)}
    items.sort(key=lambda item: (-slow[item.path], order[item.path]))


def write_cifar(root: Path, per_batch: int = 20, bytes_keys: bool = False, seed: int = 0) -> Path:
    """Write a miniature ``cifar-10-batches-py`` under ``root`` (Python-2 style bytes keys if asked)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        entry = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(), "batch_label": name}
        if bytes_keys:
            entry = {k.encode(): v for k, v in entry.items()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return root


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    """A data dir holding a miniature CIFAR-10 (100 train, 20 test images)."""
    return write_cifar(tmp_path / "data")


def run_main(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """Call a script's ``main(argv)`` in-process; return (exit code, stdout, stderr)."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(path: Path) -> list[str]:
    """All files under ``path`` (relative), sorted; empty when it does not exist."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture(scope="session")
def real_cifar_dir(tmp_path_factory) -> Path:
    """The real CIFAR-10 (JPEG copy) built from ../shared/datasets once per session; skipped when absent."""
    import subprocess
    import sys

    script = SHARED / "datasets" / "make_cifar10.py"
    if not script.is_file():
        pytest.skip(f"real-data test needs {script} (../shared beside the checkout); not present here")
    root = tmp_path_factory.mktemp("cifar10")
    subprocess.run([sys.executable, str(script), str(root)], check=True, capture_output=True)
    return root


def save_dense_and_sparse(save: Path, amount: float, pruner: str = "lamp", seed: int = 0) -> tuple[Path, Path]:
    """Write an (untrained) resnet20 as the pretrained model of ``save`` and a copy pruned by ``amount``
    as ``{save}/resnet20/oneshot/resnet20_{amount:.4f}.pth``; returns both paths."""
    import torch

    from models import create_model
    from utils.prune.pruners import get_pruner
    from utils.runtime.checkpoint import save_checkpoint
    from utils.sparsity.masks import add_reparam

    torch.manual_seed(seed)
    model = create_model("resnet20")
    dense = save / "resnet20" / "checkpoint" / "ckpt.pth"
    save_checkpoint(dense, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    add_reparam(model)
    get_pruner(pruner).prune(model, amount)
    sparse = save / "resnet20" / "oneshot" / f"resnet20_{amount:.4f}.pth"
    save_checkpoint(sparse, model, model_name="resnet20", dataset="synthetic", num_classes=10, meta={})
    return dense, sparse


def stop_after_points(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the run stop (Ctrl-C) right after its finetunes wrote their ``n``-th resume point (one after every
    epoch here), as a killed run would; ``monkeypatch.undo()`` restores the writer and its interval."""
    import utils.runtime.resume as resume_module
    import utils.runtime.train as train_module

    monkeypatch.setattr(resume_module, "POINT_EVERY_S", 0.0)  # a point after every epoch
    real, written = train_module.write_point, []

    def write_then_stop(*args) -> None:
        real(*args)
        written.append(1)
        if len(written) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "write_point", write_then_stop)


@pytest.fixture()
def log_lines():
    """The messages the project's logger emits at INFO and above during the test (a list that grows)."""
    import logging

    from utils.core.log import LOG

    class Lines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    handler, level = Lines(), LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    yield handler.lines
    LOG.removeHandler(handler)
    LOG.setLevel(level)
