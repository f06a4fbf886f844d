"""Plots made from the CSV files a run writes (never from inside a training loop)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

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
    """The pipeline's final models as a dot plot: one line per model (top to bottom in table order), labelled
    with its ``unit`` sparsity and its epochs after pruning, its val (filled circle) and test (open square)
    accuracy (%) on the x axis. ``rows``: dicts with ``model``, ``sparsity`` in [0, 1), ``val_acc``, ``test_acc``
    and optionally ``epochs``. The x axis spans the accuracies (not from 0; the label says so)."""
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.45 * len(rows)))
    y = list(range(len(rows)))[::-1]
    ax.plot([r["val_acc"] for r in rows], y, "o", color="tab:blue", label="val")
    ax.plot([r["test_acc"] for r in rows], y, "s", color="tab:orange", mfc="none", label="test")
    ax.set_yticks(y, [f"{r['model']}\n{unit} sparsity {100 * r['sparsity']:.2f}%"
                      + (f", {r['epochs']} epochs" if r.get("epochs") else "") for r in rows], fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("top-1 accuracy (%; axis not from 0)")
    ax.set_title(f"{title}\n({unit} pruning; epochs: finetune epochs after pruning)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


Curve = list[tuple[float, float, float]]  # [(sparsity in [0, 1], mean test acc %, std or 0)]
Arrow = tuple[str, float, float, float, float, float | None]  # (label, s0, acc0, s1, acc1, baseline acc or None)


@dataclass
class Panel:
    """One panel of the report figure: a title, pruning ``curves`` {label: Curve} and regrowth ``arrows``."""

    title: str
    curves: dict[str, Curve] = field(default_factory=dict)
    arrows: list[Arrow] = field(default_factory=list)


REPORT_NOTE = "arrows: regrowth from its sparse start (o); x: pruning baseline at the same sparsity"


def draw_report_panel(ax, panel: Panel) -> None:
    """Accuracy against sparsity (%, inside [0, 100]) on ``ax``: each curve with its ±std band, each regrowth
    result as an arrow from its start (o) to its result (^), its matched baseline as an x. The arrows are
    patches of the axes: clipped to them, and both ends inside the limits."""
    xs: list[float] = []
    for label, points in panel.curves.items():
        points = sorted(points)
        x = [100 * p[0] for p in points]
        mean, std = [p[1] for p in points], [p[2] for p in points]
        line = ax.plot(x, mean, "o-", ms=3, label=label)[0]
        ax.fill_between(x, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], color=line.get_color(), alpha=0.2)
        xs += x
    for label, s0, a0, s1, a1, baseline in panel.arrows:
        end = ax.plot([100 * s1], [a1], "^", ms=6, label=label)[0]
        ax.plot([100 * s0], [a0], "o", ms=4, mfc="none", color=end.get_color())
        ax.add_patch(FancyArrowPatch((100 * s0, a0), (100 * s1, a1), arrowstyle="->", mutation_scale=10, lw=1.2,
                                     color=end.get_color(), shrinkA=2, shrinkB=4))
        if baseline is not None:
            ax.plot([100 * s1], [baseline], "kx", ms=7)
        xs += [100 * s0, 100 * s1]
    if xs:
        ax.set_xlim(*sparsity_limits(xs))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(panel.title, fontsize=9)
    ax.grid(alpha=0.3)
    if panel.curves or panel.arrows:
        ax.legend(fontsize=7)


def plot_report(curves: dict[str, Curve], arrows: list[Arrow], title: str, path: Path) -> None:
    """One panel (``draw_report_panel``) of accuracy against sparsity for one model, data set and granularity:
    pruning ``curves`` {label: [(sparsity in [0, 1], mean test acc %, std or 0)]} and regrowth ``arrows``
    (label, start sparsity, start acc, final sparsity, final acc, matched pruning baseline acc or None)."""
    plot_report_panels([Panel(title, curves, arrows)], path)


def plot_report_panels(panels: list[Panel], path: Path) -> None:
    """Each panel (``draw_report_panel``) in a grid of up to two columns (an empty one saying so when there are
    none); written atomically."""
    panels = panels or [Panel("nothing to plot: no pruning curve or regrowth result")]
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 4.5 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        draw_report_panel(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"test accuracy over seeds ({REPORT_NOTE})", fontsize=9)
    _save(fig, path)


def plot_gradual_schedule(logs: dict[str, tuple[Path, Path]], target: dict[str, float], path: Path,
                          title: str) -> None:
    """Gradual pruning runs, one colour each ({label: (its finetune CSV, its schedule CSV)}): on top the planned
    sparsity (%) as a step line over the optimizer steps (in epochs: step / steps per epoch; a schedule CSV that
    is absent, from an older run, draws none), the sparsity measured at each epoch's end (o) and the
    ``target`` sparsity in [0, 1] dashed; below, the val accuracy (%) per epoch. Written atomically."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    per_epoch: set[float] = set()  # optimizer steps per epoch, for the steps axis
    for label, (log, schedule) in logs.items():
        rows = [r for r in read_csv(log) if r.get("sparsity") not in (None, "")]
        epochs = [int(r["epoch"]) for r in rows]
        line = top.plot(epochs, [100 * float(r["sparsity"]) for r in rows], "o", ms=4, label=f"{label} (epoch end)")[0]
        plan = read_csv(schedule)
        if plan:  # held at its last value to the finetune's last epoch
            x = [float(r["epoch"]) for r in plan] + [float(max(epochs, default=0))]
            y = [100 * float(r["sparsity"]) for r in plan]
            top.plot(x, [*y, y[-1]], "-", drawstyle="steps-post", color=line.get_color(),
                     label=f"{label} (plan, {len(plan) - 1} steps)")
            per_epoch |= {float(r["step"]) / float(r["epoch"]) for r in plan if float(r["epoch"]) > 0}
        if label in target:
            top.axhline(100 * target[label], ls="--", lw=0.8, color=line.get_color())
        bottom.plot(epochs, [float(r["val_acc"]) for r in rows], "o-", ms=3, color=line.get_color(), label=label)
    low, high = top.get_ylim()
    top.set_ylim(max(0.0, low), min(100.0, high))  # a sparsity stays inside [0, 100]
    if len({round(s) for s in per_epoch}) == 1:
        steps = per_epoch.pop()
        top.secondary_xaxis("top", functions=(lambda e: e * steps, lambda s: s / steps)).set_xlabel("optimizer step")
    top.set_ylabel("sparsity (%)")
    fig.suptitle(f"{title} (dashed: the target)", fontsize=9)
    bottom.set_ylabel("val accuracy (%)")
    bottom.set_xlabel("epoch")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    top.legend(fontsize=7)
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
                   label=f"tolerance boundary: {100 * tolerance['level']:.0f}% bootstrap confidence interval")
    level = tolerance["dense_accuracy"] - tolerance["tolerance_pp"]
    ax.axhline(level, ls=":", color="tab:green", label=f"dense - {tolerance['tolerance_pp']:g} pp")
    for (name, value), color in zip(estimates.items(), ("tab:blue", "tab:orange", "tab:purple", "tab:green"),
                                    strict=False):
        if value is not None:
            ax.axvline(100 * value, ls="--", color=color, label=f"{name}: sparsity {100 * value:.2f}%")
    ax.set_xlim(*sparsity_limits(x))
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{title}\n(each estimate: the last sparsity before the break)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
