"""Baseline learning-rate schedules that act in any lrrl environment.

A schedule maps the decision index ``t`` (of ``horizon``) and the env's last ``info`` to a
learning rate; :class:`ScheduleController` turns that into the env's action through
``env.action_for_lr``, so the env's clipping to its stability bound applies to baselines
exactly as to agents. Schedules that react to the loss (ReduceLROnPlateau, GreedyLR) keep
state per episode: their :meth:`start` returns a fresh stateful callable, which steps a real
PyTorch scheduler on ``info["loss"]`` after every decision.

Each schedule family comes with a small default tuning grid (:func:`default_grid`) and a
search space for model-based tuning (:func:`search_space`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import numpy as np


class Controller(Protocol):
    """Anything that picks actions in an lrrl env: a baseline schedule or a trained agent."""

    name: str

    def reset(self, env: Any, info: dict[str, Any]) -> None: ...

    def act(self, obs: np.ndarray, info: dict[str, Any], env: Any) -> np.ndarray: ...


@dataclass(frozen=True)
class Constant:
    """``lr`` at every decision."""

    lr: float
    kind: ClassVar[str] = "constant"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        return self.lr


@dataclass(frozen=True)
class StepDecay:
    """``lr * gamma ** floor(t / (step_fraction * horizon))``."""

    lr: float
    gamma: float = 0.1
    step_fraction: float = 0.33
    kind: ClassVar[str] = "step_decay"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        every = max(1, round(self.step_fraction * horizon))
        return self.lr * self.gamma ** (t // every)


@dataclass(frozen=True)
class Exponential:
    """``lr * (final_ratio ** (t / horizon))``: a geometric decay to ``final_ratio * lr``."""

    lr: float
    final_ratio: float = 0.01
    kind: ClassVar[str] = "exponential"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        return self.lr * self.final_ratio ** (t / horizon)


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from ``lr`` to ``min_ratio * lr`` over the horizon."""

    lr: float
    min_ratio: float = 0.0
    kind: ClassVar[str] = "cosine"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        low = self.min_ratio * self.lr
        return low + 0.5 * (self.lr - low) * (1.0 + math.cos(math.pi * t / horizon))


@dataclass(frozen=True)
class Linear:
    """Linear decay from ``lr`` to ``final_ratio * lr`` over the horizon."""

    lr: float
    final_ratio: float = 0.0
    kind: ClassVar[str] = "linear"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        return self.lr * (1.0 - (1.0 - self.final_ratio) * t / horizon)


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

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        warmup = round(self.warmup_fraction * horizon)
        decay = max(1, round(self.decay_fraction * horizon))
        if t < warmup:
            return self.lr * (t + 1) / warmup
        start = horizon - decay
        if t < start:
            return self.lr
        return self.lr * (1.0 - (1.0 - self.final_ratio) * (t - start) / decay)


class _TorchRunner:
    """One episode of a metric-driven PyTorch scheduler on a one-parameter SGD optimizer."""

    def __init__(self, lr: float, factory: Callable[[Any], Any]) -> None:
        import torch

        self.optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
        self.scheduler = factory(self.optimizer)

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        if t > 0:  # the loss after the previous decision; the reset loss saw no lr of ours
            self.scheduler.step(float(info["loss"]))
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


def greedylr_class() -> type:
    """:class:`lrrl.schedulers.GreedyLR` (imported late: it pulls in the scheduler module)."""
    from lrrl.schedulers import GreedyLR

    return GreedyLR


@dataclass(frozen=True)
class GreedyLRSchedule:
    """GreedyLR stepped on the loss after each decision; ``None`` keeps the scheduler default.

    ``factory(optimizer, **kwargs)`` builds the scheduler (a picklable callable, so parallel
    evaluation works); by default the class from :func:`greedylr_class`.
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
    factory: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    kind: ClassVar[str] = "greedylr"

    def scheduler_kwargs(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("lr", "factory") and getattr(self, f.name) is not None
        }

    def start(self) -> _TorchRunner:
        factory = self.factory or greedylr_class()
        kwargs = self.scheduler_kwargs()
        return _TorchRunner(self.lr, lambda opt: factory(opt, **kwargs))


@dataclass(frozen=True)
class FollowBound:
    """``fraction`` times the env's clip (``bound_scale * lr_bound``) at every decision."""

    fraction: float = 1.0
    kind: ClassVar[str] = "follow_bound"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        return math.inf  # resolved against the env's clip by the controller


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


def unavailable(kind: str, env: Any | None) -> str | None:
    """Why baseline ``kind`` cannot run (in ``env``, when given), or ``None`` if it can."""
    if kind == "follow_bound" and env is not None:
        clip = getattr(env.unwrapped, "clip", math.inf)
        if not math.isfinite(clip):
            return "follow_bound skipped: the env has no stability bound (its clip is inf)"
    return None


class ScheduleController:
    """Plays a schedule in an env: each decision requests the schedule's learning rate exactly.

    The request bypasses the agent's action mapping (see ``LRControlEnv.request_lr``), so the
    baseline can use any learning rate; the env's clipping to its bound still applies.
    """

    def __init__(self, name: str, schedule: Any) -> None:
        self.name = name
        self.schedule = schedule
        self._t = 0
        self._fn: Callable[[int, int, dict[str, Any]], float] = schedule

    @property
    def params(self) -> dict[str, Any]:
        values = {
            f.name: getattr(self.schedule, f.name)
            for f in fields(self.schedule)
            if f.name != "factory" and getattr(self.schedule, f.name) is not None
        }
        return {"kind": self.schedule.kind, **values}

    def reset(self, env: Any, info: dict[str, Any]) -> None:
        self._t = 0
        start = getattr(self.schedule, "start", None)
        self._fn = start() if start is not None else self.schedule

    def act(self, obs: np.ndarray, info: dict[str, Any], env: Any) -> np.ndarray:
        unwrapped = env.unwrapped
        lr = self._fn(self._t, unwrapped.horizon, info)
        if isinstance(self.schedule, FollowBound):
            lr = self.schedule.fraction * unwrapped.clip
        self._t += 1
        if math.isinf(lr):  # "as high as allowed": the clip
            lr = (
                unwrapped.clip
                if math.isfinite(unwrapped.clip)
                else unwrapped.lr_for_action(np.ones(1))
            )
        unwrapped.request_lr(lr)
        return unwrapped.action_for_lr(lr)

    def __getstate__(self) -> dict[str, Any]:
        # The per-episode runner holds a torch optimizer; it is rebuilt on reset anyway.
        return {"name": self.name, "schedule": self.schedule, "_t": 0, "_fn": self.schedule}


#: Per-family default grids over everything but the learning rate.
GRIDS: dict[str, dict[str, list[Any]]] = {
    "constant": {},
    "step_decay": {"gamma": [0.1, 0.3, 0.5], "step_fraction": [0.25, 0.33, 0.5]},
    "exponential": {"final_ratio": [0.001, 0.01, 0.1]},
    "cosine": {"min_ratio": [0.0, 0.1]},
    "linear": {"final_ratio": [0.0, 0.1]},
    "wsd": {"warmup_fraction": [0.0, 0.1], "decay_fraction": [0.1, 0.3]},
    "plateau": {"factor": [0.3, 0.5], "patience": [1, 3]},
    "greedylr": {},  # the scheduler's defaults; only the starting lr is tuned
    "follow_bound": {"fraction": [0.25, 0.5, 0.75, 1.0]},
}

#: Search spaces for model-based tuning: ``(low, high, log)`` floats, ``(low, high)`` ints
#: (both as tuples) or a list of choices. ``lr`` is added from the learning-rate grid's range.
SPACES: dict[str, dict[str, Any]] = {
    "constant": {},
    "step_decay": {"gamma": (0.05, 0.9, True), "step_fraction": (0.1, 0.6, False)},
    "exponential": {"final_ratio": (1e-4, 0.5, True)},
    "cosine": {"min_ratio": (0.0, 0.3, False)},
    "linear": {"final_ratio": (0.0, 0.3, False)},
    "wsd": {
        "warmup_fraction": (0.0, 0.2, False),
        "decay_fraction": (0.05, 0.5, False),
    },
    "plateau": {"factor": (0.1, 0.9, False), "patience": (0, 5)},
    "greedylr": {},  # as in the grid: the scheduler's defaults, only the starting lr tuned
    "follow_bound": {"fraction": (0.1, 1.0, False)},
}


def _check_kind(kind: str) -> None:
    if kind not in SCHEDULES:
        raise ValueError(f"baseline={kind!r} is invalid: expected one of {sorted(SCHEDULES)}")


def _check_keys(kind: str, keys: list[str]) -> None:
    accepted = {f.name for f in fields(SCHEDULES[kind])}
    unknown = set(keys) - accepted
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for baseline {kind!r}; accepted: {sorted(accepted)}"
        )


def default_grid(
    kind: str, lrs: list[float], options: dict[str, list[Any]] | None = None
) -> list[Any]:
    """Candidate schedules of one family: ``lrs`` crossed with the family's other options.

    ``options`` overrides the per-family defaults, e.g. ``{"gamma": [0.1, 0.5]}``.
    """
    _check_kind(kind)
    grid = {**GRIDS[kind], **(options or {})}
    if kind != "follow_bound" and "lr" not in grid:
        grid = {"lr": list(lrs), **grid}
    keys = list(grid)
    _check_keys(kind, keys)
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"option {key!r} of baseline {kind!r} needs a non-empty list")
    return [
        SCHEDULES[kind](**dict(zip(keys, values, strict=True)))
        for values in itertools.product(*grid.values())
    ]


def search_space(
    kind: str, lrs: list[float], options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tuning space of one family (see :data:`SPACES`), ``lr`` spanning ``lrs``."""
    _check_kind(kind)
    space = dict(SPACES[kind])
    if kind != "follow_bound":
        space = {"lr": (float(min(lrs)), float(max(lrs)), True), **space}
    space.update(options or {})
    _check_keys(kind, list(space))
    return space
