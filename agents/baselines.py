"""Baseline learning-rate schedules that act in any lrrl environment.

A schedule maps the decision index ``t`` (of ``horizon``) to a learning rate, elementwise over
numpy arrays, so one schedule drives a whole batch of episodes; :class:`ScheduleController`
requests that learning rate exactly from the env (``request_lr``), whose clip to its stability
bound then applies to baselines exactly as to agents. Schedules that react to the loss
(ReduceLROnPlateau, GreedyLR) keep state per episode: one real PyTorch scheduler on a
one-parameter optimizer per episode, stepped on the env's loss after every decision or, at
``cadence="step"``, on the training loss of every inner optimizer step (GreedyLR's natural
cadence).

Each named baseline (:data:`BASELINES`) is a schedule family with a default tuning grid and a
search space over every one of its hyperparameters (:func:`default_grid`, :func:`search_space`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from lrrl.rollout import Decision, DecisionState

CADENCES = ("decision", "step")


@dataclass(frozen=True)
class Constant:
    """``lr`` at every decision."""

    lr: float
    kind: ClassVar[str] = "constant"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        return np.full(np.shape(t), self.lr, dtype=np.float64)


@dataclass(frozen=True)
class StepDecay:
    """``lr * gamma ** floor(t / (step_fraction * horizon))``."""

    lr: float
    gamma: float = 0.1
    step_fraction: float = 0.33
    kind: ClassVar[str] = "step_decay"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        every = np.maximum(1, np.round(self.step_fraction * np.asarray(horizon)))
        return self.lr * self.gamma ** (np.asarray(t) // every)


@dataclass(frozen=True)
class Exponential:
    """``lr * (final_ratio ** (t / horizon))``: a geometric decay to ``final_ratio * lr``."""

    lr: float
    final_ratio: float = 0.01
    kind: ClassVar[str] = "exponential"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        return self.lr * self.final_ratio ** (np.asarray(t) / np.asarray(horizon))


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from ``lr`` to ``min_ratio * lr`` over the horizon."""

    lr: float
    min_ratio: float = 0.0
    kind: ClassVar[str] = "cosine"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        low = self.min_ratio * self.lr
        progress = np.asarray(t) / np.asarray(horizon)
        return low + 0.5 * (self.lr - low) * (1.0 + np.cos(math.pi * progress))


@dataclass(frozen=True)
class Linear:
    """Linear decay from ``lr`` to ``final_ratio * lr`` over the horizon."""

    lr: float
    final_ratio: float = 0.0
    kind: ClassVar[str] = "linear"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        return self.lr * (1.0 - (1.0 - self.final_ratio) * np.asarray(t) / np.asarray(horizon))


@dataclass(frozen=True)
class WarmupStableDecay:
    """Warmup-stable-decay: linear warmup, a constant ``lr``, then a linear cool-down.

    Warmup takes the first ``warmup_fraction`` of the horizon (from ``lr / warmup`` up to
    ``lr``); the last ``decay_fraction`` decays linearly towards ``final_ratio * lr``, which,
    as for :class:`Linear`, is reached at ``t = horizon`` (so every applied lr is positive).
    """

    lr: float
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    final_ratio: float = 0.0
    kind: ClassVar[str] = "wsd"

    def __call__(self, t: np.ndarray, horizon: np.ndarray) -> np.ndarray:
        t, horizon = np.asarray(t, dtype=np.float64), np.asarray(horizon, dtype=np.float64)
        warmup = np.round(self.warmup_fraction * horizon)
        decay = np.maximum(1, np.round(self.decay_fraction * horizon))
        start = horizon - decay
        with np.errstate(divide="ignore", invalid="ignore"):
            rising = self.lr * (t + 1) / warmup
        falling = self.lr * (1.0 - (1.0 - self.final_ratio) * (t - start) / decay)
        return np.where(t < warmup, rising, np.where(t < start, self.lr, falling))


class _TorchRunner:
    """One episode of a metric-driven PyTorch scheduler on a one-parameter SGD optimizer."""

    def __init__(self, lr: float, factory: Callable[[Any], Any]) -> None:
        import torch

        self.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        self.scheduler = factory(self.optimizer)

    def step(self, metric: float) -> None:
        self.scheduler.step(metric)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass(frozen=True)
class ReduceOnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` stepped on the loss after each decision."""

    lr: float
    factor: float = 0.5
    patience: int = 2
    threshold: float = 1e-3
    cooldown: int = 0
    min_ratio: float = 1e-4
    kind: ClassVar[str] = "plateau"
    cadence: ClassVar[str] = "decision"

    def start(self) -> _TorchRunner:
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        return _TorchRunner(
            self.lr,
            lambda opt: ReduceLROnPlateau(
                opt,
                mode="min",
                factor=self.factor,
                patience=self.patience,
                threshold=self.threshold,
                cooldown=self.cooldown,
                min_lr=self.min_ratio * self.lr,
            ),
        )


@dataclass(frozen=True)
class GreedyLRSchedule:
    """GreedyLR on the loss; ``None`` keeps the scheduler's default for that argument.

    ``cadence="decision"`` steps it on the env's loss after each decision (how transformers'
    ``Trainer`` steps it, once per evaluation); ``cadence="step"`` on the training loss of
    every inner optimizer step (its authors' use). ``factory(optimizer, **kwargs)`` builds the
    scheduler (a picklable callable, so parallel evaluation works); by default
    :class:`lrrl.schedulers.GreedyLR`.
    """

    lr: float
    factor: float | None = None
    patience: int | None = None
    threshold: float | None = None
    threshold_mode: str | None = None
    cooldown: int | None = None
    warmup: int | None = None
    min_lr: float | None = None
    max_lr: float | None = None
    smooth: bool | None = None
    window_size: int | None = None
    cadence: str = "decision"
    factory: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    kind: ClassVar[str] = "greedylr"

    def __post_init__(self) -> None:
        if self.cadence not in CADENCES:
            raise ValueError(f"cadence={self.cadence!r} is invalid: expected one of {CADENCES}")

    def scheduler_kwargs(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("lr", "factory", "cadence") and getattr(self, f.name) is not None
        }

    def start(self) -> _TorchRunner:
        from lrrl.schedulers import GreedyLR

        factory = self.factory or GreedyLR
        kwargs = self.scheduler_kwargs()
        return _TorchRunner(self.lr, lambda opt: factory(opt, **kwargs))


@dataclass(frozen=True)
class FollowBound:
    """``fraction`` times the env's clip (``bound_scale * lr_bound``) at every decision."""

    fraction: float = 1.0
    kind: ClassVar[str] = "follow_bound"


SCHEDULES: dict[str, type] = {
    cls.kind: cls
    for cls in (
        Constant,
        StepDecay,
        Exponential,
        Cosine,
        Linear,
        WarmupStableDecay,
        ReduceOnPlateau,
        GreedyLRSchedule,
        FollowBound,
    )
}


def unavailable(name: str, env: Any | None) -> str | None:
    """Why baseline ``name`` cannot run (in ``env``, when given), or ``None`` if it can."""
    if BASELINES[name].kind == "follow_bound" and env is not None:
        clip = getattr(env.unwrapped, "clip", math.inf)
        if not math.isfinite(clip):
            return f"{name} skipped: the env has no stability bound (its clip is inf)"
    return None


class ScheduleController:
    """Plays a schedule in a batch of episodes, requesting its learning rate exactly.

    The request bypasses the agent's action mapping (see ``LRControlEnv.request_lr``), so a
    baseline can use any learning rate; the env's clip still applies. A schedule whose lr is
    ``inf`` asks for "as high as allowed": the clip.
    """

    def __init__(self, name: str, schedule: Any) -> None:
        self.name = name
        self.schedule = schedule
        self.stepwise = getattr(schedule, "cadence", "decision") == "step"
        self._runners: list[_TorchRunner] = []

    @property
    def params(self) -> dict[str, Any]:
        values = {
            f.name: getattr(self.schedule, f.name)
            for f in fields(self.schedule)
            if f.name != "factory" and getattr(self.schedule, f.name) is not None
        }
        return {"kind": self.schedule.kind, **values}

    def reset(self, n: int) -> None:
        start = getattr(self.schedule, "start", None)
        self._runners = [start() for _ in range(n)] if start is not None else []

    def act(self, obs: np.ndarray, state: DecisionState) -> Decision:
        schedule = self.schedule
        if isinstance(schedule, FollowBound):
            lr = schedule.fraction * state.clip
        elif self._runners:
            if not self.stepwise:  # the loss after the previous decision (none before t = 0)
                for i in np.flatnonzero(state.t > 0):
                    self._runners[i].step(float(state.loss[i]))
            lr = np.array([runner.lr for runner in self._runners])
        else:
            lr = schedule(state.t, state.horizon)
        lr = np.where(np.isinf(lr), state.clip, lr)
        return Decision(lr=np.asarray(lr, dtype=np.float64))

    def inner(self, k: int, rows: np.ndarray, losses: np.ndarray) -> np.ndarray:
        """Step the rows' schedulers on an inner step's training losses; their next lrs."""
        out = np.empty(rows.size)
        for j, (i, loss) in enumerate(zip(rows, losses, strict=True)):
            runner = self._runners[i]
            runner.step(float(loss))
            out[j] = runner.lr
        return out

    def __getstate__(self) -> dict[str, Any]:
        # The runners hold torch optimizers; they are rebuilt by ``reset`` anyway.
        return {"name": self.name, "schedule": self.schedule, "stepwise": self.stepwise}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["schedule"])  # type: ignore[misc]


@dataclass(frozen=True)
class Baseline:
    """A named baseline: a schedule kind, fixed options, a tuning grid and a search space.

    Grid and space cover every option but ``lr`` (which spans the learning-rate grid);
    search spaces hold ``(low, high, log)`` floats, ``(low, high)`` ints or lists of choices.
    """

    kind: str
    grid: dict[str, list[Any]]
    space: dict[str, Any]
    fixed: dict[str, Any] = field(default_factory=dict)
    tunes_lr: bool = True


BASELINES: dict[str, Baseline] = {
    "constant": Baseline("constant", {}, {}),
    "step_decay": Baseline(
        "step_decay",
        {"gamma": [0.1, 0.3, 0.5], "step_fraction": [0.25, 0.33, 0.5]},
        {"gamma": (0.05, 0.9, True), "step_fraction": (0.1, 0.6, False)},
    ),
    "exponential": Baseline(
        "exponential", {"final_ratio": [0.001, 0.01, 0.1]}, {"final_ratio": (1e-4, 0.5, True)}
    ),
    "cosine": Baseline("cosine", {"min_ratio": [0.0, 0.1]}, {"min_ratio": (0.0, 0.3, False)}),
    "linear": Baseline("linear", {"final_ratio": [0.0, 0.1]}, {"final_ratio": (0.0, 0.3, False)}),
    "wsd": Baseline(
        "wsd",
        {"warmup_fraction": [0.0, 0.1], "decay_fraction": [0.1, 0.3]},
        {"warmup_fraction": (0.0, 0.2, False), "decay_fraction": (0.05, 0.5, False)},
    ),
    "plateau": Baseline(
        "plateau",
        {"factor": [0.3, 0.5], "patience": [1, 3]},
        {"factor": (0.1, 0.9, False), "patience": (0, 5)},
    ),
    # GreedyLR at its natural cadence, every option tuned like the other families'.
    "greedylr": Baseline(
        "greedylr",
        {
            "factor": [0.5, 0.8, 0.95],
            "patience": [2, 10, 50],
            "smooth": [False, True],
            "window_size": [10, 50],
            "min_lr": [1e-6],
            "max_lr": [10.0],
        },
        {
            "factor": (0.3, 0.99, False),
            "patience": (0, 100),
            "smooth": [False, True],
            "window_size": (2, 100),
            "min_lr": (1e-7, 1e-3, True),
            "max_lr": (0.1, 100.0, True),
        },
        fixed={"cadence": "step"},
    ),
    # GreedyLR with its defaults, stepped once per decision; only the starting lr is tuned.
    "greedylr_default": Baseline("greedylr", {}, {}, fixed={"cadence": "decision"}),
    "follow_bound": Baseline(
        "follow_bound",
        {"fraction": [0.25, 0.5, 0.75, 1.0]},
        {"fraction": (0.1, 1.0, False)},
        tunes_lr=False,
    ),
}


def _baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"baseline={name!r} is invalid: expected one of {sorted(BASELINES)}")
    return BASELINES[name]


def _check_keys(name: str, keys: list[str]) -> None:
    accepted = {f.name for f in fields(SCHEDULES[BASELINES[name].kind])} - {"factory"}
    unknown = set(keys) - accepted
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for baseline {name!r}; accepted: {sorted(accepted)}"
        )


def make_schedule(name: str, **params: Any) -> Any:
    """The schedule of baseline ``name`` with ``params`` (and the baseline's fixed options)."""
    base = _baseline(name)
    return SCHEDULES[base.kind](**{**params, **base.fixed})


def default_grid(
    name: str, lrs: list[float], options: dict[str, list[Any]] | None = None
) -> list[Any]:
    """Candidate schedules of one baseline: ``lrs`` crossed with its other options' grids.

    ``options`` overrides the baseline's default grid, e.g. ``{"gamma": [0.1, 0.5]}``.
    """
    base = _baseline(name)
    grid = {**base.grid, **(options or {})}
    if base.tunes_lr and "lr" not in grid:
        grid = {"lr": list(lrs), **grid}
    keys = list(grid)
    _check_keys(name, keys)
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"option {key!r} of baseline {name!r} needs a non-empty list")
    return [
        make_schedule(name, **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*grid.values())
    ]


def search_space(
    name: str, lrs: list[float], options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tuning space of one baseline, ``lr`` spanning ``lrs``."""
    base = _baseline(name)
    space = dict(base.space)
    if base.tunes_lr:
        space = {"lr": (float(min(lrs)), float(max(lrs)), True), **space}
    space.update(options or {})
    _check_keys(name, list(space))
    return space
