"""Helpers shared by the benchmark scripts: timing, result files, CIFAR-shaped data."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from utils.core.provenance import PROVENANCE_KEY, cpu_model, provenance
from utils.core.timer import Timer

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Best-of-``repeats`` wall-clock seconds of ``fn()``."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        with Timer() as timer:
            fn()
            sync(device)
        best = min(best, timer.seconds)
    return best


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (f"CPU {cpu_model()} {torch.backends.cpu.get_cpu_capability()} x{torch.get_num_threads()} threads "
            f"(torch {torch.__version__})")


def cifar_like(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images [n, 3, 32, 32] and labels [n]: same shapes and cost as CIFAR-10."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen),
            torch.randint(0, 10, (n,), generator=gen))


def save_results(name: str, results: dict) -> Path:
    """Write ``results`` to benchmarks/results/{name}.json (ignored by git) and return the path."""
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    record = provenance(device, str(results.get("precision", "per row")))
    path.write_text(json.dumps({"machine": machine(), PROVENANCE_KEY: record, **results}, indent=2, default=str) + "\n")
    return path
