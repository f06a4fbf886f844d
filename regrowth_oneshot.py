"""One-shot RL regrowth (spec §7): regrow a fixed budget K = --regrow_step · N_tot across the layers that
pruning damaged most, split by an LSTM controller trained with REINFORCE.

SSIM (dense vs sparse, val images) picks the searched layers; saliency (dL/dθ)^2 θ^2 picks positions
inside each; every episode regrows a copy of the sparse model, mini-finetunes it (best epoch on val) and
is rewarded by its val-accuracy gain over the starting sparse model (+ --budget_bonus · budget used).

Example:
    python regrowth_oneshot.py --m_name resnet20 --initial_ckpt runs/resnet20/oneshot/resnet20_0.9900.pth \\
        --regrow_step 0.01 --num_epochs 400 --finetune_epochs 50
    # killed? continue from the last finished episode:
    python regrowth_oneshot.py --m_name resnet20 --initial_ckpt ... --resume

Writes to {save_dir}/{m_name}/regrowth_oneshot/{label}/ (label: --label, default the start sparsity):
    best_grown_model.pth    best episode after its mini-finetune (allocation in meta)
    best_pre_finetune.pth   the same regrown model before the mini-finetune
    episodes.csv            episode, reward, acc_gain, bonus, val_acc, sparsity, regrown, budget, entropy, beta,
                            allocation
    summary.json, reward_curve.png, search_state.pt (for --resume), log.txt
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from utils.budget import regrowth_budget
from utils.cli import (
    add_common_args,
    add_controller_args,
    add_scoring_args,
    add_speed_args,
    cli_main,
    new_parser,
    open_fraction,
    positive_float,
)
from utils.paths import BEST_MODEL, regrowth_dir
from utils.run import LOG, setup_logging, write_json
from utils.scores import saliency_scores, ssim_scores
from utils.search import Search, check_search_dir, config_from_args, search_space, trainer_from_args
from utils.stage import prepare_dense_sparse
from utils.train import evaluate


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_common_args(parser, m_name_default=None)
    add_speed_args(parser)
    add_scoring_args(parser)
    add_controller_args(parser, episodes=400, action_space_size=11, finetune_epochs=50, patience=50)
    parser.add_argument("--regrow_step", type=open_fraction, default=0.01, help="budget K as a fraction of N_tot")
    parser.add_argument("--reward_temperature", type=positive_float, default=0.005, help="advantage divisor τ")
    parser.add_argument("--label", default=None, help="output sub-folder (default: start sparsity, e.g. 0.9900)")
    return parser.parse_args(argv)


def output_dir(args: argparse.Namespace, model_name: str, start: float) -> Path:
    """The search folder, checked: writable, and no earlier search replaced without --resume/--overwrite."""
    out = regrowth_dir(args.save_dir, model_name, "weight", "oneshot") / (args.label or f"{start:.4f}")
    check_search_dir(out, args)
    return out


@cli_main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stage, pair = prepare_dense_sparse(args, args.initial_ckpt, reparam=True)
    gran = stage.granularity
    start = gran.sparsity(pair.sparse)
    out = output_dir(args, stage.model_name, start)
    regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(gran.capacity(pair.sparse).values()))  # not 0
    setup_logging(out)
    ssim = ssim_scores(stage, pair.dense, pair.sparse)
    space = search_space(ssim, gran.capacity(pair.sparse), args.ssim_threshold)
    budget = regrowth_budget(gran.total(pair.sparse), args.regrow_step, sum(space.capacities))
    saliency = saliency_scores(stage, pair)
    _, start_val = evaluate(pair.sparse, stage.data.val, amp=stage.amp)
    LOG.info("start: sparsity %.4f, val %.2f%%; K = %d; searching %s", start, start_val, budget, space.layers)
    search = Search(stage, pair.sparse, saliency, pair.dense, space,
                    trainer_from_args(args, temperature=args.reward_temperature, clip=100.0),
                    config_from_args(args), zero_point=lambda s: start_val, out=out, parent=pair.sparse_path,
                    budget=budget)
    if args.resume:
        search.resume()
    best = search.run()
    model = stage.load_model(out / BEST_MODEL)
    _, test_acc = evaluate(model, stage.data.test, amp=stage.amp)
    write_json(out / "summary.json", {
        "model": stage.model_name, "dataset": stage.dataset, "start_sparsity": start, "start_val_acc": start_val,
        "budget": budget, "searched_layers": dict(zip(space.layers, space.ssim, strict=True)),
        "episodes": len(search.history), "best": vars(best), "best_test_acc": test_acc})
    LOG.info("best episode %d: val %.2f%% (gain %+.2f pp over the sparse start), sparsity %.4f, test %.2f%%",
             best.episode, best.val_acc, best.acc_gain, best.sparsity, test_acc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
