"""Gradual pruning during one finetune (Zhu & Gupta 2017; with swap cycles between the steps: GraNet, Liu et al.
2021).

From a model with ``A`` kept weights to ``A - R`` (R: what the target sparsity removes, an exact count), K
pruning steps at optimizer steps ``t_k = round(k · end / K)`` (k = 1..K; ``end`` = ``until`` · the finetune's
steps) each prune to the cubic schedule of kept weights

    kept_k = A - round(R · (1 - (1 - k/K)^3)),

so most is removed early, when the network recovers best, and ``kept_K = A - R`` exactly. Each step is one call
of the run's pruner (e.g. LAMP on the current weights) removing ``kept_{k-1} - kept_k`` weights. Between steps
the finetune may swap weights at constant density (``utils.sparsity.swap``): GraNet's regeneration.
"""
from __future__ import annotations

import torch.nn as nn

from utils.core.errors import UsageError
from utils.prune.weight_pruners import PruneContext, Pruner
from utils.sparsity.granularity import Granularity


def cubic_plan(alive: int, remove: int, steps: int, end_step: int) -> list[tuple[int, int]]:
    """[(optimizer step, kept weights after it)] of the K = ``steps`` pruning steps, the last at ``end_step``
    (>= 1) with ``alive - remove`` kept."""
    if steps < 1 or end_step < 1:
        raise UsageError(f"gradual pruning needs at least one pruning step and one optimizer step (got {steps} "
                         f"step(s) over {end_step} optimizer step(s))")
    return [(max(1, round(k * end_step / steps)), alive - round(remove * (1 - (1 - k / steps) ** 3)))
            for k in range(1, steps + 1)]


class GradualPruning:
    """Prunes ``model`` along ``cubic_plan`` while it trains: ``after_step()`` after every optimizer step (the
    training loop's hook). ``last_step``: the optimizer step of the final pruning step (a best epoch before it
    is not at the target sparsity)."""

    def __init__(self, model: nn.Module, granularity: Granularity, pruner: Pruner, context: PruneContext,
                 remove: int, steps: int, end_step: int) -> None:
        self.model, self.granularity, self.pruner, self.context = model, granularity, pruner, context
        self.start = self.alive()  # kept entries before the first pruning step
        self.plan = cubic_plan(self.start, remove, steps, end_step)
        self.last_step = self.plan[-1][0]
        self.step, self.done = 0, 0  # optimizer steps seen, pruning steps taken

    def alive(self) -> int:
        """Kept entries of the model now."""
        return sum(int(mask.sum()) for mask in self.granularity.masks(self.model).values())

    def after_step(self) -> None:
        """Count the optimizer step just taken; prune to the plan's count at each of its steps."""
        self.step += 1
        while self.done < len(self.plan) and self.plan[self.done][0] == self.step:
            alive, kept = self.alive(), self.plan[self.done][1]
            if kept < alive:
                self.pruner.prune(self.model, (alive - kept) / alive, context=self.context)
            self.done += 1

    def state_dict(self) -> dict:
        """Its progress, for a finetune's resume point: optimizer steps seen, pruning steps taken, and the streams
        its pruner draws from at each pruning step (the generator of ``random``, the batches of gradient scores)."""
        streams = {"generator": self.context.generator,
                   "score_order": self.context.loader.generator if self.context.loader is not None else None}
        return {"step": self.step, "done": self.done, "plan": [list(p) for p in self.plan],
                **{name: gen.get_state() if gen is not None else None for name, gen in streams.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s progress (the model's masks come with the model's own state); a plan
        other than this one (another model or target) is a ``UsageError``."""
        if [tuple(p) for p in state["plan"]] != self.plan:
            raise UsageError("--resume: the resume point's gradual pruning plan is not this run's")
        self.step, self.done = state["step"], state["done"]
        if self.context.generator is not None and state["generator"] is not None:
            self.context.generator.set_state(state["generator"])
        if self.context.loader is not None and state["score_order"] is not None:
            self.context.loader.generator.set_state(state["score_order"])

    def epoch_columns(self) -> dict[str, float]:
        """The model's sparsity now (the training log's per-epoch column)."""
        return {"sparsity": self.granularity.sparsity(self.model)}

    def schedule_rows(self, steps_per_epoch: int) -> list[dict]:
        """The plan as rows of the run's schedule CSV: optimizer step, epoch (step / ``steps_per_epoch``, a
        fraction), kept entries and sparsity in [0, 1]; the first row is the start (step 0)."""
        total = self.granularity.total(self.model)
        return [{"step": t, "epoch": t / steps_per_epoch, "kept": kept, "sparsity": (total - kept) / total}
                for t, kept in [(0, self.start), *self.plan]]

    def record(self) -> dict:
        """What the gradual pruning did, for the checkpoint's meta."""
        return {"pruning_steps": len(self.plan), "done": self.done, "last_step": self.last_step,
                "plan": [[t, kept] for t, kept in self.plan]}
