"""The noisy-training study: tune every scheduler on every problem, then evaluate it.

For each problem (family x noise condition) and scheduler, ``budget`` candidates (see
:mod:`noisy.tuning`) are each trained on the tuning seeds; the best is then trained on
the evaluation seeds, which never overlap the tuning seeds. All runs of a phase go to one
joblib pool, most expensive families first, so the pool stays busy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import joblib
import torch

from noisy.problems import FAMILIES, NOISES, NoiseStrengths, check_problem
from noisy.training import SCHEDULERS, RunResult, RunSpec, train
from noisy.tuning import candidates, objective, pick_best, search_space, stable_seed

#: Evaluation seeds are 0, 1, ...; tuning seeds start here, so the two never meet.
TUNING_SEED_BASE = 10_000
#: Rough relative cost of one step of each family (for ordering the pool, not for reporting).
_COST = {"gru": 6.0, "cnn": 2.5, "mlp": 1.0, "softmax": 0.7, "nmf": 0.5}


@dataclass(frozen=True)
class StudyConfig:
    """The size of the study: which problems and schedulers, how long, how many seeds."""

    families: tuple[str, ...] = tuple(FAMILIES)
    noises: tuple[str, ...] = NOISES
    schedulers: tuple[str, ...] = SCHEDULERS
    steps: int = 300
    eval_every: int = 10
    budget: int = 8
    tune_seeds: int = 2
    eval_seeds: int = 5
    seed: int = 0  # seeds the candidates' Latin hypercubes
    strengths: NoiseStrengths = field(default_factory=NoiseStrengths)

    def __post_init__(self) -> None:
        if not self.families or not self.noises:
            raise ValueError(
                f"families={self.families!r}, noises={self.noises!r} are invalid: expected "
                "at least one of each"
            )
        for family in self.families:
            for noise in self.noises:
                check_problem(family, noise)
        if "cosine" not in self.schedulers or len(self.schedulers) < 2:
            raise ValueError(
                f"schedulers={self.schedulers!r} is invalid: expected cosine and at least one "
                f"GreedyLR variant from {SCHEDULERS}"
            )
        for name in ("budget", "tune_seeds", "eval_seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: expected >= 1")
        if self.eval_seeds > TUNING_SEED_BASE:
            raise ValueError(
                f"eval_seeds={self.eval_seeds} is invalid: expected <= {TUNING_SEED_BASE}"
            )
        # Building one spec checks steps and eval_every.
        RunSpec("mlp", "none", "cosine", {}, 0, self.steps, self.eval_every)

    def spec(self, family: str, noise: str, scheduler: str, params: dict, seed: int) -> RunSpec:
        return RunSpec(
            family, noise, scheduler, params, seed, self.steps, self.eval_every, self.strengths
        )

    def metrics_per_run(self, scheduler: str) -> int:
        """How many ``step(metric)`` calls GreedyLR gets in one run at this cadence."""
        return self.steps if scheduler == "greedy_step" else self.steps // self.eval_every

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(s for s in self.schedulers if s != "cosine")


PRESETS = {
    "default": StudyConfig(),
    "quick": StudyConfig(steps=100, budget=4, tune_seeds=1, eval_seeds=2),
}


@dataclass
class StudyResult:
    """Every evaluation run, every tuning trial's objective, and where the time went."""

    config: StudyConfig
    runs: list[RunResult]
    tuning: list[dict[str, Any]]
    wall_s: dict[str, float]
    cpu_s: dict[str, float]  # summed over runs: the study's cost on one free core


def _train_one(spec: RunSpec) -> RunResult:
    torch.set_num_threads(1)  # one thread per worker: the tensors are small
    return train(spec)


def run_all(specs: Sequence[RunSpec], n_jobs: int) -> list[RunResult]:
    """Train every spec (in a joblib pool when ``n_jobs > 1``), results in spec order."""
    order = sorted(range(len(specs)), key=lambda i: -_COST[specs[i].family])
    done = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(_train_one)(specs[i]) for i in order)
    out: list[RunResult | None] = [None] * len(specs)
    for i, result in zip(order, done, strict=True):
        out[i] = result
    return out  # type: ignore[return-value]


def tune(
    config: StudyConfig, n_jobs: int
) -> tuple[dict[tuple[str, str, str], dict[str, Any]], list[dict[str, Any]], float]:
    """The best parameters of every (family, noise, scheduler), every trial's objective, and
    the CPU seconds the tuning runs took."""
    cells = [(f, n, s) for f in config.families for n in config.noises for s in config.schedulers]
    trials: list[tuple[tuple[str, str, str], int, dict[str, Any]]] = []
    specs = []
    for family, noise, scheduler in cells:
        space = search_space(scheduler, family, config.metrics_per_run(scheduler))
        seed = stable_seed(config.seed, family, noise, scheduler)
        for i, params in enumerate(candidates(space, config.budget, seed)):
            trials.append(((family, noise, scheduler), i, params))
            for k in range(config.tune_seeds):
                specs.append(config.spec(family, noise, scheduler, params, TUNING_SEED_BASE + k))
    results = run_all(specs, n_jobs)
    best: dict[tuple[str, str, str], dict[str, Any]] = {}
    records = []
    per_trial = config.tune_seeds
    for cell in cells:
        rows = [(i, t) for i, t in enumerate(trials) if t[0] == cell]
        objectives = [objective(results[i * per_trial : (i + 1) * per_trial]) for i, _ in rows]
        chosen = pick_best(objectives)
        best[cell] = rows[chosen][1][2]
        records.append(
            {
                "problem": f"{cell[0]}/{cell[1]}",
                "scheduler": cell[2],
                "candidates": [
                    {"params": t[2], "objective": o}
                    for (_, t), o in zip(rows, objectives, strict=True)
                ],
                "best": chosen,
            }
        )
    return best, records, sum(r.cpu_s for r in results)


def run_study(
    config: StudyConfig, n_jobs: int = 1, log: Callable[[str], None] = print
) -> StudyResult:
    """Tune, then evaluate every scheduler on every problem over the evaluation seeds."""
    start = time.perf_counter()
    n_cells = len(config.families) * len(config.noises) * len(config.schedulers)
    log(
        f"tuning: {n_cells} (problem, scheduler) cells x {config.budget} candidates x "
        f"{config.tune_seeds} seeds = {n_cells * config.budget * config.tune_seeds} runs"
    )
    best, records, tuning_cpu = tune(config, n_jobs)
    tuned = time.perf_counter()
    specs = [
        config.spec(family, noise, scheduler, best[(family, noise, scheduler)], seed)
        for (family, noise, scheduler) in best
        for seed in range(config.eval_seeds)
    ]
    log(f"tuning took {tuned - start:.0f} s; evaluating: {len(specs)} runs")
    runs = run_all(specs, n_jobs)
    end = time.perf_counter()
    return StudyResult(
        config=config,
        runs=runs,
        tuning=records,
        wall_s={"tuning": tuned - start, "evaluation": end - tuned, "total": end - start},
        cpu_s={"tuning": tuning_cpu, "evaluation": sum(r.cpu_s for r in runs)},
    )


def config_to_json(config: StudyConfig) -> dict[str, Any]:
    """The config as plain JSON values (read back by :func:`config_from_json`)."""
    out = {f.name: getattr(config, f.name) for f in fields(config)}
    out["strengths"] = asdict(config.strengths)
    return out


def config_from_json(data: dict[str, Any]) -> StudyConfig:
    """The config written by :func:`config_to_json`."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    values["strengths"] = NoiseStrengths(**data["strengths"])
    return StudyConfig(**values)


def with_overrides(config: StudyConfig, **overrides: Any) -> StudyConfig:
    """``config`` with the given fields replaced (``None`` values are ignored)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
