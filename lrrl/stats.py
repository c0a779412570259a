"""Statistics that answer "is scheduler A better than B?" over held-out instances.

An episode's score is ``log(loss_T / loss_0)`` (lower is better; comparable across instances
of any scale). Schedulers are compared on the same instances and episode seeds, so the
sharpest statistic is the paired one: per episode, ``log(loss_T^A / loss_T^B)`` (the initial
loss is shared), whose mean is the log of the geometric-mean final-loss ratio A/B.

Scores are arranged as rliable arranges them, a ``(runs, tasks)`` matrix: tasks are
instances, runs the episode seeds (and, across a sweep, the training seeds) on each. Intervals
come from rliable's stratified bootstrap with ``task_bootstrap=True`` (instances resampled as
well as the runs on each, so an interval says how far the figure could move on another draw of
instances from the same families, not only on another draw of seeds), here vectorised over the
resamples: rliable's own loop takes minutes per interval at a few hundred instances, and the
tests check that both give the same intervals and point estimates.

A divergence scores :data:`DIVERGED`: as if the run ended at 1000 times its initial loss,
worse than any run that did not diverge, and finite, so means and ratios stay defined (the
divergence rate is reported beside them).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

#: The score of a diverged episode: ``log(1000)``.
DIVERGED = math.log(1e3)


def scores(log_ratios: ArrayLike) -> np.ndarray:
    """Episode scores: ``log(loss_T / loss_0)`` with divergences (``inf``/NaN) at DIVERGED."""
    x = np.asarray(log_ratios, dtype=np.float64)
    return np.where(np.isfinite(x) | (x == -np.inf), np.minimum(x, DIVERGED), DIVERGED)


def matrix(keys: Sequence[tuple[str, int]], values: ArrayLike) -> tuple[np.ndarray, list]:
    """``(runs, tasks)`` matrix of ``values`` keyed by ``(instance, run)``; the task order.

    Every instance must have the same number of runs (episodes on it).
    """
    by_task: dict[str, list[float]] = {}
    for (task, _), value in zip(keys, np.asarray(values, dtype=np.float64), strict=True):
        by_task.setdefault(task, []).append(value)
    tasks = list(by_task)
    counts = {len(v) for v in by_task.values()}
    if len(counts) != 1:
        raise ValueError(f"instances have different numbers of episodes: {sorted(counts)}")
    return np.array([by_task[t] for t in tasks], dtype=np.float64).T, tasks


def _iqm(x: np.ndarray, axis: int) -> np.ndarray:
    """Interquartile mean along ``axis``: the mean of the middle half (``trim_mean(x, 0.25)``)."""
    x = np.sort(x, axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)  # as scipy.stats.trim_mean, which rliable's aggregate_iqm uses
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


#: rliable's aggregates of ``(..., runs, tasks)`` score matrices, vectorised over the leading
#: axes: the mean, the median of the per-task means, and the IQM of all scores.
ESTIMATORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=(-2, -1)),
    "median": lambda x: np.median(x.mean(axis=-2), axis=-1),
    "iqm": lambda x: _iqm(x.reshape(*x.shape[:-2], -1), axis=-1),
}


def iqm(x: ArrayLike) -> float:
    """Interquartile mean over all entries (rliable's ``aggregate_iqm``)."""
    return float(_iqm(np.asarray(x, dtype=np.float64).ravel(), axis=-1))


def resample(x: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """``samples`` stratified bootstrap resamples of a ``(runs, tasks)`` matrix, flattened.

    As rliable's ``StratifiedBootstrap(task_bootstrap=True)``: tasks (instances) are drawn
    with replacement, and the runs on each drawn task are drawn with replacement among that
    task's runs. Vectorised over the resamples (rliable loops over them in Python, minutes
    for a few hundred instances); ``tests/test_comparison.py`` checks the two agree.
    Returns ``(samples, runs, tasks)``.
    """
    runs, tasks = x.shape
    rng = np.random.default_rng(seed)
    task = rng.integers(0, tasks, size=(samples, 1, tasks))
    run = rng.integers(0, runs, size=(samples, runs, tasks))
    return x[run, task]


def interval(
    x: np.ndarray,
    stat: Callable[[np.ndarray], np.ndarray],
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """``stat`` of a ``(runs, tasks)`` matrix and its percentile interval over stratified
    bootstrap resamples (:func:`resample`); ``stat`` maps ``(..., runs, tasks)`` to ``(...)``."""
    x = np.asarray(x, dtype=np.float64)
    point = float(stat(x[None])[0])
    values = stat(resample(x, samples, seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return point, [float(low), float(high)]


def describe(
    x: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{mean, mean_ci, median, median_ci, iqm, iqm_ci}`` of a ``(runs, tasks)`` matrix."""
    out: dict[str, Any] = {}
    for name, stat in ESTIMATORS.items():
        out[name], out[f"{name}_ci"] = interval(x, stat, samples, confidence, seed)
    return out


def ratio(
    diff: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The geometric-mean final-loss ratio ``exp(mean(diff))`` of paired log differences
    (a ``(runs, tasks)`` matrix of ``log(L_A / L_B)``), with its bootstrap interval."""
    point, ci = interval(diff, ESTIMATORS["mean"], samples, confidence, seed)
    return {"ratio": math.exp(point), "ratio_ci": [math.exp(ci[0]), math.exp(ci[1])]}


def improvement_per_task(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per task, ``P(X_a < X_b)`` over every pair of runs (ties count half): the
    Mann-Whitney form of the probability of improvement of Agarwal et al. (2021)."""
    x, y = a[:, None, :], b[None, :, :]
    return np.mean(np.where(x < y, 1.0, np.where(x == y, 0.5, 0.0)), axis=(0, 1))


def probability_of_improvement(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``P(A < B)``: how often a run of A ends lower than a run of B on the same instance,
    averaged over instances (rliable's ``probability_of_improvement`` with scores that improve
    downwards), with a bootstrap interval over instances. ``a``, ``b``: ``(runs, tasks)``."""
    per_task = improvement_per_task(np.asarray(a, float), np.asarray(b, float))
    point, ci = interval(per_task[None, :], ESTIMATORS["mean"], samples, confidence, seed)
    return {"probability_of_improvement": point, "probability_of_improvement_ci": ci}


def win_rate(a: ArrayLike, b: ArrayLike) -> float:
    """Fraction of paired episodes (same instance and seed) where ``a`` is lower than ``b``
    (ties, two divergences included, count half)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    if not x.size:
        return math.nan
    return float(np.mean(np.where(x < y, 1.0, np.where(x == y, 0.5, 0.0))))


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


@functools.lru_cache(maxsize=4096)
def reference_loss(instance: Any, max_iter: int = 2000) -> float:
    """``1/2 ||V - W H||_F^2`` (the NMF env's loss) at :func:`reference_factors` (cached).

    ``instance`` is hashable and has ``matrix()`` and ``rank``. The reference is a local
    optimum too: a schedule may beat it, which shows as a negative optimality gap.
    """
    V = np.array(instance.matrix(), dtype=np.float64)
    W, H = reference_factors(V, int(instance.rank), max_iter)
    R = V - W @ H
    return float(0.5 * np.sum(R * R))
