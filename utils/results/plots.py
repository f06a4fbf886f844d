"""Plots made from the CSV files a run writes (never from inside a training loop)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from utils.core.files import atomic_write, read_csv  # noqa: E402,F401  (read_csv: plots read run CSVs)


def sparsity_limits(xs: list[float]) -> tuple[float, float]:
    """x limits (%) around sparsities ``xs`` (%): padded by 5% of their span (at least 0.5 points), never
    outside [0, 100], so a single point does not draw sparsities above 100%."""
    low, high = min(xs), max(xs)
    pad = max(0.5, 0.05 * (high - low))
    return max(0.0, low - pad), min(100.0, high + pad)


def spans_decades(values: list[float], ratio: float = 100.0) -> bool:
    """Whether positive ``values`` span at least ``ratio`` (two decades by default): then a log scale."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) / min(positive) >= ratio


def plot_sparsity_accuracy(csv_path: Path, png_path: Path, title: str) -> None:
    """Val and test accuracy (%) against sparsity (%) from a ``prune_log.csv``; written atomically."""
    rows = sorted(read_csv(csv_path), key=lambda r: float(r["sparsity"]))
    sparsity = [100 * float(r["sparsity"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("val_acc", "o-"), ("test_acc", "s--")):
        ax.plot(sparsity, [float(r[key]) for r in rows], style, label=key.replace("_acc", ""))
    ax.set_xlim(*sparsity_limits(sparsity))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, png_path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_layer_bars(names: list[str], values: list[float], ylabel: str, path: Path, title: str,
                    hline: float | None = None, hline_label: str | None = None,
                    xlabel: str = "layer (model order)") -> None:
    """One bar per layer (or item), with an optional labelled horizontal reference line (e.g. a threshold);
    a log y scale when the values span two decades."""
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4.5))
    ax.bar(range(len(names)), values, color="tab:blue")
    if hline is not None:
        ax.axhline(hline, color="tab:red", linestyle="--", label=hline_label or f"{hline:g}")
        ax.legend()
    if spans_decades(values):
        ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_distributions(samples: dict[str, list[float]], ylabel: str, path: Path, title: str) -> None:
    """A box per layer of the given samples (e.g. log10 saliency at pruned positions)."""
    names = list(samples)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 4.5))
    ax.boxplot([samples[n] for n in names], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=7)
    ax.set_xlabel("layer (model order)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_heatmap(matrix: list[list[float]], rows: list[str], cols: list[str], label: str, path: Path, title: str,
                 xlabel: str = "class", ylabel: str = "layer (model order)") -> None:
    """A rows x cols heatmap (e.g. mean saliency per layer and class); a log colour scale when the positive
    values span two decades (zeros are drawn as the smallest colour)."""
    flat = [v for row in matrix for v in row]
    positive = [v for v in flat if v > 0]
    norm = None
    if positive and spans_decades(positive):
        norm = LogNorm(vmin=min(positive), vmax=max(positive))
        matrix = [[max(v, min(positive)) for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(cols) + 3), max(4, 0.22 * len(rows))))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", norm=norm)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=label + (" (log scale)" if norm is not None else ""))
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
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def plot_reward_curve(history: list[dict], path: Path, title: str) -> None:
    """Reward per episode and its running best in percentage points (``reward`` rows are fractions), from a
    search's history rows, with whole-number episode ticks."""
    episodes = [r["episode"] for r in history]
    rewards = [100 * r["reward"] for r in history]  # pp, as the episode log line shows it
    best = [max(rewards[: i + 1]) for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(episodes, rewards, "o-", ms=3, label="reward")
    ax.plot(episodes, best, "--", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("episode")
    ax.set_ylabel("reward (pp: val accuracy gain + budget bonus)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_results(rows: list[dict], unit: str, title: str, path: Path) -> None:
    """The pipeline's final models: val and test accuracy (%) against the kept fraction of ``unit``s (weights
    or channels), on a log axis that runs from dense (left) to sparsest (right), each model's own kept fraction
    labelled on the axis and models at the same x spread apart a little. ``rows``: dicts with ``model``,
    ``sparsity`` in [0, 1), ``val_acc`` and ``test_acc`` in %. The y axis spans the models' accuracies (it does
    not start at 0; the label says so)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kept = [100 * (1 - r["sparsity"]) for r in rows]
    seen: dict[str, int] = {}
    for r, x, color in zip(rows, kept, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False):
        nth = seen.get(f"{x:.3g}", 0)  # the n-th model at this kept fraction: nudged right by 4% per model
        seen[f"{x:.3g}"] = nth + 1
        at = x * 0.96 ** nth
        ax.plot([at], [r["val_acc"]], "o", color=color, label=f"{r['model']} (val)")
        ax.plot([at], [r["test_acc"]], "s", color=color, mfc="none", label=f"{r['model']} (test)")
    ax.set_xscale("log")
    ax.set_xlim(max(kept) * 1.5, min(kept) / 1.5)  # inverted: sparser to the right
    ax.set_xticks(sorted(set(kept)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}%"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel(f"kept {unit}s (% of all, log scale; sparsity = 100% - kept)")
    ax.set_ylabel("top-1 accuracy (%; axis not from 0)")
    ax.set_title(f"{title}\n({unit} pruning)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
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
        ax.set_xlim(*sparsity_limits(xs))
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
    lo, hi = tolerance.get("interval", (0.0, 0.0))
    if tolerance["boundary"] is not None and hi > lo:  # no band for a boundary that does not exist
        ax.axvspan(100 * lo, 100 * hi, color="tab:green", alpha=0.15,
                   label=f"tolerance boundary, {100 * tolerance['level']:.0f}% interval")
    level = tolerance["dense_accuracy"] - tolerance["tolerance_pp"]
    ax.axhline(level, ls=":", color="tab:green", label=f"dense - {tolerance['tolerance_pp']:g} pp")
    for (name, value), color in zip(estimates.items(), ("tab:blue", "tab:orange", "tab:purple", "tab:green"),
                                    strict=False):
        if value is not None:
            ax.axvline(100 * value, ls="--", color=color, label=f"{name}: {100 * value:.2f}%")
    ax.set_xlim(*sparsity_limits(x))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{title}\n(each estimate: the last sparsity before the break)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
