"""Plots made from the CSV files a run writes (never from inside a training loop)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.run import atomic_write, read_csv  # noqa: E402,F401  (read_csv: plots read run CSVs)


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
    _save(fig, png_path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_layer_bars(names: list[str], values: list[float], ylabel: str, path: Path,
                    hline: float | None = None) -> None:
    """One bar per layer (in model order), with an optional horizontal reference line (e.g. a threshold)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4))
    ax.bar(range(len(names)), values, color="tab:blue")
    if hline is not None:
        ax.axhline(hline, color="tab:red", linestyle="--", label=f"{hline:g}")
        ax.legend()
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_distributions(samples: dict[str, list[float]], ylabel: str, path: Path) -> None:
    """A box per layer of the given samples (e.g. log10 saliency at pruned positions)."""
    names = list(samples)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4))
    ax.boxplot([samples[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_heatmap(matrix: list[list[float]], rows: list[str], cols: list[str], label: str, path: Path) -> None:
    """A rows x cols heatmap (e.g. mean saliency per layer and class)."""
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(cols) + 3), max(4, 0.22 * len(rows))))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(cols)), cols)
    fig.colorbar(image, ax=ax, label=label)
    _save(fig, path)


def plot_scatter(x: list[float], y: list[float], labels: list[str], xlabel: str, ylabel: str, title: str,
                 path: Path) -> None:
    """A labelled scatter plot (e.g. SSIM against accuracy gain per layer)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(x, y)
    for xi, yi, text in zip(x, y, labels, strict=True):
        ax.annotate(text, (xi, yi), fontsize=6, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_reward_curve(history: list[dict], path: Path) -> None:
    """Reward per episode and its running best, from a search's history rows."""
    episodes = [r["episode"] for r in history]
    rewards = [r["reward"] for r in history]
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(episodes, rewards, "o-", ms=3, label="reward")
    ax.plot(episodes, best, "--", label="best so far")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_report(curves: dict[str, list[tuple[float, float, float]]],
                arrows: list[tuple[str, float, float, float, float, float | None]], title: str, path: Path) -> None:
    """Accuracy against sparsity for one model, data set and granularity: pruning curves with ±std bands and
    regrowth results as arrows.

    ``curves``: {label: [(sparsity in [0, 1], mean test acc %, std or 0)]}; ``arrows``: (label, start
    sparsity, start acc, final sparsity, final acc, matched pruning baseline acc or None), marked with an x.
    Sparsity is plotted as a percentage inside [0, 100].
    """
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs: list[float] = []
    for label, points in curves.items():
        points = sorted(points)
        x = [100 * p[0] for p in points]
        mean, std = [p[1] for p in points], [p[2] for p in points]
        line = ax.plot(x, mean, "o-", ms=3, label=label)[0]
        ax.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2)
        xs += x
    for label, s0, a0, s1, a1, baseline in arrows:
        ax.annotate("", xy=(100 * s1, a1), xytext=(100 * s0, a0), arrowprops={"arrowstyle": "->", "lw": 1.2})
        ax.plot([100 * s1], [a1], "^", ms=6, label=label)
        if baseline is not None:
            ax.plot([100 * s1], [baseline], "kx", ms=7)
        xs += [100 * s0, 100 * s1]
    if xs:
        low, high = min(xs), max(xs)
        pad = max(0.5, 0.05 * (high - low))
        ax.set_xlim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}\n(arrows: regrowth from its sparse start; x: pruning baseline at the same sparsity)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_boundary(sparsity: list[float], accuracy: list[float], estimates: dict[str, float | None],
                  tolerance: dict, title: str, path: Path) -> None:
    """The accuracy-vs-sparsity curve (sparsity in %, inside [0, 100]) with each boundary estimate as a
    vertical line, the dense accuracy minus the tolerance as a dashed level and the bootstrap interval of
    the tolerance boundary shaded."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [100 * s for s in sparsity]
    ax.plot(x, accuracy, "o-", ms=4, color="black", label="val accuracy")
    if "interval" in tolerance:
        lo, hi = tolerance["interval"]
        ax.axvspan(100 * lo, 100 * hi, color="tab:green", alpha=0.15,
                   label=f"tolerance boundary, {100 * tolerance['level']:.0f}% interval")
    level = tolerance["dense_accuracy"] - tolerance["tolerance_pp"]
    ax.axhline(level, ls=":", color="tab:green", label=f"dense - {tolerance['tolerance_pp']:g} pp")
    for (name, value), color in zip(estimates.items(), ("tab:blue", "tab:orange", "tab:purple", "tab:green"),
                                    strict=False):
        if value is not None:
            ax.axvline(100 * value, ls="--", color=color, label=f"{name}: {100 * value:.2f}%")
    pad = max(0.5, 0.05 * (max(x) - min(x)))
    ax.set_xlim(max(0.0, min(x) - pad), min(100.0, max(x) + pad))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{title}\n(each estimate: the last sparsity before the break)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
