"""Per-unit analysis of a sparse model against its dense parent: SSIM, density, capacity, saliency.

A unit is a prunable layer for a weight-pruned checkpoint, and a coupled channel group (named by its root
layer; SSIM on that layer's output, saliency summed over the group's slices) for a channel-pruned one.

Example:
    python analyze_layers.py --m_name resnet20 --pretrained runs/resnet20/checkpoint/ckpt.pth \\
        --ckpt runs/resnet20/oneshot/resnet20_0.9900.pth

Prints one row per prunable layer and writes to --out (default {save_dir}/{m_name}/analysis/{ckpt stem}/):
    layers.csv        layer, shape, density, capacity, ssim, saliency_mean, saliency_max, selected
                      (saliency over the unit's pruned entries; selected = searched by regrowth)
    ssim.png          SSIM per layer with the --ssim_threshold line
    density.png       kept fraction per layer
    saliency.png      distribution of log10 saliency at pruned positions per layer
    saliency_per_class.png   with --per_class (weight-pruned checkpoints): mean saliency at pruned positions
                             per layer and class
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from utils.cli.commands import commands
from utils.cli.flags import (
    add_checkpoint_args,
    add_common_args,
    add_run_flags,
    add_scoring_args,
    cli_main,
    new_parser,
    scoring_settings,
)
from utils.cli.prepare import prepare_dense_sparse
from utils.core.errors import UsageError
from utils.core.files import write_csv
from utils.core.log import LOG, log_outputs
from utils.core.paths import analysis_dir, check_output_dir
from utils.core.seeds import make_generator
from utils.results.plots import plot_distributions, plot_heatmap, plot_layer_bars
from utils.runtime.stage import Stage
from utils.scoring.layer_scores import saliency_scores, ssim_scores
from utils.scoring.saliency import per_class_saliency
from utils.scoring.ssim import select_layers
from utils.sparsity.granularity import Granularity
from utils.sparsity.masks import keep_mask, prunable_modules

FILES = ["layers.csv", "ssim.png", "density.png", "saliency.png"]  # what a finished analysis wrote
FIELDS = ["layer", "shape", "density", "capacity", "ssim", "saliency_mean", "saliency_max", "selected"]
SAMPLES_PER_LAYER = 4000  # saliency values drawn per layer for the distribution plot


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_scoring_args(parser)
    add_checkpoint_args(parser)
    parser.add_argument("--ckpt", required=True, help="sparse checkpoint (with masks)")
    parser.add_argument("--out", default=None, help="output folder")
    add_run_flags(parser, {"overwrite": "replace the results of an earlier analysis"})
    parser.add_argument("--per_class", action="store_true", help="also plot saliency per class")
    return parser.parse_args(argv)


def layer_rows(gran: Granularity, sparse: torch.nn.Module, ssim: dict[str, float],
               saliency: dict[str, torch.Tensor], selected: list[str]) -> list[dict]:
    """One dict per unit with the FIELDS columns."""
    rows = []
    for name, kept in gran.masks(sparse).items():
        pruned_scores = saliency[name][~kept]
        rows.append({"layer": name, "shape": "x".join(map(str, kept.shape)),
                     "density": float(kept.float().mean()), "capacity": int((~kept).sum()),
                     "ssim": ssim[name], "selected": name in selected,
                     "saliency_mean": float(pruned_scores.mean()) if len(pruned_scores) else 0.0,
                     "saliency_max": float(pruned_scores.max()) if len(pruned_scores) else 0.0})
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'layer':<26} {'shape':<16} {'density':>8} {'capacity':>10} {'ssim':>8} {'sel':>4} "
          f"{'sal_mean':>10} {'sal_max':>10}")
    for r in rows:
        ssim = "nan" if math.isnan(r["ssim"]) else f"{r['ssim']:.4f}"
        print(f"{r['layer']:<26} {r['shape']:<16} {r['density']:>8.4f} {r['capacity']:>10,} {ssim:>8} "
              f"{'*' if r['selected'] else '':>4} {r['saliency_mean']:>10.3e} {r['saliency_max']:>10.3e}")


def saliency_samples(gran: Granularity, sparse: torch.nn.Module, saliency: dict[str, torch.Tensor],
                     seed: int) -> dict[str, list[float]]:
    """Up to SAMPLES_PER_LAYER log10 saliency values at pruned entries of each unit (for plotting)."""
    gen = make_generator(seed, "plot_samples")
    samples = {}
    for name, kept in gran.masks(sparse).items():
        values = saliency[name][~kept].flatten().cpu()
        if len(values):
            pick = torch.randperm(len(values), generator=gen)[:SAMPLES_PER_LAYER]
            samples[name] = values[pick].clamp_min(1e-30).log10().tolist()
    return samples


def plot_per_class(stage: Stage, model: torch.nn.Module, sparse: torch.nn.Module, path: Path,
                   num_batches: int | None, title: str) -> None:
    """Mean per-class saliency over each layer's pruned positions (on ``num_batches`` train batches; None: all),
    as a layer x class heatmap titled ``title: ...``."""
    per_class = per_class_saliency(model, stage.data.train, stage.data.info.num_classes, num_batches=num_batches)
    masks = {n: keep_mask(m) for n, m in prunable_modules(sparse).items()}
    matrix = [per_class[n][:, ~masks[n]].mean(1).tolist() if (~masks[n]).any() else [0.0] * len(per_class[n])
              for n in masks]
    plot_heatmap(matrix, list(masks), [str(c) for c in range(stage.data.info.num_classes)],
                 "mean saliency (pruned positions)", path,
                 f"{title}: saliency per layer and class ({stage.dataset})",
                 xlabel="class index")


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage, pair = prepare_dense_sparse(args, args.ckpt, granularity=None)
    dense, sparse, gran = pair.dense, pair.sparse, stage.granularity
    if args.per_class and not gran.per_class_scores:
        raise UsageError("--per_class is for weight-pruned checkpoints (per-class saliency per weight)")
    out = check_output_dir(args.out or analysis_dir(args.save_dir, stage.model_name, args.ckpt),
                           products=FILES, overwrite=args.overwrite, what="--out")
    scoring = scoring_settings(args)
    ssim = ssim_scores(stage, scoring, dense, sparse)
    saliency = saliency_scores(stage, scoring, pair)
    rows = layer_rows(gran, sparse, ssim, saliency, select_layers(ssim, args.ssim_threshold))
    print_table(rows)
    print(f"(sel *: searched by regrowth, SSIM <= --ssim_threshold {args.ssim_threshold:g}, or the lowest one; "
          f"sal_mean / sal_max: {args.regrowth_score} saliency over the unit's pruned entries)")
    write_csv(out / "layers.csv", rows, FIELDS)
    names, source = [r["layer"] for r in rows], Path(args.ckpt).name
    plot_layer_bars(names, [r["ssim"] for r in rows], "SSIM, dense vs sparse (1 = unchanged)", out / "ssim.png",
                    f"{source}: SSIM of each {gran.name} unit's feature maps", hline=args.ssim_threshold,
                    hline_label=f"--ssim_threshold {args.ssim_threshold:g} (searched at or below)")
    plot_layer_bars(names, [r["density"] for r in rows], "density (kept fraction)", out / "density.png",
                    f"{source}: kept fraction per unit")
    plot_distributions(saliency_samples(gran, sparse, saliency, args.seed), "log10 saliency (pruned positions)",
                       out / "saliency.png", f"{source}: saliency at pruned positions ({args.saliency_model} model)")
    written = [out / name for name in FILES]
    if args.per_class:
        reference = dense if args.saliency_model == "dense" else sparse
        LOG.info("per-class saliency: one pass per class over the train batches ...")
        plot_per_class(stage, reference, sparse, out / "saliency_per_class.png", args.saliency_batches,
                       Path(args.ckpt).name)
        written.append(out / "saliency_per_class.png")
    dense = f" --pretrained {args.pretrained}" if args.pretrained else ""
    search = commands(gran).search_script
    log_outputs(written, f"python {search} --m_name {stage.model_name} --save_dir {args.save_dir}{dense} "
                         f"--initial_ckpt {args.ckpt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
