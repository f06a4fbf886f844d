"""Does low SSIM predict where regrowth helps? Give the whole budget to one layer at a time and see.

For each prunable layer in turn (or --layers): regrow ``K = (s_start - s_target) * N_tot`` weights (capped
by the layer's capacity) at the pruned positions --selection ranks first (saliency by default; reference,
magnitude, random), initialised by --init_strategy (default zero; dense with --selection reference),
finetune --finetune_epochs with AdamW (best epoch on val), and record the val accuracy gain over a
control run that gets the same finetune with no regrowth. Then Pearson and Spearman correlation (with
p-values) between the layers' SSIM and their gains: a negative r means damaged layers gain most.

Example:
    python single_layer_regrowth_analysis.py --m_name resnet20 --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth \\
        --target_sparsity 0.98 --finetune_epochs 5

Writes to --out (default {save_dir}/{m_name}/single_layer/{ckpt stem}/):
    single_layer.csv   layer, ssim, capacity, regrown, val_immediate, val_after, gain
    correlation.json   K, control accuracy, Pearson and Spearman r and p
    ssim_vs_gain.png   scatter of SSIM against gain
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from scipy import stats

from utils.cli.flags import (
    add_checkpoint_args,
    add_common_args,
    add_finetune_args,
    add_run_flags,
    add_scoring_args,
    add_selection_args,
    add_speed_args,
    cli_main,
    default_init,
    finetune_settings,
    new_parser,
    scoring_settings,
    selection_settings,
)
from utils.cli.prepare import prepare_dense_sparse
from utils.cli.types import fraction
from utils.core.errors import UsageError
from utils.core.files import write_csv
from utils.core.log import LOG, log_outputs, setup_logging
from utils.core.paths import check_output_dir, single_layer_dir
from utils.core.seeds import make_generator
from utils.regrow.apply import Finetuning, Regrowth, apply_allocation
from utils.results.plots import plot_scatter
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.stage import Stage
from utils.scoring.layer_scores import ssim_scores
from utils.scoring.selection import init_source, load_reference, selection_scores
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.granularity import Granularity
from utils.sparsity.grow import INIT_STRATEGIES

FIELDS = ["layer", "ssim", "capacity", "regrown", "val_immediate", "val_after", "gain"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_checkpoint_args(parser)
    parser.add_argument("--ckpt", required=True, help="sparse starting checkpoint (with masks)")
    parser.add_argument("--target_sparsity", type=fraction, default=None,
                        help="sparsity after regrowth; sets K (default: 1%% of the weights below the start)")
    parser.add_argument("--layers", nargs="+", default=None, help="only these layers (default: all)")
    parser.add_argument("--init_strategy", default=None, choices=list(INIT_STRATEGIES),
                        help="value of regrown weights (default zero; dense, i.e. the reference's, with --selection "
                             "reference)")
    add_selection_args(parser)
    add_finetune_args(parser, 5, "finetune epochs after each single-layer regrowth (and for the control)")
    parser.add_argument("--out", default=None, help="output folder")
    add_run_flags(parser, {"overwrite": "replace the results of an earlier analysis"})
    return parser.parse_args(argv)


def budget(gran: Granularity, model, target: float | None) -> int:
    """K = (s_start - s_target) * N_tot units; default target = start - 0.01."""
    start = gran.sparsity(model)
    target = start - 0.01 if target is None else target
    if target >= start:
        raise UsageError(f"--target_sparsity {target} is not below the checkpoint's sparsity {start:.4f}")
    return regrowth_budget(gran.total(model), start - max(target, 0.0), sum(gran.capacity(model).values()))


def analysis_finetune(stage: Stage, settings: FinetuneSettings) -> Finetuning:
    """The finetune after each single-layer regrowth and of the control run: ``settings`` without early stop
    (patience 0), best epoch on val, data in the stage's training order."""
    return Finetuning(replace(settings, patience=0), stage.data.train, stage.data.val,
                      LoopSettings(progress=stage.run.progress, **stage.speed))


def correlation(ssim: list[float], gain: list[float]) -> dict:
    """Pearson and Spearman r with two-sided p-values (NaN when fewer than 3 points or a constant input)."""
    if len(ssim) < 3 or len(set(ssim)) < 2 or len(set(gain)) < 2:
        return {"pearson_r": math.nan, "pearson_p": math.nan, "spearman_r": math.nan, "spearman_p": math.nan}
    pearson, spearman = stats.pearsonr(ssim, gain), stats.spearmanr(ssim, gain)
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_r": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.init_strategy = default_init(args, "zero")
    stage, pair = prepare_dense_sparse(args, args.ckpt, reparam=True)
    dense, sparse, gran = pair.dense, pair.sparse, stage.granularity
    selection = selection_settings(args, "zero")
    reference = load_reference(stage, pair, selection)
    k = budget(gran, sparse, args.target_sparsity)
    unknown = sorted(set(args.layers or []) - set(gran.units()))
    if unknown:
        raise UsageError(f"unknown layer(s) {', '.join(unknown)}; see analyze_layers.py for the names")
    out = check_output_dir(args.out or single_layer_dir(args.save_dir, stage.model_name, args.ckpt),
                           products=["single_layer.csv", "correlation.json"], overwrite=args.overwrite, what="--out")
    setup_logging(out)
    scoring = scoring_settings(args)
    ssim = ssim_scores(stage, scoring, dense, sparse)
    selected = selection_scores(stage, pair, reference, selection, scoring)
    source = init_source(pair, reference)
    caps = gran.capacity(sparse)
    layers = [n for n in (args.layers or caps) if caps[n] > 0 and not math.isnan(ssim[n])]
    tuning = analysis_finetune(stage, finetune_settings(args))
    control = apply_allocation(gran, sparse, None, tuning).fit.best_val_acc  # a copy, finetuned, nothing regrown
    LOG.info("K = %d units; control (no regrowth) val %.2f%%; %d layers", k, control, len(layers))
    rows, generator = [], make_generator(args.seed, "regrowth_init", stage.device)
    for name in layers:
        applied = apply_allocation(gran, sparse, Regrowth({name: k}, selected, args.init_strategy, source, generator),
                                   tuning, immediate=stage.data.val)
        regrown, immediate, after = applied.regrown, applied.immediate_acc, applied.fit.best_val_acc
        rows.append({"layer": name, "ssim": ssim[name], "capacity": caps[name], "regrown": regrown,
                     "val_immediate": immediate, "val_after": after, "gain": after - control})
        LOG.info("%-24s ssim %7.4f  regrew %6d  val %.2f%% -> %.2f%%  gain %+.2f", name, ssim[name], regrown,
                 immediate, after, after - control)
    write_csv(out / "single_layer.csv", rows, FIELDS)
    corr = correlation([r["ssim"] for r in rows], [r["gain"] for r in rows])
    stage.write_summary(out / "correlation.json", {"K": k, "control_val_acc": control, "layers": len(rows), **corr})
    plot_scatter([r["ssim"] for r in rows], [r["gain"] for r in rows], [r["layer"] for r in rows],
                 "SSIM of the layer, dense vs sparse", "val accuracy gain over control (pp)",
                 f"{Path(args.ckpt).name}: all K = {k:,} regrown into one layer at a time\n"
                 f"Pearson r {corr['pearson_r']:.2f}, Spearman r {corr['spearman_r']:.2f}", out / "ssim_vs_gain.png")
    LOG.info("Pearson r %.3f (p %.3g), Spearman r %.3f (p %.3g)", corr["pearson_r"], corr["pearson_p"],
             corr["spearman_r"], corr["spearman_p"])
    log_outputs([out / "single_layer.csv", out / "correlation.json", out / "ssim_vs_gain.png"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
