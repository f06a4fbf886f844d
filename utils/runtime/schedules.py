"""Learning-rate schedules: the factor that multiplies the base learning rate at a step (or epoch) count, from
the curves of ``utils.core.curves``.

Each curve is a pure function of the count of finished steps, so a resumed run recomputes it from the count it
reached (and a run resumed with a longer budget continues on the longer curve). ``LR_SCHEDULES`` names the
curves of dense pretraining (``pretrain.py --lr_schedule``); ``lr_lambda`` builds one for a budget.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from utils.core.curves import Curve, cosine, warmup_cosine, warmup_linear


@dataclass(frozen=True)
class LrSchedule:
    """A named learning-rate curve of dense training: per epoch (the original's cosine) or per optimizer step."""

    per_step: bool  # steps after every optimizer step (True) or after every epoch (False)
    build: Callable[[int, int], Curve]  # (total counts, warm-up counts) -> curve
    help: str


LR_SCHEDULES: dict[str, LrSchedule] = {
    "cosine": LrSchedule(False, lambda total, warmup: cosine(total),
                         "per epoch, lr·½(1 + cos(π·e/E)), no warm-up (the original's)"),
    "onecycle": LrSchedule(True, warmup_linear,
                           "per step: linear warm-up over --warmup_epochs, then linearly to 0 (short schedules)"),
    "warmup_cosine": LrSchedule(True, warmup_cosine,
                                "per step: linear warm-up over --warmup_epochs, then cosine to 0"),
}


def lr_lambda(name: str, epochs: int, steps_per_epoch: int, warmup_epochs: float) -> Curve:
    """The curve ``name`` of ``LR_SCHEDULES`` for ``epochs`` epochs of ``steps_per_epoch`` optimizer steps;
    per-step curves warm up over ``warmup_epochs`` (a fraction allowed, rounded to whole steps)."""
    schedule = LR_SCHEDULES[name]
    if not schedule.per_step:
        return schedule.build(epochs, 0)
    total = epochs * steps_per_epoch
    return schedule.build(total, min(total, round(warmup_epochs * steps_per_epoch)))
