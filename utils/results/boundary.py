"""Where does accuracy collapse? Boundary estimates of an accuracy-vs-sparsity curve.

Every estimator takes sparsities ``s`` (ascending, in [0, 1]) and accuracies ``a`` (%, same length) and
returns the **last sparsity before the break** (a grid point), or None when it finds no break:

* ``residual_break`` (the original's first method, fixed): for i = 3 .. n, fit a least-squares line to the
  first i points; the first point i-1 whose absolute residual exceeds 3x the mean absolute residual of the
  others (which must be > 0) is the break, and the point before it is reported (the original reported the
  break itself as "safe");
* ``two_segment`` (the original's second method): the split k in [2, n-3] minimising the summed mean squared
  errors of one line through points 0..k and one through k..n-1 (the split belongs to both); the corner
  s[k] is the last point of the flat part;
* ``kneedle``: the Kneedle knee (the ``kneed`` package) of the concave, decreasing curve;
* ``tolerance_boundary``: the largest sparsity before the first point whose accuracy falls more than
  ``tolerance`` pp below the dense model's, with a bootstrap interval over the val images (per-image
  correctness of every checkpoint and of the dense model, resampled together).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from kneed import KneeLocator

from utils.core.errors import UsageError
from utils.core.registry import Registry

CHANCE_MARGIN = 5.0  # accuracy points above chance (100 / classes) below which a model is "at chance"


def check_curve(s: list[float], a: list[float]) -> None:
    """A usage error unless there are at least 4 points with strictly increasing sparsity."""
    if len(s) < 4:
        raise UsageError(f"a boundary needs at least 4 points of the accuracy-vs-sparsity curve; found {len(s)}")
    if any(b <= x for x, b in zip(s, s[1:], strict=False)):
        raise UsageError("the sparsity column is not strictly increasing (in step order): "
                         f"{', '.join(f'{x:.4f}' for x in s)}; give one pruning run per folder")


def _line_residuals(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    slope, intercept = np.polyfit(x, y, 1)
    return y - (slope * x + intercept)


def residual_break(s: list[float], a: list[float]) -> float | None:
    """The original's residual method, reporting the point before the break (module docstring)."""
    x, y = np.asarray(s, float), np.asarray(a, float)
    for i in range(3, len(x) + 1):
        residuals = np.abs(_line_residuals(x[:i], y[:i]))
        last, others = residuals[-1], residuals[:-1].mean()
        if others > 0 and last > 3 * others:
            return float(x[i - 2])
    return None


def two_segment(s: list[float], a: list[float]) -> float | None:
    """The split of the best two-line fit (module docstring); None for fewer than 5 points."""
    x, y = np.asarray(s, float), np.asarray(a, float)
    best, split = np.inf, None
    for k in range(2, len(x) - 2):
        error = (np.mean(_line_residuals(x[:k + 1], y[:k + 1]) ** 2) + np.mean(_line_residuals(x[k:], y[k:]) ** 2))
        if error < best:
            best, split = error, k
    return None if split is None else float(x[split])


def kneedle(s: list[float], a: list[float]) -> float | None:
    """The Kneedle knee of a concave decreasing curve (``kneed.KneeLocator``); None for a flat curve (it
    has no knee, and kneed would divide by zero normalising it)."""
    if max(a) == min(a):
        return None
    knee = KneeLocator(s, a, curve="concave", direction="decreasing").knee
    return None if knee is None else float(knee)


def _last_within(s: list[float], acc: torch.Tensor, reference: torch.Tensor, tolerance: float) -> torch.Tensor:
    """For accuracies ``acc`` [points, R] and dense accuracies ``reference`` [R]: per column, the sparsity
    of the last point before the first one below ``reference - tolerance`` (NaN when the first point is)."""
    ok = acc >= reference.unsqueeze(0) - tolerance
    first_bad = torch.where((~ok).any(0), (~ok).float().argmax(0), torch.tensor(len(s)))
    values = torch.tensor([float("nan"), *s], dtype=torch.float64)
    return values[first_bad]  # index 0 (the first point fails) is NaN, k is s[k - 1]


def tolerance_boundary(s: list[float], correct: torch.Tensor, dense_correct: torch.Tensor, tolerance: float = 1.0,
                       resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Tolerance boundary with a bootstrap interval.

    ``correct``: bool [points, N] (checkpoint p classifies val image j correctly); ``dense_correct``: bool [N].
    Returns ``boundary`` (sparsity or None), ``accuracy`` per point (%), ``dense_accuracy`` (%) and, when
    ``resamples`` > 0, ``interval`` = the (1-level)/2 and (1+level)/2 quantiles of the resampled boundaries
    (a resample whose first point already fails counts as sparsity 0) and ``undefined_share``.
    """
    n = correct.shape[1]
    acc = 100 * correct.float().mean(1, keepdim=True)
    dense = 100 * dense_correct.float().mean().reshape(1)
    point = _last_within(s, acc, dense, tolerance)[0]
    out = {"boundary": None if torch.isnan(point) else float(point), "accuracy": acc[:, 0].tolist(),
           "dense_accuracy": float(dense), "tolerance_pp": tolerance, "resamples": resamples}
    if resamples:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, n, (resamples, n), generator=gen)
        boot = torch.stack([100 * c[idx].float().mean(1) for c in correct])  # [points, R]
        ref = 100 * dense_correct[idx].float().mean(1)
        values = _last_within(s, boot, ref, tolerance)
        filled = torch.nan_to_num(values, nan=0.0)
        qs = torch.quantile(filled, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
        out.update(interval=[float(qs[0]), float(qs[1])], level=level,
                   undefined_share=float(torch.isnan(values).double().mean()))
    return out


ESTIMATORS: Registry[Callable[[list[float], list[float]], float | None]] = Registry(
    "boundary estimator", {"residual": residual_break, "two_segment": two_segment, "kneedle": kneedle})
