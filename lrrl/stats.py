"""Statistics that answer "is scheduler A better than B?" over held-out instances.

An episode's score is ``log(loss_T / loss_0)`` (lower is better; comparable across instances
of any scale). Schedulers are compared on the same instances and episode seeds, so the
sharpest statistic is the paired one: per episode, ``log(loss_T^A / loss_T^B)`` (the initial
loss is shared), whose mean is the log of the geometric-mean final-loss ratio A/B.

Scores are arranged as rliable expects, a ``(runs, tasks)`` matrix: tasks are instances,
runs the episode seeds (and, across a sweep, the training seeds) on each. Intervals are
rliable's stratified bootstrap with ``task_bootstrap=True``: instances are resampled as well
as the runs on each, so an interval says how far the figure could move on another draw of
instances from the same families, not only on another draw of seeds.

A divergence scores :data:`DIVERGED`: as if the run ended at 1000 times its initial loss,
worse than any run that did not diverge, and finite, so means and ratios stay defined (the
divergence rate is reported beside them).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
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


def iqm(x: np.ndarray) -> float:
    """Interquartile mean over all entries (rliable's ``aggregate_iqm``)."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(np.asarray(x, dtype=np.float64)))


def _estimators() -> dict[str, Callable[[np.ndarray], float]]:
    from rliable import metrics

    return {
        "mean": metrics.aggregate_mean,
        "median": metrics.aggregate_median,
        "iqm": metrics.aggregate_iqm,
    }


def interval_estimates(
    score_dict: Mapping[str, np.ndarray],
    func: Callable[[np.ndarray], np.ndarray],
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """rliable's stratified bootstrap over instances and runs: point estimates and intervals
    (``(2, k)`` arrays) of ``func`` for each ``(runs, tasks)`` matrix of ``score_dict``."""
    from rliable import library

    # rliable's stratified bootstrap draws its indices from NumPy's global generator, whatever
    # random_state says: seed it for reproducible intervals, and give the caller's state back.
    saved = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # arch's notice about its RandomState argument
            return library.get_interval_estimates(
                dict(score_dict),
                func,
                reps=samples,
                confidence_interval_size=confidence,
                task_bootstrap=True,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def describe(
    x: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``{mean, mean_ci, median, median_ci, iqm, iqm_ci}`` of a ``(runs, tasks)`` matrix."""
    estimators = _estimators()
    names = list(estimators)

    def func(s: np.ndarray) -> np.ndarray:
        return np.array([estimators[n](s) for n in names])

    point, ci = interval_estimates({"x": x}, func, samples, confidence, seed)
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        out[name] = float(point["x"][i])
        out[f"{name}_ci"] = [float(ci["x"][0, i]), float(ci["x"][1, i])]
    return out


def ratio(
    diff: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """The geometric-mean final-loss ratio ``exp(mean(diff))`` of paired log differences
    (a ``(runs, tasks)`` matrix of ``log(L_A / L_B)``), with its bootstrap interval."""
    point, ci = interval_estimates(
        {"d": diff}, lambda s: np.array([np.mean(s)]), samples, confidence, seed
    )
    return {
        "ratio": float(np.exp(point["d"][0])),
        "ratio_ci": [float(np.exp(ci["d"][0, 0])), float(np.exp(ci["d"][1, 0]))],
    }


def probability_of_improvement(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, Any]:
    """``P(A < B)``: how often a run of A ends lower than a run of B on the same instance
    (the Mann-Whitney form of Agarwal et al. 2021, averaged over instances; ties count half),
    with its bootstrap interval. ``a`` and ``b`` are ``(runs, tasks)`` matrices of scores."""
    from rliable import metrics

    def poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        # rliable counts x > y as an improvement; our scores improve downwards.
        return np.array([metrics.probability_of_improvement(-x, -y)])

    point, ci = interval_estimates({"ab": [a, b]}, poi, samples, confidence, seed)
    return {
        "probability_of_improvement": float(point["ab"][0]),
        "probability_of_improvement_ci": [float(ci["ab"][0, 0]), float(ci["ab"][1, 0])],
    }


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
