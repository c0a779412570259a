"""What every lrrl environment shares: the learning-rate action, the info contract, divergence.

An lrrl environment wraps a real training run. Each ``step`` applies one learning rate for
``steps_per_action`` inner optimisation steps and reports, in ``info``:

========== =====================================================================
key        meaning
========== =====================================================================
lr         the learning rate actually applied (after any clipping)
lr_bound   the stability bound the learning rate was clipped to (``inf``: none)
loss       the objective after the step (NMF: training loss; DNN: validation loss)
clipped    whether the requested learning rate exceeded ``bound_scale * lr_bound``
diverged   whether the run blew up (non-finite or exploding loss)
instance   the name of the problem instance being solved
========== =====================================================================

A blow-up never raises: the episode ends with ``terminated=True`` (not ``truncated``, so an
agent does not bootstrap past it), ``info["diverged"] = True`` and a penalty reward.

Controllers that think in learning rates rather than actions (the baseline schedulers) call
:meth:`LRControlEnv.request_lr` before a step: the next step then applies exactly that learning
rate (still clipped to the bound), whatever range the agent's action mapping covers. So a
baseline is never limited by the action parametrisation chosen for the agent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Self

import gymnasium as gym
import numpy as np

INFO_KEYS = ("lr", "lr_bound", "loss", "clipped", "diverged", "instance")

#: A per-inner-step controller: ``(k, episodes, losses) -> lrs`` for inner step ``k + 1`` of
#: the given episodes, after their training losses of step ``k`` (NaN: keep the lr). It is
#: called after every inner step, the last one of a decision included (what it asks then
#: waits for the next decision).
InnerControl = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


class EnvConfig:
    """What the envs' frozen config dataclasses share (:class:`lrrl.envs.nmf.NMFConfig`,
    :class:`lrrl.envs.dnn.DNNConfig`): building one from keyword arguments, and back."""

    #: The registered id whose options these are (named in error messages).
    env_id: ClassVar[str]

    @classmethod
    def build(cls, config: Self | None = None, **kwargs: Any) -> Self:
        """``config`` with ``kwargs`` replaced (or the defaults with ``kwargs``); unknown
        keyword arguments are a one-line ``ValueError`` listing the accepted ones."""
        fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        check_options(f"env ({cls.env_id})", kwargs, fields)
        if config is not None:
            return dataclasses.replace(config, **kwargs)  # type: ignore[type-var]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The options as plain JSON values: ``cls(**to_dict())`` rebuilds the config."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {f.name: _plain(getattr(self, f.name)) for f in fields}


def _plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, all the way down."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


class LRControlEnv(gym.Env):
    """Base class of the lrrl environments: a training run whose learning rate is the action.

    Subclasses implement the training problem; this class holds what the harness, the
    baselines and the exporters rely on across environments.
    """

    metadata = {"render_modes": []}

    #: Inner optimisation steps per decision.
    steps_per_action: int
    #: Decisions per episode (the registration's ``max_episode_steps`` is set to the same value).
    horizon: int

    #: Instances by split, ``"all"`` included (set by :meth:`_hold_instances`).
    _suite: dict[str, list[Any]]
    #: Every instance by name.
    _by_name: dict[str, Any]
    #: The instances ``reset`` samples from when no instance is asked for.
    _pool: list[Any]
    _instance: Any = None

    def instances(self, split: str) -> list[Any]:
        """The problem instances of a split (``"train"``, ``"test"``, ...), in a fixed order."""
        require(split in self._suite, "split", split, f"one of {tuple(self._suite)}")
        return list(self._suite[split])

    @property
    def instance(self) -> Any:
        """The instance of the current episode."""
        return self._instance

    def _hold_instances(self, suite: dict[str, list[Any]], instances: str | Sequence[str]) -> None:
        """Keep ``suite`` (split -> instances, ``"all"`` included) and pick the sampling pool:
        a split name or a list of instance names."""
        self._suite = suite
        self._by_name = {inst.name: inst for inst in suite["all"]}
        if isinstance(instances, str):
            splits = tuple(suite)
            require(
                instances in splits, "instances", instances, f"one of {splits} or a list of names"
            )
            require(len(suite[instances]) > 0, "instances", instances, "a split with instances")
            self._pool = list(suite[instances])
        else:
            unknown = [name for name in instances if name not in self._by_name]
            require(
                not unknown and len(instances) > 0,
                "instances",
                list(instances),
                "known instance names",
            )
            self._pool = [self._by_name[name] for name in instances]

    def _resolve(self, chosen: Any) -> Any:
        """The instance ``reset(options={"instance": chosen})`` asks for: an instance, a name or
        an index into the pool."""
        if isinstance(chosen, str):
            require(chosen in self._by_name, "instance", chosen, "a known instance name")
            return self._by_name[chosen]
        if isinstance(chosen, (int, np.integer)) and not isinstance(chosen, bool):
            require(
                bool(0 <= chosen < len(self._pool)),
                "instance",
                chosen,
                f"an index below {len(self._pool)}",
            )
            return self._pool[int(chosen)]
        if getattr(chosen, "name", None) in self._by_name:
            return chosen
        raise ValueError(
            f"instance={chosen!r} is invalid: expected an instance, a name or an index"
        )

    _lr_request: float | None = None

    def request_lr(self, lr: float) -> None:
        """Apply exactly ``lr`` (then clipped to the bound) at the next step, ignoring its action.

        Unlike an action (where NaN means the lowest learning rate and out-of-range values
        saturate), a requested learning rate is the caller's exact wish: anything but a
        positive finite number raises a one-line ``ValueError``.
        """
        try:
            value = float(lr)
        except (TypeError, ValueError):
            value = math.nan
        require(0 < value < math.inf, "lr", lr, "a positive finite learning rate")
        self._lr_request = value

    def _take_lr_request(self) -> float | None:
        lr, self._lr_request = self._lr_request, None
        return lr

    _inner: InnerControl | None = None

    def set_inner_control(self, control: InnerControl | None) -> None:
        """Let ``control`` set the lr of every inner step after the first from the previous
        step's training loss (a per-step controller, such as GreedyLR at its natural cadence;
        the env's clip still applies); ``None`` restores one lr per decision."""
        self._inner = control

    @property
    def clip(self) -> float:
        """The largest learning rate the next step may apply (``inf``: no clip)."""
        raise NotImplementedError

    def action_for_lr(self, lr: float) -> np.ndarray:
        """The action that requests learning rate ``lr`` under the current action mapping.

        Learning rates outside what the action range can express are saturated to its ends;
        the env's own clipping to the stability bound then applies as for any action.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The constructor keyword arguments, JSON-serialisable, enough to rebuild the env."""
        raise NotImplementedError


def require(condition: bool, key: str, value: Any, accepted: str) -> None:
    """Raise a one-line ``ValueError`` naming a bad option, its value and what is accepted."""
    if not condition:
        raise ValueError(f"{key}={value!r} is invalid: expected {accepted}")


def check_options(name: str, given: dict[str, Any], accepted: Sequence[str]) -> None:
    """Reject unknown keyword arguments with the list of accepted ones."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown {name} option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}"
        )


def as_int(key: str, value: Any, low: int | None = None) -> int:
    """Coerce an integer option (configs may hand us floats like ``8.0``), checking its range."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    require(ok, key, value, "an integer" + (f" >= {low}" if low is not None else ""))
    if low is not None:
        require(int(value) >= low, key, value, f"an integer >= {low}")
    return int(value)


def as_float(
    key: str, value: Any, low: float | None = None, high: float | None = None, strict: bool = False
) -> float:
    """Coerce a finite float option, checking ``low <= value <= high`` (``<`` if ``strict``)."""
    ok = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if strict else '>='} {low}")
    if high is not None:
        bounds.append(f"<= {high}")
    accepted = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
    require(ok and math.isfinite(float(value)), key, value, accepted)
    value = float(value)
    if low is not None:
        require(value > low if strict else value >= low, key, value, accepted)
    if high is not None:
        require(value <= high, key, value, accepted)
    return value


def as_names(key: str, value: Any, accepted: Sequence[str] | None = None) -> tuple[str, ...]:
    """A non-empty list of names (from ``accepted``, when given), as a tuple."""
    what = "a non-empty list of names" + (f" from {list(accepted)}" if accepted else "")
    require(
        isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0,
        key,
        value,
        what,
    )
    for name in value:
        require(isinstance(name, str), key, name, what)
        if accepted is not None:
            require(name in accepted, key, name, what)
    return tuple(value)


def as_lr_range(key: str, value: Any) -> tuple[float, float]:
    """A learning-rate range option: a pair ``(low, high)`` with ``0 < low < high``."""
    require(
        isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2,
        key,
        value,
        "a pair (low, high)",
    )
    low = as_float(f"{key}[0]", value[0], 0.0, strict=True)
    high = as_float(f"{key}[1]", value[1], 0.0, strict=True)
    require(low < high, key, list(value), "low < high")
    return low, high


def log_range_lrs(actions: Any, low: float, high: float) -> np.ndarray:
    """The learning rates of actions in [-1, 1] mapped log-linearly onto ``[low, high]``
    (out-of-range actions saturate; NaN counts as -1). Works elementwise on any shape."""
    a = np.asarray(actions, dtype=np.float64)
    a = np.where(np.isnan(a), -1.0, np.clip(a, -1.0, 1.0))
    return np.exp(math.log(low) + (a + 1.0) / 2.0 * (math.log(high) - math.log(low)))


def log_range_actions(lrs: Any, low: float, high: float) -> np.ndarray:
    """The inverse of :func:`log_range_lrs`, saturated to [-1, 1] (``lr <= 0`` gives -1)."""
    lr = np.asarray(lrs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 2.0 * (np.log(lr) - math.log(low)) / (math.log(high) - math.log(low)) - 1.0
    a = np.where(lr > 0, np.nan_to_num(a, nan=-1.0), -1.0)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def log_range_lr(action: Any, low: float, high: float) -> float:
    """:func:`log_range_lrs` of one action (the first entry of ``action``)."""
    return float(log_range_lrs(np.asarray(action, dtype=np.float64).reshape(-1)[:1], low, high)[0])


def log_range_action(lr: float, low: float, high: float) -> np.ndarray:
    """:func:`log_range_actions` of one learning rate: an action of shape ``(1,)``."""
    return log_range_actions(np.array([lr], dtype=np.float64), low, high)


def log_ratio_reward(loss_prev: float, loss: float) -> float:
    """``log(loss_prev / loss)``: the episode return telescopes to ``log(loss_0 / loss_T)``."""
    return math.log(loss_prev) - math.log(loss)


def is_diverged(loss: float, loss0: float, max_loss_ratio: float) -> bool:
    """Non-finite loss, or a loss grown beyond ``max_loss_ratio`` times the initial one."""
    return not math.isfinite(loss) or loss > max_loss_ratio * loss0
