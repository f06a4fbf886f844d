"""Swap cycles at constant density (RigL, Evci et al. 2020; GraNet's "neuroregeneration", Liu et al. 2021).

Every ``every`` optimizer steps of a finetune (or every ``every_epochs`` epochs, turned into steps on the run's
data, so that the interval means the same on any data set size), each masked layer drops its ``n`` weakest kept
weights and grows ``n`` of its pruned positions back, so its count of kept weights never changes:

* ``n = round(f_t · kept)``, capped by the layer's kept and pruned counts, with ``f_t`` the fraction at step t:
  ``fraction · (1 + cos(π t / (until · T))) / 2`` for ``t < until · T`` (T: the finetune's optimizer steps),
  then no more swaps;
* drop (``drop_score``): the smallest ``|θ|`` among the kept weights;
* grow (``grow_score``): among every position inactive after the drop, as RigL's Algorithm 1 (``I_grow =
  ArgTopK`` over ``i ∉ θ − I_drop``: a weight dropped now may come straight back, at zero), the largest
  ``|dL/dθ|`` of the dense gradient on the step's batch (``gradient``, RigL), or ``(dL/dθ)^2 θ_dense^2``
  (``saliency``, the toolkit's regrowth score; needs the dense weights). Until 2026-12-06 the just-dropped
  positions were left out of the grow candidates; that was never measured to be better, so the rule follows
  RigL (the small-regime swap results of docs/results/matched_experiment.md were measured with the old rule);
* grown weights start at zero with fresh optimizer state (Adam moments zeroed); dropped ones are zeroed too.

The dense gradient comes from the training step itself: on a swap step, the effective weight ``weight_orig ·
weight_mask`` of each layer keeps its gradient (``retain_grad`` in a forward pre-hook), which is zero nowhere
by construction, unlike the gradient of ``weight_orig``; no extra forward or backward pass. Under
DistributedDataParallel the gradients are summed over the processes first, so every process swaps the same
positions. Each swap is a handful of tensor operations per layer (two ``topk`` and four indexed writes).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

from utils.core.curves import cosine
from utils.core.distributed import all_reduce_sum
from utils.core.errors import UsageError
from utils.core.fields import setting
from utils.core.registry import Registry
from utils.core.values import non_negative_int, open_fraction, positive_float
from utils.sparsity.grow import reset_optimizer_state, write_at
from utils.sparsity.masks import has_reparam, prunable_modules

GrowScore = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (dense grad, dense θ or None) -> score

GROW_SCORES: Registry[GrowScore] = Registry("grow score", {
    "gradient": lambda grad, dense: grad.abs(),
    "saliency": lambda grad, dense: (grad * dense) ** 2,
})
DROP_SCORES: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("drop score", {
    "magnitude": lambda weight: weight.abs(),
})
NEEDS_DENSE = ("saliency",)  # grow scores that read the dense model's weights


# the swap interval the README recommends with gradual pruning: the matched experiment swapped every 20 steps of
# 24-step epochs (docs/results/matched_experiment.md), the same interval in epochs on any data size
RECOMMENDED_EVERY_EPOCHS = 0.83


@dataclass(frozen=True)
class SwapSettings:
    """Swap cycles of one finetune (``every`` 0: none, the finetune is the plain one)."""

    every: int = setting(0, "every N optimizer steps, each layer drops its weakest kept weights and grows as many "
                            "pruned ones back at zero (its kept count never changes); 0: no swaps (the original's "
                            "default). Steps depend on the data set's size: --swap_every_epochs gives the interval in "
                            f"epochs ({RECOMMENDED_EVERY_EPOCHS} with gradual pruning: the measured recommendation)",
                         names=("--swap_every",), parse=non_negative_int, metavar="N")
    every_epochs: float | None = setting(None, "instead of --swap_every: a swap every E epochs (a fraction allowed: "
                                               "0.25 is four an epoch), turned into optimizer steps on the run's data, "
                                               "so it means the same on any data set size",
                                         names=("--swap_every_epochs",), parse=positive_float, metavar="E")
    fraction: float = setting(0.3, "share of each layer's kept weights swapped at the first swap, decayed by a cosine",
                              names=("--swap_fraction",), parse=open_fraction)
    until: float = setting(0.75, "no swaps after this share of the finetune's steps (the cosine reaches 0 there)",
                           names=("--swap_until",), parse=open_fraction)
    grow_score: str = setting("gradient", "gradient: |dL/dθ| on the step's batch (RigL); saliency: (dL/dθ)^2 "
                                          "θ_dense^2 (needs the dense model, --pretrained)", choices=GROW_SCORES)
    drop_score: str = setting("magnitude", "magnitude: the smallest |θ| among kept weights are dropped",
                              choices=DROP_SCORES)

    @property
    def enabled(self) -> bool:
        return self.every > 0 or bool(self.every_epochs)

    def in_steps(self, steps_per_epoch: int) -> SwapSettings:
        """These settings with ``every`` in optimizer steps for epochs of ``steps_per_epoch`` steps: ``every_epochs
        · steps_per_epoch`` rounded (at least 1) when the interval is given in epochs, else unchanged."""
        if not self.every_epochs:
            return self
        return replace(self, every=max(1, round(self.every_epochs * steps_per_epoch)))

    def fraction_at(self, step: int, total_steps: int) -> float:
        """Swap fraction at optimizer step ``step`` (1-based) of ``total_steps``: the cosine decay, 0 from
        ``until · total_steps`` on."""
        return self.fraction * cosine(self.until * total_steps)(step)

    def record(self) -> dict:
        """The settings for a checkpoint's meta."""
        return asdict(self)


@torch.no_grad()
def swap_layer(weight: torch.Tensor, mask: torch.Tensor, grow: torch.Tensor, drop: torch.Tensor, fraction: float,
               optimizer: torch.optim.Optimizer | None) -> int:
    """One swap of a layer: ``n = round(fraction · kept)`` (capped) of the kept entries with the smallest
    ``drop`` score are masked and zeroed, and as many entries inactive after that drop (just-dropped ones
    included, as RigL) with the largest ``grow`` score are unmasked at zero with fresh optimizer state.
    ``weight``: the stored parameter; ``mask``: its keep mask (same shape); ``grow`` / ``drop``: scores of that
    shape. Returns n (a position dropped and grown back in the same swap counts as moved)."""
    kept = mask.reshape(-1).bool()
    count = int(kept.sum())
    n = min(round(fraction * count), count, kept.numel() - count)
    if n <= 0:
        return 0
    dropped = drop.reshape(-1).float().masked_fill(~kept, math.inf).topk(n, largest=False).indices
    still_kept = kept.clone()
    still_kept[dropped] = False
    grown = grow.reshape(-1).float().masked_fill(still_kept, -math.inf).topk(n).indices
    for tensor, (off, on) in ((mask, (0.0, 1.0)), (weight, (0.0, 0.0))):  # index tuples: any memory layout
        write_at(tensor, dropped, off)
        write_at(tensor, grown, on)
    moved = torch.cat([dropped, grown])
    reset_optimizer_state(optimizer, weight, lambda t: write_at(t, moved, 0.0))
    return n


class SwapCycles:
    """The swap cycles of one finetune of ``model`` (a weight-masked model), driven by the training loop:
    ``after_step()`` after every optimizer step. ``total_steps``: the finetune's optimizer steps; ``dense``:
    the dense weights by layer (for ``saliency``); ``data_parallel``: the finetune trains one model over the
    processes (DistributedDataParallel), whose gradients are summed before each swap so every process swaps the
    same positions (an episode-parallel search's finetunes are independent: no reduction)."""

    def __init__(self, model: nn.Module, settings: SwapSettings, total_steps: int,
                 optimizer: torch.optim.Optimizer, dense: dict[str, torch.Tensor] | None = None,
                 data_parallel: bool = False) -> None:
        GROW_SCORES.canonical(settings.grow_score, "--grow_score")
        DROP_SCORES.canonical(settings.drop_score, "--drop_score")
        if settings.grow_score in NEEDS_DENSE and dense is None:
            raise UsageError(f"--grow_score {settings.grow_score} needs the dense model's weights (--pretrained)")
        if settings.every < 1:
            raise ValueError("SwapCycles needs the interval in optimizer steps (SwapSettings.in_steps)")
        self.layers = {n: m for n, m in prunable_modules(model).items() if has_reparam(m)}
        if not self.layers:
            raise UsageError("swap cycles need a model with weight masks (a pruned checkpoint)")
        self.settings, self.total_steps, self.optimizer, self.dense = settings, total_steps, optimizer, dense
        self.data_parallel = data_parallel
        self.step, self.swaps, self.moved = 0, 0, 0
        self.capturing = self._is_swap_step(1)
        self._hooks = [m.register_forward_pre_hook(self._keep_grad) for m in self.layers.values()]

    def _is_swap_step(self, step: int) -> bool:
        every = self.settings.every
        return step % every == 0 and self.settings.fraction_at(step, self.total_steps) > 0

    def _keep_grad(self, module: nn.Module, _inputs) -> None:
        """Forward pre-hook (after the mask's own): on a swap step, keep the effective weight's gradient."""
        if self.capturing and module.weight.requires_grad:
            module.weight.retain_grad()

    def after_step(self) -> None:
        """Count the optimizer step just taken; on a swap step, swap every layer from that step's gradients."""
        self.step += 1
        if self.capturing:
            fraction = self.settings.fraction_at(self.step, self.total_steps)
            grow_score, drop_score = GROW_SCORES[self.settings.grow_score], DROP_SCORES[self.settings.drop_score]
            for name, module in self.layers.items():
                grad = module.weight.grad
                if grad is None:  # the layer took no part in this step's forward
                    continue
                grad = all_reduce_sum(grad.detach().clone()) if self.data_parallel else grad.detach()
                dense = None if self.dense is None else self.dense[name]
                self.moved += swap_layer(module.weight_orig, module.weight_mask, grow_score(grad, dense),
                                         drop_score(module.weight_orig.detach()), fraction, self.optimizer)
            self.swaps += 1
        self.capturing = self._is_swap_step(self.step + 1)

    def state_dict(self) -> dict[str, int]:
        """Its progress, for a finetune's resume point: optimizer steps seen, swaps made, weights moved."""
        return {"step": self.step, "swaps": self.swaps, "moved": self.moved}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from ``state_dict()``'s progress."""
        self.step, self.swaps, self.moved = state["step"], state["swaps"], state["moved"]
        self.capturing = self._is_swap_step(self.step + 1)

    def epoch_columns(self) -> dict[str, int]:
        """The swaps so far and the weights they moved (the training log's per-epoch columns)."""
        return {"swaps": self.swaps, "weights_moved": self.moved}

    def close(self) -> dict:
        """Remove the hooks; what the cycles did, for the checkpoint's meta."""
        for hook in self._hooks:
            hook.remove()
        return {**self.settings.record(), "swaps": self.swaps, "weights_moved": self.moved}
