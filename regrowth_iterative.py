"""Iterative RL regrowth (the original's iterative search): repeat searches, each regrowing a budget the
controller picks (--min_budget_frac .. --max_budget_frac of N_tot, --budget_space_size options) until
--target_sparsity.

Every iteration recomputes SSIM and capacities on the current model, trains a fresh controller, rewards
an episode by its val-accuracy gain over the **pruning baseline** interpolated at its new sparsity (the
checkpoints in --baseline_dir, evaluated once on val and cached), and carries the best post-finetune
model forward. Saliency is computed once on the dense model (or the starting sparse one). The channel
version is regrowth_structure_iterative.py; both run utils/search/drivers.py.

Example:
    python regrowth_iterative.py --m_name resnet20 --initial_ckpt runs/resnet20/iterative/resnet20_0.9953.pth \\
        --baseline_dir runs/resnet20/iterative --target_sparsity 0.98 --num_iters 10
    # 8 episodes per policy step, spread over 4 GPUs (or CPU processes); --random_search: the baseline
    torchrun --nproc_per_node 4 regrowth_iterative.py --m_name resnet20 --initial_ckpt ... --episodes_per_update 8
    # killed? continue (finished iterations are kept, the running search resumes):
    python regrowth_iterative.py ... --resume

Writes to {save_dir}/{m_name}/regrowth_iterative/: iter_{i}/ (best_grown_model.pth, best_pre_finetune.pth,
episodes.csv, reward_curve.png, search_state.pt, summary.json) and summary.json over all iterations.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
from utils.cli.jobs import search_entry

parse_args, main = search_entry(__doc__, "weight", "iterative")

if __name__ == "__main__":
    raise SystemExit(main())
