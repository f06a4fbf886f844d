"""Curves over a count of finished steps (or epochs): pure functions the schedules of the toolkit share, the
learning-rate curves of training (``utils.runtime.schedules``) and the swap fraction's decay
(``utils.sparsity.swap``). Each is a function of the count reached, so a resumed run recomputes it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

Curve = Callable[[float], float]  # finished steps (or epochs) -> factor in [0, 1]


def cosine(total: float) -> Curve:
    """½(1 + cos(π·t/total)) after t of ``total`` finished counts (``total`` > 0, a fraction allowed), held at 0
    past the end (never restarting)."""
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total))


def warmup_cosine(total: int, warmup: int) -> Curve:
    """Linear warm-up (t+1)/warmup over the first ``warmup`` counts, then cosine decay to 0 at ``total``."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        progress = (t - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def warmup_linear(total: int, warmup: int) -> Curve:
    """One cycle: linear warm-up (t+1)/warmup over the first ``warmup`` counts, then a straight line to 0 at
    ``total`` (held at 0 past it). The short-budget curve: budgeted-training studies find linear-to-zero the best
    decay when the epochs are few."""

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return max(0.0, (total - t) / max(1, total - warmup))

    return factor
