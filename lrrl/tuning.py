"""Tuning baseline schedules on the tuning instances, every family with the same budget.

A candidate's score is the mean over its tuning episodes of ``log(loss_T / loss_0)`` (a
divergence counts as ``+inf``); the best candidate is then evaluated, once, on the test
instances. Grid tuning plays every candidate of every family in one batched rollout;
optuna's TPE plays its trials one after another (each trial's episodes batched), so the
sampler sees every result and the search is reproducible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrrl.agents.baselines import ScheduleController, default_grid, make_schedule, search_space
from lrrl.config import EnvSpec, EvalConfig
from lrrl.rollout import Episode, jobs_for, run_jobs

#: Optuna trials per baseline when ``eval.tune_budget`` is not set.
DEFAULT_TRIALS = 20


def score(episodes: Sequence[Episode]) -> float:
    """Mean ``log(loss_T / loss_0)``; lower is better, a divergence counts as ``+inf``."""
    return float(np.mean([e.log_loss_ratio for e in episodes]))


@dataclass
class Tuned:
    """The outcome of tuning one baseline on the tuning instances."""

    controller: ScheduleController
    tune_score: float
    candidates: int
    tuner: str
    time_s: float

    def details(self, split: str) -> dict[str, Any]:
        return {
            "params": self.controller.params,
            "tuned_on": split,
            "tuner": self.tuner,
            "candidates": self.candidates,
            "tune_log_loss_ratio": self.tune_score,
            "tuning_time_s": self.time_s,
        }


def candidates(name: str, ev: EvalConfig, seed: int) -> list[Any]:
    """The grid of baseline ``name``, cut to ``eval.tune_budget`` by a seeded random subset."""
    grid = default_grid(name, ev.lr_grid, ev.grids.get(name))
    budget = ev.tune_budget
    if budget is None or len(grid) <= budget:
        return grid
    keep = np.sort(np.random.default_rng(seed).choice(len(grid), budget, replace=False))
    return [grid[i] for i in keep]


def tune(
    env: EnvSpec,
    names: Mapping[str, str],
    runs: Sequence[tuple[Any, int]],
    ev: EvalConfig,
    advance: Callable[[int], None] | None = None,
) -> dict[str, Tuned]:
    """Tune each baseline (``names``: row name -> baseline name) on ``runs`` in ``env``."""
    if ev.tuner == "optuna":
        return {row: tune_optuna(env, row, name, runs, ev, advance) for row, name in names.items()}
    start = time.perf_counter()
    plans = {row: candidates(name, ev, ev.seed) for row, name in names.items()}
    controllers = {
        row: [ScheduleController(row, s) for s in schedules] for row, schedules in plans.items()
    }
    flat = [c for row in plans for c in controllers[row]]
    episodes = run_jobs(env.id, env.options, jobs_for(flat, runs), ev.n_jobs, advance, ev.chunk)
    elapsed = (time.perf_counter() - start) / max(1, len(plans))
    k, at, out = len(runs), 0, {}
    for row, ctrls in controllers.items():
        values = [score(episodes[(at + i) * k : (at + i + 1) * k]) for i in range(len(ctrls))]
        at += len(ctrls)
        best = min(range(len(values)), key=lambda i: (values[i], i))  # first one on ties
        out[row] = Tuned(ctrls[best], values[best], len(ctrls), "grid", elapsed)
    return out


def tune_optuna(
    env: EnvSpec,
    row: str,
    name: str,
    runs: Sequence[tuple[Any, int]],
    ev: EvalConfig,
    advance: Callable[[int], None] | None = None,
) -> Tuned:
    """Tune baseline ``name`` with optuna's TPE sampler (seeded) for ``eval.tune_budget`` trials."""
    try:
        import optuna
    except ImportError as err:  # optional dependency
        raise ValueError("eval.tuner='optuna' needs optuna: pip install 'lrrl[tune]'") from err

    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(name, ev.lr_grid, ev.grids.get(name))
    study = optuna.create_study(
        direction="minimize", sampler=optuna.samplers.TPESampler(seed=ev.seed)
    )
    trials = ev.tune_budget or DEFAULT_TRIALS
    best: tuple[float, ScheduleController] | None = None
    for _ in range(trials):
        trial = study.ask()
        params: dict[str, Any] = {}
        for key, spec in space.items():
            if isinstance(spec, list):
                params[key] = trial.suggest_categorical(key, spec)
            elif len(spec) == 2:
                params[key] = trial.suggest_int(key, int(spec[0]), int(spec[1]))
            else:
                params[key] = trial.suggest_float(key, spec[0], spec[1], log=bool(spec[2]))
        controller = ScheduleController(row, make_schedule(name, **params))
        episodes = run_jobs(env.id, env.options, jobs_for([controller], runs), ev.n_jobs, advance)
        value = score(episodes)
        # optuna wants finite values; a diverging candidate is simply very bad
        study.tell(trial, value if math.isfinite(value) else 1e9)
        if best is None or value < best[0]:
            best = (value, controller)
    assert best is not None, f"eval.tune_budget must allow at least one trial for {name!r}"
    return Tuned(best[1], best[0], trials, "optuna", time.perf_counter() - start)


def hindsight(
    env: EnvSpec,
    names: Mapping[str, str],
    runs: Sequence[tuple[Any, int]],
    ev: EvalConfig,
    advance: Callable[[int], None] | None = None,
) -> dict[str, list[Episode]]:
    """Per test episode, the best candidate of each baseline's grid on that very episode.

    ``names`` maps a row name (e.g. ``hindsight_constant``) to a baseline. No schedule of the
    family can do better on the episode, so the gap between the tuned baseline and this
    reference is the most any adaptive schedule could gain over the family.
    """
    out = {}
    for row, name in names.items():
        controllers = [ScheduleController(row, s) for s in candidates(name, ev, ev.seed)]
        episodes = run_jobs(
            env.id, env.options, jobs_for(controllers, runs), ev.n_jobs, advance, ev.chunk
        )
        k = len(runs)
        best = []
        for j in range(k):
            tried = [episodes[i * k + j] for i in range(len(controllers))]
            best.append(min(tried, key=lambda e: e.log_loss_ratio))
        out[row] = best
    return out
