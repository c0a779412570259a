"""One harness for every comparison: build envs, roll out controllers, tune, summarise.

Every scheduler, learned or heuristic, is played through the same env on the same instances
with the same episode seeds (common random numbers), so differences in final loss come from
the schedules and not from minibatch or noise draws.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

import lrrl  # noqa: F401  (registers the environments)
from lrrl.agents.baselines import Controller, ScheduleController
from lrrl.envs.base import check_options

#: Keys of an env config that are not constructor arguments.
ENV_META_KEYS = ("name", "id")


def split_env_config(env_cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(env_id, kwargs)`` from an env config such as ``conf/env/nmf.yaml``."""
    if "id" not in env_cfg:
        raise ValueError("env config has no 'id' (e.g. id: lrrl/NMF-v0)")
    kwargs = {k: v for k, v in env_cfg.items() if k not in ENV_META_KEYS}
    return env_cfg["id"], kwargs


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with the env's ``horizon`` as the time limit and checked options."""
    if env_id not in gym.registry:
        lrrl_ids = sorted(k for k in gym.registry if k.startswith("lrrl/"))
        raise ValueError(f"env id={env_id!r} is invalid: expected one of {lrrl_ids}")
    spec = gym.spec(env_id)
    entry = spec.entry_point
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    check_options(f"env ({env_id})", kwargs, accepted)
    horizon = kwargs.get("horizon", spec.max_episode_steps)
    return gym.make(env_id, max_episode_steps=horizon, disable_env_checker=True, **kwargs)


@dataclass
class Episode:
    """One controller's run on one instance."""

    scheduler: str
    instance: str
    seed: int
    lr: list[float] = field(default_factory=list)
    lr_bound: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # loss[0] before the first decision
    clipped: list[bool] = field(default_factory=list)
    reward: float = 0.0
    diverged: bool = False

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if not self.diverged else math.inf

    @property
    def log_loss_ratio(self) -> float:
        """``log(loss_T / loss_0)``: comparable across instances of different scales."""
        if self.diverged or not self.loss[-1] > 0:
            return math.inf if self.diverged else -math.inf
        return math.log(self.loss[-1] / self.loss[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "seed": self.seed,
            "lr": self.lr,
            "loss": self.loss,
            "lr_bound": [b if math.isfinite(b) else None for b in self.lr_bound],
            "diverged": self.diverged,
        }


def rollout(env: gym.Env, controller: Controller, instance: Any, seed: int) -> Episode:
    """Play one episode of ``controller`` on ``instance`` with episode seed ``seed``."""
    obs, info = env.reset(seed=seed, options={"instance": instance})
    controller.reset(env, info)
    episode = Episode(controller.name, info["instance"], seed, loss=[info["loss"]])
    done = False
    while not done:
        action = controller.act(obs, info, env)
        obs, reward, terminated, truncated, info = env.step(action)
        episode.lr.append(float(info["lr"]))
        episode.lr_bound.append(float(info["lr_bound"]))
        episode.loss.append(float(info["loss"]))
        episode.clipped.append(bool(info["clipped"]))
        episode.reward += float(reward)
        episode.diverged = episode.diverged or bool(info["diverged"])
        done = terminated or truncated
    return episode


def episode_seeds(
    instances: Sequence[Any], episodes_per_instance: int, base_seed: int
) -> list[tuple[Any, int]]:
    """``(instance, seed)`` pairs shared by every scheduler under comparison."""
    return [
        (inst, base_seed * 10_000 + 100 * i + k)
        for i, inst in enumerate(instances)
        for k in range(episodes_per_instance)
    ]


def evaluate(
    env: gym.Env, controller: Controller, runs: Sequence[tuple[Any, int]]
) -> list[Episode]:
    """Roll out ``controller`` on every ``(instance, seed)`` of ``runs``."""
    return [rollout(env, controller, inst, seed) for inst, seed in runs]


def score(episodes: Sequence[Episode]) -> float:
    """Mean ``log(loss_T / loss_0)``; lower is better, a divergence counts as +inf."""
    return float(np.mean([e.log_loss_ratio for e in episodes]))


def tune(
    env: gym.Env,
    name: str,
    candidates: Sequence[Any],
    runs: Sequence[tuple[Any, int]],
    progress: Callable[[int], None] | None = None,
) -> tuple[ScheduleController, float]:
    """The candidate schedule with the best :func:`score` on ``runs`` (training instances)."""
    best, best_score = None, math.inf
    for schedule in candidates:
        controller = ScheduleController(name, schedule)
        value = score(evaluate(env, controller, runs))
        if value < best_score or best is None:
            best, best_score = controller, value
        if progress is not None:
            progress(1)
    assert best is not None, f"no candidates to tune baseline {name!r}"
    return best, best_score


def summarise(episodes: Sequence[Episode]) -> dict[str, Any]:
    """Per-scheduler summary: means over episodes plus the per-instance figures."""
    finals = np.array([e.final_loss for e in episodes])
    ratios = np.array([e.log_loss_ratio for e in episodes])
    finite = np.isfinite(ratios)
    return {
        "final_loss": float(np.mean(finals)),
        "final_loss_ratio": float(np.mean(np.exp(ratios))),
        "log_loss_ratio": float(np.mean(ratios)),
        "log_loss_ratio_std": float(np.std(ratios[finite])) if finite.any() else math.nan,
        "divergence_rate": float(np.mean([e.diverged for e in episodes])),
        "clip_rate": float(np.mean([np.mean(e.clipped) if e.clipped else 0.0 for e in episodes])),
        "episodes": len(episodes),
        "per_instance": {
            f"{e.instance}@{e.seed}": {
                "final_loss": e.final_loss,
                "log_loss_ratio": e.log_loss_ratio,
            }
            for e in episodes
        },
    }
