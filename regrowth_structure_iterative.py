"""Iterative RL regrowth of channels (the original's structured iterative search, fixed): repeat channel
searches, each regrowing a budget the controller picks (--min_restore_frac .. --max_restore_frac of all
groupable channels, --budget_space_size options) until --target_sparsity (channel sparsity).

The search of regrowth_iterative.py with the channel granularity (utils/search/drivers.py): every iteration
recomputes SSIM per group and capacities on the current model, trains a fresh controller, rewards an
episode by its val gain over the structured pruning baseline (--baseline_dir, default the structured
iterative prune folder) at its new channel sparsity, and carries the best post-finetune model forward.
Residual groups are regrown like any other (the original excluded shortcut layers by name). Channel
scores (--regrowth_score fisher | taylor, --taylor_batches) are computed once on the dense model.

Example:
    python prune_structure.py --m_name resnet20 --mode iterative --iterative_steps 8
    python regrowth_structure_iterative.py --m_name resnet20 \\
        --pruned_ckpt runs/resnet20/structured_iterative/resnet20_ch0.9420.pth --target_sparsity 0.9

Writes to {save_dir}/{m_name}/regrowth_structure_iterative/: iter_{i}/ as regrowth_iterative.py (checkpoints
with channel masks), summary.json with the final model's exported params and MACs, and the final model's
export beside it.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
from utils.cli.jobs import search_entry

parse_args, main = search_entry(__doc__, "channel", "iterative")

if __name__ == "__main__":
    raise SystemExit(main())
