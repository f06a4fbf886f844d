"""Figures in Markdown pages that are generated from kept result files, so that a page never says a number its
file does not.

A generated block in a page::

    <!-- figures: demo_table docs/results/data/demo/resnet20_weight_seed42.json -->
    ...text written by the FIGURES entry demo_table from that file...
    <!-- /figures -->

``render_page`` rewrites every block from its files (space-separated paths relative to the page's folder, each
may be a glob: its matches in sorted order); ``stale_blocks`` names the blocks whose text differs from what their
files give (the README test asserts there are none). ``python -m benchmarks.readme_figures`` runs it over the
README and docs/results.
"""
from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from utils.core.errors import UsageError
from utils.core.files import read_json
from utils.core.provenance import PROVENANCE_KEY, describe_all
from utils.core.registry import Registry
from utils.sparsity.granularity import granularity_class

BLOCK = re.compile(r"(<!-- figures: (\w+) ([^\n]*?) -->\n)(.*?)(<!-- /figures -->)", re.S)
Renderer = Callable[[list[dict]], str]  # the JSON values of the block's files -> Markdown
FIGURES: Registry[Renderer] = Registry("figure")


def _natural(path: Path) -> list:
    """Sort key: the name with its numbers compared as numbers (``seed2`` before ``seed10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _load(root: Path, sources: str) -> list[dict]:
    """The JSON objects of the block's space-separated ``sources`` (paths or globs from ``root``; a glob's files
    in sorted order)."""
    values = []
    for name in sources.split():
        paths = sorted(root.glob(name), key=_natural) if any(c in name for c in "*?[") else [root / name]
        if not paths:
            raise UsageError(f"figures: {root / name} matches no file (a page's generated block names it)")
        for path in paths:
            value = read_json(path)
            if value is None:
                raise UsageError(f"figures: {path} does not exist (a page's generated block names it)")
            values.append(value)
    return values


def render_page(text: str, root: Path) -> str:
    """``text`` with every generated block rewritten from its files."""
    return BLOCK.sub(lambda m: m.group(1) + FIGURES.get(m.group(2))(_load(root, m.group(3))) + m.group(5), text)


def stale_blocks(text: str, root: Path) -> list[str]:
    """The ``name sources`` of each block of ``text`` whose text differs from its files' rendering."""
    return [f"{m.group(2)} {m.group(3)}" for m in BLOCK.finditer(text)
            if FIGURES.get(m.group(2))(_load(root, m.group(3))) != m.group(4)]


ROW_KEYS = ("model", "sparsity", "params", "epochs", "val_acc", "test_acc")  # what a pipeline table row needs


def _rows(summary: dict) -> list[dict]:
    """The summary's rows, each checked to have ``ROW_KEYS`` (a summary from before the equal-epochs pipeline
    has no ``epochs``): a ``UsageError`` names what is missing."""
    rows = summary.get("rows")
    missing = sorted({key for row in rows or [{}] for key in ROW_KEYS if key not in row})
    if not rows or missing:
        raise UsageError(f"figures: a pipeline summary without {', '.join(missing) or 'rows'}: rerun pipeline.py "
                         "to make the file, or point the block at a newer one")
    return rows


def table_lines(summary: dict) -> list[str]:
    """The pipeline's table of one run (``pipeline_summary.json``): a header and one line per model."""
    exported = granularity_class(summary["granularity"]).exportable  # channels: params of the exported model
    counted = "all params" if exported else "weights kept"
    lines = [f"{'model':<28} {summary['granularity'] + ' sparsity':>16} {counted:>12} {'epochs':>7} {'val acc':>8} "
             f"{'test acc':>9}"]
    lines += [f"{r['model']:<28} {r['sparsity']:>16.4f} {r['params']:>12,} {r['epochs'] or '-':>7} "
              f"{r['val_acc']:>7.2f}% {r['test_acc']:>8.2f}%" for r in _rows(summary)]
    return lines


def _where(summaries: list[dict]) -> str:
    """Where the rows of ``summaries`` were made: their checkpoints' provenance (a stage reused from another
    commit or thread count shows as a second value), or the tables' own records for files without row records."""
    records = [r[PROVENANCE_KEY] for s in summaries for r in s["rows"] if isinstance(r.get(PROVENANCE_KEY), dict)]
    records = records or [s[PROVENANCE_KEY] for s in summaries if isinstance(s.get(PROVENANCE_KEY), dict)]
    return describe_all(records) if records else "provenance not recorded"


@FIGURES.register("demo_table")
def demo_table(summaries: list[dict]) -> str:
    """One pipeline run's table, as the pipeline prints it, where its rows were made, its seed and minutes."""
    (summary,) = summaries
    reused = summary.get("reused_stages") or 0
    took = f"{summary.get('seconds', 0) / 60:.0f} min" + (f", {reused} stage(s) reused from an earlier run"
                                                          if reused else "")
    return ("```\n" + "\n".join(table_lines(summary)) + "\n```\n\n"
            + f"({_where(summaries)}; seed {summary.get('seed', '?')}, {took})\n")


@FIGURES.register("demo_seeds")
def demo_seeds(summaries: list[dict]) -> str:
    """Test accuracy per row over several pipeline runs (one per seed): mean ± std, min-max, and the
    difference of each sparse row to ``pruned straight`` of the same run (paired by run, by row name)."""
    runs = [{r["model"]: r["test_acc"] for r in _rows(s)} for s in summaries]
    models = list(dict.fromkeys(model for run in runs for model in run))
    lines = [f"| model | test acc (%), mean ± std over {len(summaries)} seeds | min - max | paired vs pruned straight "
             "(pp) |", "|---|---:|---:|---:|"]
    for model in models:
        values = [run[model] for run in runs if model in run]
        pairs = [run[model] - run["pruned straight"] for run in runs if model in run and "pruned straight" in run]
        paired = "-" if model in ("dense", "pruned straight") or not pairs else mean_std(pairs, signed=True)
        lines.append(f"| {model} | {mean_std(values)} (n = {len(values)}) | {min(values):.2f} - {max(values):.2f} | "
                     f"{paired} |")
    seeds = ", ".join(str(s.get("seed", "?")) for s in summaries)
    return "\n".join(lines) + f"\n\n({_where(summaries)}; seeds {seeds})\n"


def _signed(value: float) -> str:
    """A difference to two decimals with its sign; one that rounds to zero as ``0.00``."""
    return f"{value:+.2f}" if round(value, 2) else "0.00"


def mean_std(values: list[float], signed: bool = False) -> str:
    """``mean ± std`` with two decimals (sample std, 0 for one value; ``-`` for none); ``signed``: the mean of
    differences, with its sign."""
    if not values:
        return "-"
    mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{_signed(mean) if signed else f'{mean:.2f}'} ± {std:.2f}"


def _per_seed(differences: list[float]) -> str:
    """Each seed's difference, signed, in seed order."""
    return ", ".join(_signed(d) for d in differences)


def _span(values: list[float]) -> str:
    """Whole numbers with thousands separators: ``lo-hi``, or one number when they round alike."""
    low, high = f"{min(values):,.0f}", f"{max(values):,.0f}"
    return low if low == high else f"{low}-{high}"


def _table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table: the ``header`` cells, the ``align`` row (``|---|---:|``) and one line per row."""
    return "\n".join([f"| {' | '.join(header)} |", align, *(f"| {' | '.join(row)} |" for row in rows)]) + "\n"


def _bold(text: str) -> str:
    return f"**{text}**"


# --- the matched experiment (benchmarks/bench_matched.py --results: one file per seed with its arms' rows) ---

def _matched_rank(arm: str) -> tuple[int, bool]:
    """The page's arm order: straight, gradual, the regrowth arms, no regrowth; each plain before with swaps."""
    base, _, swap = arm.partition("+")
    return {"straight": 0, "gradual": 1, "none": 3}.get(base, 2), bool(swap)


def _matched_label(arm: str, settings: dict) -> str:
    """The words for an arm name (``straight+swap20``, ``greedy/zero``, ``none``) at the run's sparsities."""
    base, _, swap = arm.partition("+")
    final, start = float(settings["final_sparsity"]), float(settings["start_sparsity"])
    if base == "straight":
        text = f"straight to {final:.0%}"
    elif base == "gradual":
        text = f"gradual to {final:.0%} during the finetune" + ("" if swap else ", no swaps")
    elif base == "none":
        text = f"{start:.0%}, no regrowth"
    else:
        text = f"prune to {start:.0%}, regrow {start - final:.0%} ({' / '.join(base.split('/'))})"
    return text + (", with swaps" if swap else "")


@FIGURES.register("matched_arms")
def matched_arms(seeds: list[dict]) -> str:
    """Per arm over the seeds' files of one run: val and test accuracy (mean ± std) and the test difference to
    ``straight`` paired by seed (mean ± std and each seed's)."""
    rows = sorted((row for kept in seeds for row in kept["rows"]), key=lambda r: r["seed"])
    straight = {r["seed"]: r["test_acc"] for r in rows if r["arm"] == "straight"}
    lines = []
    for arm in sorted(dict.fromkeys(r["arm"] for r in rows), key=_matched_rank):
        mine = [r for r in rows if r["arm"] == arm]
        diffs = [r["test_acc"] - straight[r["seed"]] for r in mine if r["seed"] in straight]
        own = arm == "straight"
        lines.append([_matched_label(arm, seeds[0]["settings"]), str(len(mine)),
                      mean_std([r["val_acc"] for r in mine]), mean_std([r["test_acc"] for r in mine]),
                      "" if own else mean_std(diffs, signed=True), "" if own else _per_seed(diffs)])
    table = _table(["arm", "seeds", "val acc (%)", "test acc (%)", "test - straight (pp)", "per seed"],
                   "|---|---:|---:|---:|---:|---|", lines)
    return table + _made_on(rows)


def _made_on(rows: list[dict], unit: str = "arm") -> str:
    """A line saying which machine and precision made each seed's rows, seeds of the same grouped (e.g. ``Made on:
    seeds 1, 2: Intel Xeon, bf16; seed 3: AMD EPYC, fp32.``); a seed whose rows (``unit``s: arms, points) ran on
    several says how many each made; empty when no row records its provenance."""
    per_seed: dict[int, dict[str, int]] = {}
    for row in rows:
        record = row.get(PROVENANCE_KEY)
        if record:
            device = record.get("device") or "cpu"
            where = f"{record.get('cpu') if device == 'cpu' else device}, {record.get('precision')}"
            made = per_seed.setdefault(row["seed"], {})
            made[where] = made.get(where, 0) + 1
    groups: dict[str, list[int]] = {}
    for seed, made in per_seed.items():
        text = "; ".join(made) if len(made) == 1 else " and ".join(
            f"{where} ({count} {unit}{'s' if count > 1 else ''})" for where, count in made.items())
        groups.setdefault(text, []).append(seed)
    if not groups:
        return ""
    return "\nMade on: " + "; ".join(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: {text}"
                                     for text, seeds in groups.items()) + ".\n"


# --- the search comparison (benchmarks/bench_search.py --results: one file per seed, unit set and arm) ---

SEARCH_ARMS = {"rl": "RL", "random": "random search", "greedy_prop": "greedy prop", "greedy_uniform": "greedy uniform"}


def _by_arm(results: list[dict], units: str) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: result}}`` of the ``units`` runs, seeds in order."""
    found: dict[str, dict[int, dict]] = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        if result["units"] == units:
            found.setdefault(result["arm"], {})[result["seed"]] = result
    return found


def _test(runs: dict[int, dict]) -> dict[int, float]:
    """Each seed's final test accuracy."""
    return {seed: run["final"]["test_acc"] for seed, run in runs.items()}


@FIGURES.register("search_arms")
def search_arms(results: list[dict]) -> str:
    """Per arm of ``SEARCH_ARMS`` over one unit set's files: episodes, the chosen allocation's val reward, the
    final val and test accuracy (mean ± std over seeds), the test difference to RL paired by seed, and the
    search seconds (range over seeds)."""
    units = {r["units"] for r in results}
    if len(units) != 1:
        raise UsageError(f"figures: search_arms takes the files of one unit set, not {sorted(units)}")
    found = _by_arm(results, units.pop())
    rl = _test(found.get("rl", {}))
    lines = []
    for arm in (a for a in SEARCH_ARMS if a in found):
        runs = list(found[arm].values())
        tests = _test(found[arm])
        diffs = [test - rl[seed] for seed, test in tests.items() if seed in rl]
        own = arm == "rl"
        lines.append([SEARCH_ARMS[arm], str(len(runs[0]["rewards"])),
                      mean_std([r["val_accs"][r["best_episode"] - 1] for r in runs]),
                      mean_std([r["final"]["val_acc"] for r in runs]), mean_std(list(tests.values())),
                      "" if own else mean_std(diffs, signed=True), "" if own else _per_seed(diffs),
                      _span([r["search_seconds"] for r in runs])])
    return _table(["arm", "episodes", "chosen allocation's val reward (%)", "final val (%)", "final test (%)",
                   "test - RL, paired (pp)", "per seed", "search seconds"], "|---|---:|---:|---:|---:|---:|---|---:|",
                  lines)


def _paired_rows(pairs: list[tuple[str, dict[int, float], dict[int, float], str]]) -> list[list[str]]:
    """Per ``(label, a, b, extra)``: mean ± std of ``a`` and of ``b`` over the seeds both have, ``b - a`` paired
    by seed (mean ± std and each seed's), and ``extra``; the row with the largest mean difference has its ``b``
    and its difference in bold."""
    rows, means = [], []
    for label, a, b, extra in pairs:
        seeds = [seed for seed in a if seed in b]
        diffs = [b[seed] - a[seed] for seed in seeds]
        rows.append([label, mean_std([a[s] for s in seeds]), mean_std([b[s] for s in seeds]),
                     mean_std(diffs, signed=True), _per_seed(diffs), extra])
        means.append(statistics.fmean(diffs) if diffs else float("-inf"))
    if rows:
        best = rows[means.index(max(means))]
        best[2], best[3] = _bold(best[2]), _bold(best[3])
    return rows


@FIGURES.register("search_units")
def search_units(results: list[dict]) -> str:
    """Per arm of ``SEARCH_ARMS`` run over both unit sets: the final test accuracy with the ``ssim`` and with
    ``all`` units, their difference paired by seed, and the search seconds over ``all`` units."""
    ssim, every = _by_arm(results, "ssim"), _by_arm(results, "all")
    pairs = [(SEARCH_ARMS[arm], _test(ssim[arm]), _test(every[arm]),
              _span([r["search_seconds"] for r in every[arm].values()]))
             for arm in SEARCH_ARMS if arm in ssim and arm in every]
    return _table(["arm", "final test, `ssim` units (%)", "final test, `all` units (%)", "all - ssim, paired (pp)",
                   "per seed", "search seconds (`all`)"], "|---|---:|---:|---:|---|---:|", _paired_rows(pairs))


def _fills(runs: dict[int, dict]) -> str:
    """How many layers each seed's allocation fills, of how many it could: ``4, 6, 7 of 4, 6, 8`` or ``17, 19 of
    22``."""
    filled = ", ".join(str(sum(1 for n in run["allocation"].values() if n)) for run in runs.values())
    sizes = [str(len(run["searched_units"])) for run in runs.values()]
    return f"{filled} of {sizes[0] if len(set(sizes)) == 1 else ', '.join(sizes)}"


@FIGURES.register("search_topk")
def search_topk(results: list[dict]) -> str:
    """Per unit set with ``greedy_topk`` runs: its final test accuracy against greedy uniform's, paired by seed,
    and the layers topk fills."""
    pairs = []
    for units in ("ssim", "all"):
        found = _by_arm(results, units)
        if "greedy_topk" in found and "greedy_uniform" in found:
            topk = found["greedy_topk"]
            pairs.append((f"`{units}`", _test(topk), _test(found["greedy_uniform"]), _fills(topk)))
    return _table(["units", "greedy topk, final test (%)", "greedy uniform (%)", "uniform - topk, paired (pp)",
                   "per seed", "layers topk fills"], "|---|---:|---:|---:|---|---|", _paired_rows(pairs))


# --- reward fidelity (benchmarks/bench_reward_fidelity.py: one file per run) ---

REWARD_NAMES = {"saliency": "summed saliency", "bn_recal": "BN recalibration (dense init)"}
CONSTANT_WHY = {"val@0": "zero init changes nothing"}  # why a reward is constant, where it is by construction
FULL_TRAIN = {"cifar10": 45_000}  # a data set's training images without --train_subset (CIFAR-10 less its val)


def _reward_name(reward: str, settings: dict) -> str:
    """The table's name of a reward; ``val@epoch`` with the steps of its epoch where the run's size is known."""
    images = settings.get("train_subset") or FULL_TRAIN.get(settings.get("dataset", ""))
    if reward == "val@epoch" and images:
        return f"val@epoch ({math.ceil(images / settings['batch_size'])} steps)"
    return REWARD_NAMES.get(reward, reward)


@FIGURES.register("fidelity_table")
def fidelity_table(runs: list[dict]) -> str:
    """One fidelity run's table: per reward its seconds, Kendall tau with the test truth (95% interval),
    Spearman rho, regret and tau with the val truth. In bold: the highest and the lowest tau where the interval
    excludes 0 (the highest with its reward's name), and a regret of 0 (the reward picked the truth's best)."""
    (run,) = runs
    taus = [r["tau"] for r in run["table"] if r["tau"] is not None]
    lines = []
    for r in run["table"]:
        name, seconds = _reward_name(r["reward"], run["settings"]), f"{r['seconds']:.1f}"
        if r["tau"] is None:
            why = CONSTANT_WHY.get(r["reward"], "ranks nothing")
            lines.append([name, seconds, f"constant ({why})", "", "", "", ""])
            continue
        low, high = r["tau_ci"]
        marked = (low > 0 or high < 0) and r["tau"] in (max(taus), min(taus))
        tau, regret = f"{r['tau']:.2f}", f"{r['regret']:.2f}"
        lines.append([_bold(name) if marked and r["tau"] == max(taus) else name, seconds,
                      _bold(tau) if marked else tau, f"[{low:.2f}, {high:.2f}]", f"{r['rho']:.2f}",
                      _bold(regret) if round(r["regret"], 2) == 0 else regret, f"{r['tau_val']:.2f}"])
    return _table(["reward", "seconds per allocation", "Kendall tau with the truth", "95% interval", "Spearman rho",
                   "regret (pp)", "tau with the val truth"], "|---|---:|---:|---|---:|---:|---:|", lines)


# --- single-file measurements ---

@FIGURES.register("episode_cost")
def episode_cost(runs: list[dict]) -> str:
    """A whole-epoch episode against a step-budgeted one (benchmarks/bench_episode_cost.py): steps, val images,
    seconds and episodes per minute."""
    (run,) = runs
    episodes = [("1 epoch (today's default fidelity of the demo; the method's is 50 epochs)", run["epoch_steps"],
                 run["val_images"], run["epoch_episode_s"]),
                (f"`--episode_steps {run['steps']} --episode_val_subset {run['val_subset']}`", run["steps"],
                 run["val_subset"], run["cheap_episode_s"])]
    rows = [[name, str(steps), f"{images:,}", f"{s:.1f}", f"{60 / s:.2f}"] for name, steps, images, s in episodes]
    return _table(["episode", "optimizer steps", "val images", "seconds", "episodes / min"],
                  "|---|---:|---:|---:|---:|", rows)


@FIGURES.register("fisher_table")
def fisher_table(runs: list[dict]) -> str:
    """The batch-level against the empirical Fisher (benchmarks/bench_fisher.py): top-K overlap, rank
    correlations and seconds."""
    (run,) = runs
    batch, sample = run["seconds"]["batch"], run["seconds"]["per_sample"]
    measures = [("overlap of the two top-K sets (the weights each would regrow)", f"{run['top_k_overlap']:.1%}"),
                ("Kendall tau of the two scores over the union of the top-K sets",
                 f"{run['kendall_tau_top_k_union']:.2f}"),
                ("Kendall tau over every pruned position", f"{run['kendall_tau_all_pruned']:.2f}"),
                ("Spearman rho over every pruned position", f"{run['spearman_all_pruned']:.2f}"),
                ("seconds, batch-level / empirical", f"{batch:.0f} / {sample:.0f} ({sample / batch:.1f}x)")]
    return _table(["measure", "value"], "|---|---:|", [list(m) for m in measures])


# --- dense models (benchmarks/reference_dense.py records; the recipe runs' records) ---

@FIGURES.register("dense_reference")
def dense_reference(records: list[dict]) -> str:
    """Per reference dense model: best epoch, val and test as recorded, test as evaluate.py measures it in bf16
    and fp32, and training minutes."""
    lines = [[str(r["seed"]), str(r["best_epoch"]), f"{r['recorded']['val_acc']:.2f}",
              _bold(f"{r['recorded']['test_acc']:.2f}"),
              f"{r['evaluate']['bf16']['test_acc']:.2f} / {r['evaluate']['fp32']['test_acc']:.2f}",
              f"{r['train_minutes']:.0f}"] for r in sorted(records, key=lambda r: r["seed"])]
    return _table(["seed", "best epoch", "val (%)", "test (%)", "evaluate.py bf16 / fp32 test (%)",
                   "minutes (inflated)"], "|---:|---:|---:|---:|---:|---:|", lines)


def _flag(command: str, name: str) -> str | None:
    """The value after ``name`` in a command line; ``None`` where it is absent."""
    words = command.split()
    return words[words.index(name) + 1] if name in words[:-1] else None


def _recipe(command: str) -> str:
    """A training recipe in words, from its pretrain.py command line."""
    schedule, lr = _flag(command, "--lr_schedule") or "cosine", _flag(command, "--lr")
    if schedule == "onecycle":
        warmup = float(_flag(command, "--warmup_epochs") or 0)
        text = f"one-cycle lr {lr} ({warmup:g} warm-up epoch{'' if warmup == 1 else 's'}, linear to 0)"
    else:
        text = f"{schedule} lr {lr}"
    smoothing = float(_flag(command, "--label_smoothing") or 0)
    return (text + (", Nesterov" if "--nesterov" in command.split() else "")
            + (f", label smoothing {smoothing:g}" if smoothing else ", no label smoothing"))


@FIGURES.register("dense_recipes")
def dense_recipes(runs: list[dict]) -> str:
    """Per recipe run (in the block's order): the recipe (``same`` as the row above), seed, best epoch, val and
    test accuracy and minutes; a stopped run: the epoch it stopped after and its last val accuracy."""
    lines, previous = [], None
    for run in runs:
        recipe = _recipe(run["command"])
        name, previous = "same" if recipe == previous else recipe, recipe
        if run.get("finished", True):
            lines.append([name, str(run["seed"]), str(run["best_epoch"]), f"{run['best_val_acc']:.2f}",
                          f"{run['test_acc']:.2f}", f"{run['train_minutes']:.1f}"])
        else:
            lines.append([name, str(run["seed"]), f"stopped after epoch {run['epochs_done']} (val "
                          f"{run['val_acc_per_epoch'][-1]:.2f})", "-", "-", "-"])
    return _table(["recipe", "seed", "best epoch", "val (%)", "test (%)", "minutes (1 thread, beside another run)"],
                  "|---|---:|---:|---:|---:|---:|", lines)


# --- Setting B (benchmarks/bench_setting_b.py --results: one file per seed and target) ---

def setting_b_table(points: list[dict]) -> str:
    """Markdown: per target, n seeds, mean sparsity, val and test mean ± std, and the seeds' test values."""
    lines = ["| target | n | sparsity | val acc (%) | test acc (%) | test per seed |", "|---:|---:|---:|---:|---:|---|"]
    for target in sorted({p["target"] for p in points}):
        mine = sorted((p for p in points if p["target"] == target), key=lambda p: p["seed"])
        seeds = ", ".join(f"{p['seed']}: {p['test_acc']:.2f}" for p in mine)
        sparsity = statistics.fmean(p["sparsity"] for p in mine)
        val, test = mean_std([p["val_acc"] for p in mine]), mean_std([p["test_acc"] for p in mine])
        lines.append(f"| {100 * target:.1f}% | {len(mine)} | {sparsity:.4f} | {val} | {test} | {seeds} |")
    return "\n".join(lines)


@FIGURES.register("setting_b")
def setting_b(files: list[dict]) -> str:
    """The Setting B table of the kept points (each file: ``{"settings", "point"}``)."""
    points = [kept["point"] for kept in files]
    return setting_b_table(points) + "\n" + _made_on(points, unit="point")
