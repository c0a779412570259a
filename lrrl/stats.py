"""Statistics for comparing schedulers over seeds x instances (lower values are better).

Point estimates with percentile-bootstrap confidence intervals (mean, median and the
interquartile mean of Agarwal et al., 2021), paired win rates, the probability of
improvement, and, for NMF, the optimality gap to scikit-learn's batch solver.

Divergences enter as ``+inf``: they pull the mean (and its interval) to ``inf`` on purpose,
while the median and the IQM stay finite as long as fewer than half (a quarter) diverge.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Statistics reported for every metric, each with its bootstrap interval.
ESTIMATORS = ("mean", "median", "iqm")


def iqm(values: np.ndarray, axis: int = -1) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle half (``scipy.stats.trim_mean(x, 0.25)``)."""
    x = np.sort(np.asarray(values, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    middle = np.take(x, np.arange(cut, n - cut), axis=axis)
    with np.errstate(invalid="ignore"):
        return np.mean(middle, axis=axis)


def _estimator(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name == "mean":
        return lambda x: np.mean(x, axis=-1)
    if name == "median":
        return lambda x: np.median(x, axis=-1)
    if name == "iqm":
        return lambda x: iqm(x, axis=-1)
    raise ValueError(f"estimator={name!r} is invalid: expected one of {ESTIMATORS}")


def bootstrap_ci(
    values: Sequence[float],
    estimator: str = "mean",
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``estimator`` over i.i.d. episodes (seeded)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resamples = x[rng.integers(0, x.size, size=(samples, x.size))]
    with np.errstate(invalid="ignore"):
        stats = _estimator(estimator)(resamples)
    alpha = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore"):
        low, high = np.quantile(stats, [alpha, 1.0 - alpha], method="linear")
    # Interpolating between two infinite resamples (divergences) gives NaN: take the order
    # statistic itself there, so an interval reaching a divergence reads [.., inf].
    if math.isnan(low):
        low = np.quantile(stats, alpha, method="lower")
    if math.isnan(high):
        high = np.quantile(stats, 1.0 - alpha, method="higher")
    return float(low), float(high)


def describe(
    values: Sequence[float], samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{mean, mean_ci, median, median_ci, iqm, iqm_ci}`` of ``values``."""
    x = np.asarray(values, dtype=float)
    out: dict[str, Any] = {}
    for name in ESTIMATORS:
        with np.errstate(invalid="ignore"):
            out[name] = float(_estimator(name)(x)) if x.size else math.nan
        out[f"{name}_ci"] = list(bootstrap_ci(x, name, samples, confidence, seed))
    return out


def _beats(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where ``a < b``, 0.5 on ties (two divergences included), 0 otherwise."""
    return np.where(a < b, 1.0, np.where(a == b, 0.5, 0.0))


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of paired episodes (same instance and seed) where ``a`` is lower than ``b``."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return float(np.mean(_beats(x, y))) if x.size else math.nan


def probability_of_improvement(
    a: Mapping[str, Sequence[float]], b: Mapping[str, Sequence[float]]
) -> float:
    """``P(X_a < X_b)`` per instance over all seed pairs (ties count half), averaged.

    The Mann-Whitney form of Agarwal et al. (2021): unlike :func:`win_rate` it does not pair
    seeds, so it asks how often a random run of ``a`` beats a random run of ``b``.
    """
    common = [k for k in a if k in b]
    if not common:
        return math.nan
    per_instance = []
    for key in common:
        x = np.asarray(a[key], dtype=float)[:, None]
        y = np.asarray(b[key], dtype=float)[None, :]
        per_instance.append(float(np.mean(_beats(x, y))))
    return float(np.mean(per_instance))


def optimality_gap(loss_T: float, loss_0: float, loss_star: float) -> float:
    """``(loss_T - loss*) / (loss_0 - loss*)``: 0 at the reference, 1 at the start.

    Negative when a schedule beats the reference solver; ``inf`` for a diverged run.
    """
    if not math.isfinite(loss_T):
        return math.inf
    span = loss_0 - loss_star
    return (loss_T - loss_star) / span if span > 0 else math.nan


def reference_factors(
    matrix: np.ndarray, rank: int, max_iter: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, H)`` from scikit-learn's batch NMF of ``matrix`` at ``rank`` (coordinate descent).

    Coordinate descent from the ``nndsvda`` start is near-optimal and, seeded and on one BLAS
    thread, deterministic: the same numbers in every process (train run, re-evaluation,
    parallel workers), which is what a quality anchor needs.
    """
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    model = NMF(
        n_components=rank,
        init="nndsvda",
        solver="cd",
        max_iter=max_iter,
        tol=1e-6,
        random_state=0,  # nndsvda's SVD is randomised
    )
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(np.asarray(matrix, dtype=np.float64))
    return W, model.components_


@functools.lru_cache(maxsize=256)
def reference_loss(instance: Any, rank: int, max_iter: int = 2000) -> float:
    """``1/2 ||V - W H||_F^2`` (the NMF env's loss) at :func:`reference_factors` (cached).

    ``instance`` is hashable and has ``matrix()``. The reference is a local optimum too: a
    schedule may beat it, which shows as a negative optimality gap.
    """
    V = np.array(instance.matrix(), dtype=np.float64)
    W, H = reference_factors(V, rank, max_iter)
    R = V - W @ H
    return float(0.5 * np.sum(R * R))
