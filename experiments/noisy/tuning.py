"""Equal-budget tuning of every scheduler: the same number of candidates, seeds and objective.

Each scheduler's candidates are a seeded Latin hypercube over its search space (so with
``budget`` candidates every dimension, the learning rate included, is split into ``budget``
strata), each candidate is trained on the same tuning seeds, and the candidate with the lowest
mean log final loss wins. Cosine annealing searches three dimensions (peak lr, final-lr ratio,
warmup); GreedyLR searches seven (starting lr, factor, patience, min/max lr ratios, smoothing,
window) with the same number of candidates: equal budget, not equal coverage.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import qmc

from noisy.problems import FAMILIES
from noisy.training import SCHEDULERS, RunResult

KINDS = ("log", "uniform", "int_log", "int", "bool")


@dataclass(frozen=True)
class Dimension:
    """One tuned parameter: its name, how a unit coordinate maps to it, and its range."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0

    def value(self, u: float) -> Any:
        """The parameter value at unit coordinate ``u`` in [0, 1)."""
        if self.kind == "log":
            return float(
                math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
            )
        if self.kind == "uniform":
            return float(self.low + u * (self.high - self.low))
        if self.kind == "int_log":
            lo, hi = math.log(self.low), math.log(self.high + 1)
            return min(int(self.high), int(math.exp(lo + u * (hi - lo))))
        if self.kind == "int":
            return min(int(self.high), int(self.low + u * (self.high - self.low + 1)))
        return bool(u < 0.5)


def search_space(scheduler: str, family: str, metrics_per_run: int) -> list[Dimension]:
    """The tuned parameters of ``scheduler`` on ``family``.

    ``metrics_per_run`` is how many ``step(metric)`` calls GreedyLR gets in one run (one per
    optimizer step, or one per evaluation); its patience and smoothing window are searched in
    proportion to it, so both cadences can range from reacting at once to hardly reacting.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r} is invalid: expected one of {SCHEDULERS}")
    lr = Dimension("lr", "log", *FAMILIES[family].lr_range)
    if scheduler == "cosine":
        return [
            lr,
            Dimension("min_ratio", "log", 1e-3, 0.3),
            Dimension("warmup", "uniform", 0, 0.1),
        ]
    most = max(1, metrics_per_run // 6)
    return [
        lr,
        Dimension("factor", "uniform", 0.5, 0.99),
        Dimension("patience", "int_log", 1, most)
        if most > 4
        else Dimension("patience", "int", 0, most),
        Dimension("min_lr_ratio", "log", 1e-3, 0.3),
        Dimension("max_lr_ratio", "log", 1.0, 30.0),
        Dimension("smooth", "bool"),
        Dimension("window_size", "int_log", 2, max(2, metrics_per_run // 3)),
    ]


def stable_seed(*parts: object) -> int:
    """A seed from names and numbers that is the same in every process (unlike ``hash``)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def candidates(space: Sequence[Dimension], budget: int, seed: int) -> list[dict[str, Any]]:
    """``budget`` parameter sets from a seeded Latin hypercube over ``space``."""
    if budget < 1:
        raise ValueError(f"budget={budget!r} is invalid: expected an integer >= 1")
    unit = qmc.LatinHypercube(d=len(space), rng=np.random.default_rng(seed)).random(budget)
    return [{d.name: d.value(float(u)) for d, u in zip(space, row, strict=True)} for row in unit]


def objective(results: Sequence[RunResult]) -> float:
    """What tuning minimises: the mean log final loss over the tuning seeds (inf if one diverged)."""
    if not results:
        raise ValueError("objective of no runs: expected at least one tuning run")
    finals = [r.final_loss for r in results]
    if not all(math.isfinite(x) and x > 0 for x in finals):
        return math.inf
    return float(np.mean(np.log(finals)))


def pick_best(objectives: Sequence[float]) -> int:
    """The index of the lowest objective (the first on ties; 0 if every candidate diverged)."""
    if not objectives:
        raise ValueError("no candidates to pick from: expected at least one objective")
    values = np.asarray(objectives, dtype=float)
    if np.isnan(values).any():
        raise ValueError(f"objectives contain NaN: {list(objectives)}")
    return int(np.argmin(values))
