"""One-shot RL regrowth of channels (the original's structured one-shot search, fixed): regrow
K = --regrow_step (alias --sparsity_delta) · all groupable channels across the coupled channel groups that
pruning damaged most.

The search of regrowth_oneshot.py with the channel granularity (utils/search/drivers.py): a unit is a
coupled group (a residual stream is one group: no shortcut special case), its capacity its masked
channels; SSIM compares the output of each group's root layer (dense vs masked, same shapes); channel
scores are fisher (sum of g²θ² over every slice of the group, default) or taylor (sum of |g·θ|) on the
dense model in eval mode over --taylor_batches (10) train batches; regrown channels get --init_strategy
dense (every slice copied from the dense model, BN statistics included; the original's choice),
preserve (outputs unchanged at regrowth), kaiming or magnitude. Rewards on val, against the start or, with
--baseline_dir (e.g. the structured prune folder), the pruning baseline at the new channel sparsity.

Example:
    python prune_structure.py --m_name resnet20 --mode oneshot --target_sparsity 0.7
    python regrowth_structure_oneshot.py --m_name resnet20 \\
        --pruned_ckpt runs/resnet20/structured_oneshot/resnet20_ch0.7009.pth --sparsity_delta 0.02

Writes to {save_dir}/{m_name}/regrowth_structure_oneshot/{label}/ the same files as regrowth_oneshot.py
(checkpoints with channel masks) plus best_grown_model_exported.pth, with the export's params and MACs in
summary.json.
"""
from __future__ import annotations

import utils.core.interrupt  # noqa: F401 isort: skip  (first: a Ctrl-C while torch loads is one line)
from utils.cli.jobs import search_entry

parse_args, main = search_entry(__doc__, "channel", "oneshot")

if __name__ == "__main__":
    raise SystemExit(main())
