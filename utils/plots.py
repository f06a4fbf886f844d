"""Plots made from the CSV files a run writes (never from inside a training loop)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (empty when the file does not exist)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_sparsity_accuracy(csv_path: Path, png_path: Path, title: str) -> None:
    """Val and test accuracy (%) against sparsity (%) from a ``prune_log.csv``; written atomically."""
    rows = sorted(read_csv(csv_path), key=lambda r: float(r["sparsity"]))
    sparsity = [100 * float(r["sparsity"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("val_acc", "o-"), ("test_acc", "s--")):
        ax.plot(sparsity, [float(r[key]) for r in rows], style, label=key.replace("_acc", ""))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png_path)
