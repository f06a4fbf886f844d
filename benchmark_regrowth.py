"""Where the time of one regrowth episode goes, and how fast the vectorised regrowth is, for weights or
(--granularity channel) channels.

Part 1 times the stages of one episode on the chosen model and data: SSIM preprocessing, saliency
preprocessing, allocation sampling, selection, mask update + init, one mini-finetune epoch, evaluation.
Part 2, weights: regrows K = 1% of vgg16's weights at 99% sparsity (147,155 weights) with
``apply_regrowth`` and with a per-element Python loop doing the same writes (the original's way), side by
side. Channels: scoring, selection and apply (dense init, every slice) of 5% of vgg16's channels at 90%.
Without --initial_ckpt the sparse model is the dense one (--pretrained, or a fresh model) pruned to
--sparsity (LAMP for weights, L1 for channels).

Example:
    python benchmark_regrowth.py --m_name resnet20 --dataset synthetic
    python benchmark_regrowth.py --m_name resnet20 --dataset synthetic --granularity channel

Writes {out}/benchmark_{m_name}[_channel].json and .png (default out:
{save_dir}/{m_name}/benchmark/) and prints the table.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
import argparse
import copy
import functools
from collections.abc import Sequence

import torch
import torch.nn as nn

from benchmarks.common import timed
from models import create_model
from utils.cli.commands import commands
from utils.cli.flags import add_common_args, add_run_flags, add_scoring_args, cli_main, new_parser, scoring_settings
from utils.cli.prepare import prepare
from utils.cli.types import fraction, positive_int
from utils.core.errors import UsageError
from utils.core.paths import benchmark_dir, check_output_dir
from utils.core.seeds import make_generator
from utils.prune.pruners import get_pruner
from utils.regrow.allocation import allocate_uniform
from utils.results.plots import plot_layer_bars
from utils.runtime.settings import FinetuneSettings, LoopSettings
from utils.runtime.stage import Stage
from utils.runtime.train import evaluate_model, finetune_model
from utils.scoring.layer_scores import SCORE_ORDER, ssim_scores
from utils.scoring.saliency import param_saliency
from utils.scoring.selection import reference_scores
from utils.scoring.ssim import select_layers
from utils.search.controller import AllocationPolicy
from utils.sparsity.budget import regrowth_budget
from utils.sparsity.channels import ChannelGranularity
from utils.sparsity.granularity import Granularity, default_granularity, get_granularity, list_granularities
from utils.sparsity.grow import apply_regrowth, top_pruned
from utils.sparsity.masks import add_reparam, capacity, clone_model, num_prunable, prunable_modules
from utils.sparsity.weights import WeightGranularity


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser)
    add_scoring_args(parser, defaults={"saliency_batches": 8, "ssim_num_batches": 8})
    parser.add_argument("--granularity", choices=list_granularities(), default=default_granularity(),
                        help="time weight or channel regrowth")
    add_run_flags(parser, {"pretrained": "dense checkpoint (default: freshly initialised)"})
    parser.add_argument("--initial_ckpt", default=None, help="sparse checkpoint (default: the pruned dense model)")
    parser.add_argument("--sparsity", type=fraction, default=None,
                        help="sparsity when pruning the dense model (default 0.99 weights, 0.9 channels)")
    parser.add_argument("--regrow_step", type=fraction, default=0.01, help="budget K / N_tot of the timed regrowth")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timing repeats (best counts)")
    parser.add_argument("--skip_vgg", action="store_true", help="skip part 2 (vgg16 regrowth)")
    parser.add_argument("--out", default=None, help="output folder (default {save_dir}/{m_name}/benchmark)")
    add_run_flags(parser, {"overwrite": "replace an earlier benchmark's files"})
    return parser.parse_args(argv)


def models(stage: Stage, args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """(dense, sparse) as the docstring says."""
    dense = stage.load_model(args.pretrained) if args.pretrained else stage.build_model()
    if args.initial_ckpt:
        return dense, stage.load_model(args.initial_ckpt, sparse=True, reparam=True)
    sparse = clone_model(dense)
    gran = stage.granularity
    demo = commands(gran)
    get_pruner(demo.demo_pruner, gran).prune(sparse, args.sparsity or demo.demo_sparsity)  # the pipeline's start
    return dense, sparse


def per_element_regrowth(model: nn.Module, allocation: dict[str, int], scores: dict[str, torch.Tensor]) -> None:
    """The original's way: one host round trip and two scalar writes per regrown weight (reference only)."""
    modules = prunable_modules(model)
    with torch.no_grad():
        for name, n in allocation.items():
            module = modules[name]
            for flat in top_pruned(scores[name], module.weight_mask, n).tolist():
                pos = torch.unravel_index(torch.tensor(flat), module.weight_mask.shape)
                module.weight_mask[pos] = 1.0
                module.weight_orig[pos] = 0.0


def episode_breakdown(stage: Stage, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per stage of one episode at the stage's granularity (see module docstring)."""
    device, repeats, gran = stage.device, args.repeats, stage.granularity
    dense, sparse = models(stage, args)
    scoring = scoring_settings(args)
    times = {"ssim_preprocessing": timed(lambda: ssim_scores(stage, scoring, dense, sparse), device, repeats)}
    ssim = ssim_scores(stage, scoring, dense, sparse)
    score = lambda: gran.unit_scores(param_saliency(dense, stage.data.train, gran.scored_params(),  # noqa: E731
                                                    args.saliency_batches, SCORE_ORDER[args.regrowth_score]))
    times["saliency_preprocessing"] = timed(score, device, 1)
    scores = score()
    caps, masks = gran.capacity(sparse), gran.masks(sparse)
    layers = [n for n in select_layers(ssim, args.ssim_threshold) if caps[n] > 0]
    budget = regrowth_budget(gran.total(sparse), args.regrow_step, sum(caps[n] for n in layers))
    policy, gen = AllocationPolicy(), make_generator(args.seed, "policy")
    sample = lambda: policy.sample([caps[n] for n in layers], [ssim[n] for n in layers], gen, budget=budget)  # noqa: E731
    times["allocation_sampling"] = timed(sample, device, repeats)
    allocation = dict(zip(layers, sample().counts, strict=True))
    times["selection"] = timed(lambda: [top_pruned(scores[n], masks[n], k) for n, k in allocation.items()], device,
                               repeats)
    regrow = lambda: gran.regrow(clone_model(sparse), allocation, scores, gran.default_init, dense)  # noqa: E731
    copy_time = timed(lambda: clone_model(sparse), device, repeats)
    times["mask_update_and_init"] = max(0.0, timed(regrow, device, repeats) - copy_time - times["selection"])
    model = clone_model(sparse)
    gran.regrow(model, allocation, scores, gran.default_init, dense)
    times["finetune_epoch"] = timed(lambda: finetune_model(model, stage.data.train, stage.data.val,
                                                     FinetuneSettings(epochs=1, patience=0),
                                                     LoopSettings(progress=False, verbose=False)), device, 1)
    times["evaluation"] = timed(lambda: evaluate_model(model, stage.data.val, amp=stage.amp), device, repeats)
    return times


@functools.singledispatch
def vgg_regrowth(gran: Granularity, device: torch.device, repeats: int) -> dict[str, float]:
    """Part 2, the regrowth kernel of ``gran`` timed on vgg16 (one implementation per granularity class)."""
    raise UsageError(f"benchmark_regrowth.py has no vgg16 timing for {gran.name} regrowth; use --skip_vgg")


@vgg_regrowth.register
def vgg_weight_regrowth(gran: WeightGranularity, device: torch.device, repeats: int) -> dict[str, float]:
    """Weights: apply_regrowth vs the per-element loop on vgg16 at 99% sparsity, K = 1% of N_tot."""
    torch.manual_seed(0)
    model = create_model("vgg16").to(device)
    add_reparam(model)
    get_pruner("lamp").prune(model, 0.99)
    scores = {n: torch.rand(m.weight_orig.shape, device=device) for n, m in prunable_modules(model).items()}
    budget = int(0.01 * num_prunable(model))
    allocation = allocate_uniform({}, capacity(model), budget)  # proportional to capacity, exactly K
    state = copy.deepcopy(model.state_dict())

    def run(fn):
        model.load_state_dict(state)
        return timed(lambda: fn(model, allocation, scores), device, 1)

    vectorised = min(run(apply_regrowth) for _ in range(repeats))
    loop = run(per_element_regrowth)
    model.load_state_dict(state)
    return {"K": budget, "apply_regrowth_s": vectorised, "per_element_loop_s": loop, "speedup": loop / vectorised,
            **selection_times(gran, model, scores, allocation, device, repeats)}


def selection_times(gran: WeightGranularity, model: nn.Module, saliency: dict[str, torch.Tensor],
                    allocation: dict[str, int], device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds to pick the positions of ``allocation`` in vgg16 at 99%: by precomputed saliency (top-k of the
    pruned positions; the saliency itself is computed once per search) and by a 98%-sparse reference (the
    older repository's way: candidates from the reference's masks and magnitudes, then top-k), side by side."""
    reference = create_model("vgg16").to(device)
    reference.load_state_dict({k.replace("_orig", ""): v for k, v in model.state_dict().items()
                               if not k.endswith("_mask")})
    add_reparam(reference)
    get_pruner("lamp").prune(reference, 0.98)
    masks = gran.masks(model)

    def pick(scores):
        return [top_pruned(scores[n], masks[n], k) for n, k in allocation.items()]

    return {"saliency_selection_s": timed(lambda: pick(saliency), device, repeats),
            "reference_selection_s": timed(lambda: pick(reference_scores(gran, model, reference)), device, repeats)}


@vgg_regrowth.register
def vgg_channel_regrowth(gran: ChannelGranularity, device: torch.device, repeats: int) -> dict[str, float]:
    """Channels: scoring (fisher on 4 batches), selection and apply (dense init, every slice of the group) of
    K = 5% of vgg16's 4,224 channels at 90% channel sparsity; goal: apply under 50 ms on the CPU."""
    torch.manual_seed(0)
    dense = create_model("vgg16").to(device).eval()
    model = clone_model(dense)
    get_pruner("l1", gran).prune(model, 0.9)
    images = torch.randn(4, 64, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (4, 64), device=device)
    batches = list(zip(images, labels, strict=True))
    score = lambda: gran.unit_scores(param_saliency(dense, batches, gran.scored_params()))  # noqa: E731
    scores = score()
    masks, caps = gran.masks(model), gran.capacity(model)
    budget = regrowth_budget(gran.total(model), 0.05, sum(caps.values()))
    allocation = allocate_uniform({}, caps, budget)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def apply():
        model.load_state_dict(state)
        gran.set_masks(model, masks)
        gran.regrow(model, allocation, scores, "dense", dense)

    reset = timed(lambda: (model.load_state_dict(state), gran.set_masks(model, masks)), device, repeats)
    return {"K": budget, "scoring_s": timed(score, device, 1),
            "selection_s": timed(lambda: [top_pruned(scores[n], masks[n], k) for n, k in allocation.items()],
                                 device, repeats),
            "apply_s": max(0.0, timed(apply, device, repeats) - reset)}


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage = prepare(args, granularity=args.granularity)
    gran = stage.granularity
    stem = f"benchmark_{stage.model_name}" + ("" if gran.is_default else f"_{gran.name}")
    out = check_output_dir(args.out or benchmark_dir(args.save_dir, stage.model_name), what="--out",
                           products=[f"{stem}.json"], overwrite=args.overwrite)
    times = episode_breakdown(stage, args)
    result = {"model": stage.model_name, "dataset": stage.dataset, "device": str(stage.device), "episode_s": times}
    print(f"one episode of {stage.model_name} on {stage.dataset} ({stage.device}), seconds:")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds:9.4f}")
    if not args.skip_vgg:
        result["vgg16_regrowth"] = vgg = vgg_regrowth(get_granularity(gran.name, "vgg16"), stage.device, args.repeats)
        print(f"vgg16 {gran.name} regrowth, K = {vgg['K']:,}: " +
              ", ".join(f"{k[:-2]} {v:.4f} s" if k.endswith("_s") else f"{k} {v:.0f}x" for k, v in vgg.items()
                        if k != "K"))
    stage.write_summary(out / f"{stem}.json", result)
    plot_layer_bars(list(times), list(times.values()), "seconds", out / f"{stem}.png",
                    f"one regrowth episode of {stage.model_name} on {stage.device}: seconds per part", xlabel="part")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
