"""One-shot RL regrowth of weights (the original's one-shot search): regrow a fixed budget
K = --regrow_step · N_tot across the layers that pruning damaged most, split by an LSTM controller trained
with REINFORCE.

SSIM (dense vs sparse, val images) picks the searched layers; saliency (dL/dθ)^2 θ^2 picks positions
inside each; every episode regrows a copy of the sparse model, mini-finetunes it (best epoch on val) and
is rewarded by its val-accuracy gain over the starting sparse model (or over the pruning baseline of
--baseline_dir at the new sparsity) + --budget_bonus · budget used. The channel version is
regrowth_structure_oneshot.py; both run utils/search/drivers.py.

Example:
    python regrowth_oneshot.py --m_name resnet20 --initial_ckpt runs/resnet20/oneshot/resnet20_0.9900.pth \\
        --regrow_step 0.01 --num_epochs 400 --finetune_epochs 50
    # 8 episodes per policy step, spread over 4 GPUs (or CPU processes); --random_search: the baseline
    torchrun --nproc_per_node 4 regrowth_oneshot.py --m_name resnet20 --initial_ckpt ... --episodes_per_update 8
    # killed? continue from the last finished episode (same flags):
    python regrowth_oneshot.py --m_name resnet20 --initial_ckpt ... --resume

Writes to {save_dir}/{m_name}/regrowth_oneshot/{label}/ (label: --label, default the start sparsity):
    best_grown_model.pth    best episode after its mini-finetune (allocation in meta)
    best_pre_finetune.pth   the same regrown model before the mini-finetune
    episodes.csv            episode, reward, acc_gain, bonus, val_acc, sparsity, regrown, budget, entropy, beta,
                            allocation
    summary.json, reward_curve.png, search_state.pt (for --resume), log.txt
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
from utils.cli.jobs import search_entry

parse_args, main = search_entry(__doc__, "weight", "oneshot")

if __name__ == "__main__":
    raise SystemExit(main())
