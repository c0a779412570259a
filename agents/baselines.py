"""Baseline learning-rate schedules that act in any lrrl environment.

A schedule maps the decision index ``t`` (of ``horizon``) and the env's last ``info`` to a
learning rate; :class:`ScheduleController` turns that into the env's action through
``env.action_for_lr``, so the env's clipping to its stability bound applies to baselines
exactly as to agents. Each schedule family comes with a small default tuning grid.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
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
class FollowBound:
    """``fraction`` times the env's clip (``bound_scale * lr_bound``) at every decision."""

    fraction: float = 1.0
    kind: ClassVar[str] = "follow_bound"

    def __call__(self, t: int, horizon: int, info: dict[str, Any]) -> float:
        return math.inf  # resolved against the env's clip by the controller


SCHEDULES: dict[str, type] = {
    cls.kind: cls for cls in (Constant, StepDecay, Exponential, Cosine, FollowBound)
}


class ScheduleController:
    """Plays a schedule in an env: each decision requests the schedule's learning rate exactly.

    The request bypasses the agent's action mapping (see ``LRControlEnv.request_lr``), so the
    baseline can use any learning rate; the env's clipping to its bound still applies.
    """

    def __init__(self, name: str, schedule: Any) -> None:
        self.name = name
        self.schedule = schedule
        self._t = 0

    @property
    def params(self) -> dict[str, Any]:
        return {"kind": self.schedule.kind, **asdict(self.schedule)}

    def reset(self, env: Any, info: dict[str, Any]) -> None:
        self._t = 0

    def act(self, obs: np.ndarray, info: dict[str, Any], env: Any) -> np.ndarray:
        unwrapped = env.unwrapped
        lr = self.schedule(self._t, unwrapped.horizon, info)
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


def default_grid(
    kind: str, lrs: list[float], options: dict[str, list[Any]] | None = None
) -> list[Any]:
    """Candidate schedules of one family: ``lrs`` crossed with the family's other options.

    ``options`` overrides the per-family defaults, e.g. ``{"gamma": [0.1, 0.5]}``.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"baseline={kind!r} is invalid: expected one of {sorted(SCHEDULES)}")
    defaults: dict[str, dict[str, list[Any]]] = {
        "constant": {},
        "step_decay": {"gamma": [0.1, 0.3, 0.5], "step_fraction": [0.25, 0.33, 0.5]},
        "exponential": {"final_ratio": [0.001, 0.01, 0.1]},
        "cosine": {"min_ratio": [0.0, 0.1]},
        "follow_bound": {"fraction": [0.25, 0.5, 0.75, 1.0]},
    }
    grid = {**defaults[kind], **(options or {})}
    if kind != "follow_bound":
        grid = {"lr": list(lrs), **grid}
    keys = list(grid)
    unknown = set(keys) - set(SCHEDULES[kind].__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for baseline {kind!r}")
    return [
        SCHEDULES[kind](**dict(zip(keys, values, strict=True)))
        for values in itertools.product(*grid.values())
    ]
