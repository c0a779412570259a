"""``lrrl/NMF-v0``: choose the learning rate of stochastic non-negative matrix factorisation."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from lrrl.envs.base import (
    EnvConfig,
    LRControlEnv,
    as_float,
    as_int,
    as_lr_range,
    as_names,
    log_range_actions,
    log_range_lrs,
    require,
)
from lrrl.envs.nmf_episodes import HISTORY, OBS_LIMIT, OBS_SIZE, NMFEpisodes, nmf_observation
from lrrl.envs.nmf_instances import FAMILIES, SPLITS, BaseInstance, NMFInstance, make_suite

__all__ = [
    "HISTORY",
    "NMFConfig",
    "NMFEnv",
    "nmf_lr_for_action",
    "nmf_lrs_for_actions",
    "nmf_observation",
]

ACTION_MODES = ("bound", "delta", "log_lr")
BOUNDS = ("noisy", "deterministic", "none")
REWARDS = ("log_ratio", "relative_delta")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class NMFConfig(EnvConfig):
    """Every option of ``lrrl/NMF-v0``, checked once; the one place its defaults live.

    Each field is a keyword argument of :class:`NMFEnv` (and ``gymnasium.make``) and a Hydra
    key ``env.<field>``; a bad value raises a one-line ``ValueError`` naming it.

    The base instance (families vary it, see :mod:`lrrl.envs.nmf_instances`):
        shape: ``(m, n)`` of the base instance.
        rank: factorisation rank ``r`` of the base instance.
        steps_per_action: inner SGD steps per decision (every instance).
        batch_size: columns sampled per inner step; ``None`` for the full gradient.
        noise_std: standard deviation of additive Gaussian gradient noise per entry.
        horizon: decisions per episode of the base instance (the env truncates there).

    The instances:
        families: instance families (names from ``lrrl.envs.nmf_instances.FAMILIES``).
        n_train, n_tune, n_test: instances per family in the train (the agent's), tune (the
            baselines') and test splits.
        instances: the split ``reset`` draws from (``"train"``, ``"tune"``, ``"test"``,
            ``"all"``) or a list of instance names.
        instance_seed: seed of the instance suite (not of the episodes).

    The clip and the action:
        bound: ``"noisy"`` (expected-descent bound, equal to the deterministic one without
            noise), ``"deterministic"`` (``2 / max(L_W, L_H)``) or ``"none"`` (no clipping;
            needs ``action_mode="log_lr"``).
        bound_scale: the applied learning rate never exceeds ``bound_scale * lr_bound``.
        safeguard: also cap every inner block update at ``bound_scale * 2 / L`` of the factors
            it sees, so noise-free descent holds at every inner step (two ``r x r``
            eigenvalue problems per inner step).
        action_mode: ``"bound"`` (the lr in log space below the clip), ``"delta"`` (the change
            of the lr's fraction of the clip; the first decision starts at ``lr_ceiling``) or
            ``"log_lr"`` (the absolute log lr). See the env's Action Space.
        lr_floor: ``"bound"``/``"delta"``: the lowest learning rate relative to the clip.
        lr_ceiling: ``"bound"``/``"delta"``: the highest request relative to the clip; above 1
            it reaches beyond the clip (the excess is clipped and counted).
        lr_step: ``"delta"`` mode: the largest change of the log fraction per decision.
        lr_range: ``"log_lr"`` mode: ``(low, high)`` learning rates of actions -1 and +1.

    The reward:
        reward: ``"log_ratio"`` (``log(loss_{t-1} / loss_t)``) or ``"relative_delta"``.
        divergence_penalty: reward (negated) of the step that diverges.
        max_loss_ratio: a loss above this multiple of the initial one is a divergence.

    The arithmetic:
        dtype: ``"float32"`` or ``"float64"``.
        device: torch device of the factorisation (``"cpu"``, ``"cuda"``).
    """

    shape: tuple[int, int] = (200, 150)
    rank: int = 10
    steps_per_action: int = 10
    batch_size: int | None = 16
    noise_std: float = 0.0
    horizon: int = 50
    families: tuple[str, ...] = tuple(FAMILIES)
    n_train: int = 48
    n_tune: int = 6
    n_test: int = 24
    instances: Any = "train"
    instance_seed: int = 0
    bound: str = "noisy"
    bound_scale: float = 1.0
    safeguard: bool = True
    action_mode: str = "bound"
    lr_floor: float = 0.01
    lr_ceiling: float = 1.0
    lr_step: float = 0.5
    lr_range: tuple[float, float] = (1e-3, 3.0)
    reward: str = "log_ratio"
    divergence_penalty: float = 10.0
    max_loss_ratio: float = 1000.0
    dtype: str = "float32"
    device: str = "cpu"

    env_id: ClassVar[str] = "lrrl/NMF-v0"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        shape = self.shape
        require(
            isinstance(shape, Sequence) and not isinstance(shape, str) and len(shape) == 2,
            "shape",
            shape,
            "a pair (m, n) of positive integers",
        )
        m, n = as_int("shape[0]", shape[0], 1), as_int("shape[1]", shape[1], 1)
        put("shape", (m, n))
        put("rank", as_int("rank", self.rank, 1))
        require(self.rank <= min(m, n), "rank", self.rank, f"an integer <= min(m, n) = {min(m, n)}")
        put("steps_per_action", as_int("steps_per_action", self.steps_per_action, 1))
        if self.batch_size is not None:
            put("batch_size", as_int("batch_size", self.batch_size, 1))
        put("noise_std", as_float("noise_std", self.noise_std, 0.0))
        put("horizon", as_int("horizon", self.horizon, 1))
        put("families", as_names("families", self.families, tuple(FAMILIES)))
        for split in SPLITS:
            put(f"n_{split}", as_int(f"n_{split}", getattr(self, f"n_{split}"), 0))
        if not isinstance(self.instances, str):
            put("instances", as_names("instances", self.instances))
        put("instance_seed", as_int("instance_seed", self.instance_seed, 0))
        require(self.bound in BOUNDS, "bound", self.bound, f"one of {BOUNDS}")
        put("bound_scale", as_float("bound_scale", self.bound_scale, 0.0, strict=True))
        require(isinstance(self.safeguard, bool), "safeguard", self.safeguard, "true or false")
        require(
            self.action_mode in ACTION_MODES,
            "action_mode",
            self.action_mode,
            f"one of {ACTION_MODES}",
        )
        require(
            not (self.bound == "none" and self.action_mode != "log_lr"),
            "action_mode",
            self.action_mode,
            "'log_lr' when bound='none' (there is no bound to act relative to)",
        )
        put("lr_floor", as_float("lr_floor", self.lr_floor, 0.0, 1.0, strict=True))
        put("lr_ceiling", as_float("lr_ceiling", self.lr_ceiling, 1.0))
        put("lr_step", as_float("lr_step", self.lr_step, 0.0, strict=True))
        put("lr_range", as_lr_range("lr_range", self.lr_range))
        require(self.reward in REWARDS, "reward", self.reward, f"one of {REWARDS}")
        put("divergence_penalty", as_float("divergence_penalty", self.divergence_penalty, 0.0))
        put("max_loss_ratio", as_float("max_loss_ratio", self.max_loss_ratio, 1.0, strict=True))
        require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {tuple(DTYPES)}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={self.device!r} is invalid: {err}") from None
        require(
            device.type != "cuda" or torch.cuda.is_available(),
            "device",
            self.device,
            "'cpu' (CUDA is not available here)",
        )
        # The suite exists and every instance admits its rank; the pool is not empty.
        suite = self.suite
        require(len(suite["all"]) > 0, "families", list(self.families), "at least one instance")
        if isinstance(self.instances, str):
            splits = (*SPLITS, "all")
            require(
                self.instances in splits,
                "instances",
                self.instances,
                f"one of {splits} or a list of names",
            )
            require(
                len(suite[self.instances]) > 0,
                "instances",
                self.instances,
                f"a split with instances (n_{self.instances} is 0)",
            )
        else:
            known = {inst.name for inst in suite["all"]}
            unknown = [name for name in self.instances if name not in known]
            require(not unknown, "instances", unknown, "names of instances of this suite")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def base(self) -> BaseInstance:
        return BaseInstance(self.shape, self.rank, self.batch_size, self.noise_std, self.horizon)

    @functools.cached_property
    def suite(self) -> dict[str, list[NMFInstance]]:
        """The instances of every split, ``"all"`` included (built once per config)."""
        counts = {split: getattr(self, f"n_{split}") for split in SPLITS}
        suite = make_suite(self.base, self.families, counts, self.instance_seed)
        suite["all"] = [inst for split in SPLITS for inst in suite[split]]
        return suite


class NMFEnv(LRControlEnv):
    """Learning-rate control of alternating projected SGD on non-negative matrix factorisation.

    ## Description

    The agent schedules the learning rate of stochastic NMF, ``V ~ W H`` with ``W, H >= 0``
    at rank ``r``, minimising ``f = 1/2 ||V - W H||_F^2``. Each decision runs
    ``steps_per_action`` inner steps of alternating projected SGD (``W`` then ``H``) on
    sampled column minibatches and/or with additive gradient noise, as the episode's instance
    sets them. The learning rate is clipped to ``bound_scale`` times a stability bound
    computed from the current factors (see :mod:`lrrl.envs.nmf_ops` for the derivation):
    noise-free, every learning rate up to the bound provably never raises the loss.
    Instances come from named families (:mod:`lrrl.envs.nmf_instances`) that vary size,
    rank, data noise, minibatch size, gradient noise, episode length and data scale, plus
    real data.

    ## Action Space

    ``Box(-1, 1, (1,), float32)``. The clip is ``bound_scale * lr_bound``. In
    ``action_mode="bound"`` (default) the action is the learning rate in log space between
    ``lr_floor * clip`` (action -1) and ``lr_ceiling * clip`` (action +1): the highest action
    reaches the clip. In ``action_mode="delta"`` it moves the learning rate's fraction of the
    clip: ``f_t = f_{t-1} * exp(lr_step * action)``, kept within ``[lr_floor, lr_ceiling]``,
    ``f`` starting at ``lr_ceiling``; action 0 follows the bound at a constant fraction, and
    the lr never changes by more than ``exp(lr_step)`` relative to the bound in one decision.
    In ``action_mode="log_lr"`` it is the log learning rate within ``lr_range``; requests
    above the clip are clipped (and counted).

    ## Observation Space

    ``Box(-50, 50, (8,), float32)``:

    | index | observation                                                   |
    |-------|---------------------------------------------------------------|
    | 0     | ``log(loss / loss_0)``                                        |
    | 1-3   | the last three log-loss changes ``log(loss_t / loss_{t-1})``  |
    | 4     | ``log(f)``: the last lr over the clip it was applied under    |
    | 5     | ``log10(lr_bound)`` (0 when ``bound="none"``)                 |
    | 6     | gradient-noise ratio ``1 - ||g||^2 / (||g||^2 + s^2)``        |
    | 7     | progress ``t / horizon``                                      |

    ## Rewards

    ``log(loss_{t-1} / loss_t)`` (``reward="log_ratio"``): the return telescopes to
    ``log(loss_0 / loss_T)``, so maximising it minimises the final loss.
    ``reward="relative_delta"`` gives ``(loss_{t-1} - loss_t) / loss_0``. A divergence gives
    ``-divergence_penalty``.

    ## Starting State

    An instance is drawn uniformly from the ``instances`` split (or given as
    ``reset(options={"instance": ...})`` by object, name or index). ``W`` and ``H`` start
    from scaled absolute Gaussian entries drawn from the env's seeded generator.

    ## Episode End

    Terminated when the loss becomes non-finite or exceeds ``max_loss_ratio * loss_0``
    (``info["diverged"]``). Truncated after the instance's ``horizon`` decisions, by the env
    itself (instances differ in length), wherever the env is made.

    ## Arguments

    The fields of :class:`NMFConfig`, as keyword arguments (``gymnasium.make("lrrl/NMF-v0",
    rank=8)``, Hydra's ``env.rank=8``), or a whole config as ``config=``.

    ## Version History

    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    config_class = NMFConfig

    def __init__(self, config: NMFConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = NMFConfig.build(config, **kwargs)
        self._hold_instances(self.cfg.suite, self.cfg.instances)
        self._episodes = NMFEpisodes(self.cfg, 1)
        self.steps_per_action = self.cfg.steps_per_action
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(
            -OBS_LIMIT, OBS_LIMIT, shape=(OBS_SIZE,), dtype=np.float32
        )

    # -- the public contract -------------------------------------------------------------

    @property
    def V(self) -> np.ndarray:
        return self._episodes.factors(0)[0]

    @property
    def W(self) -> np.ndarray:
        return self._episodes.factors(0)[1]

    @property
    def H(self) -> np.ndarray:
        return self._episodes.factors(0)[2]

    @property
    def horizon(self) -> int:
        """Decisions of the current episode (the base horizon before the first reset)."""
        inst = self._instance
        return inst.horizon if inst is not None else self.cfg.horizon

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    @property
    def clip(self) -> float:
        """The largest learning rate the next step may apply: ``bound_scale * lr_bound``."""
        return float(self._episodes.clip[0])

    def lr_for_action(self, action: np.ndarray) -> float:
        """The learning rate an action requests (before clipping); NaN actions count as -1."""
        return nmf_lr_for_action(action, self.cfg, self.clip, self._episodes.fraction[0])

    def action_for_lr(self, lr: float) -> np.ndarray:
        return nmf_action_for_lr(lr, self.cfg, self.clip, self._episodes.fraction[0])

    # -- gymnasium API --------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._lr_request = None
        choice = (options or {}).get("instance")
        if choice is not None:
            self._instance = self._resolve(choice)
        else:
            self._instance = self._pool[int(self.np_random.integers(len(self._pool)))]
        self._episodes.load(0, self._instance, int(self.np_random.integers(2**62)))
        self._episodes.start(np.zeros(1, dtype=np.int64))
        ep = self._episodes
        info = {
            "lr": math.nan,
            "lr_bound": float(ep.lr_bound[0]) if self.cfg.bound != "none" else math.inf,
            "loss": float(ep.loss[0]),
            "clipped": False,
            "diverged": False,
            "instance": self._instance.name,
            "noise_ratio": float(ep.noise_ratio[0]),
        }
        return ep.observations()[0], info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        requested = self._take_lr_request()
        if requested is None:
            requested = self.lr_for_action(action)
        tr = self._episodes.step(np.array([requested]), inner=self._inner)
        info = {
            "lr": float(tr.lr[0]),
            "lr_bound": float(tr.lr_bound[0]),
            "loss": float(tr.loss[0]),
            "clipped": bool(tr.clipped[0]),
            "diverged": bool(tr.diverged[0]),
            "instance": self._instance.name,
            "noise_ratio": float(self._episodes.noise_ratio[0]),
            "inner_capped": int(tr.inner_capped[0]),
        }
        obs = self._episodes.observations()[0]
        return obs, float(tr.reward[0]), bool(tr.diverged[0]), bool(tr.truncated[0]), info


def nmf_lrs_for_actions(
    actions: Any, config: NMFConfig, clip: Any, fraction: Any = math.nan
) -> np.ndarray:
    """The learning rates a batch of ``lrrl/NMF-v0`` actions requests (before clipping).

    Shared by the envs and :class:`lrrl.schedulers.PolicyScheduler`; NaN actions count as
    -1 and out-of-range ones saturate. ``clip`` matters in the bound-relative modes and
    ``fraction`` (the last lr over its clip, NaN before the first decision) in ``"delta"``.
    """
    if config.action_mode == "log_lr":
        return log_range_lrs(actions, *config.lr_range)
    clip = np.asarray(clip, dtype=np.float64)
    low, high = config.lr_floor, config.lr_ceiling
    if config.action_mode == "bound":
        return log_range_lrs(actions, low, high) * clip
    a = np.asarray(actions, dtype=np.float64)
    a = np.where(np.isnan(a), -1.0, np.clip(a, -1.0, 1.0))
    f = np.asarray(fraction, dtype=np.float64)
    f = np.where(np.isnan(f), high, np.clip(f, low, high))
    return np.clip(f * np.exp(config.lr_step * a), low, high) * clip


def nmf_lr_for_action(
    action: Any, config: NMFConfig, clip: float, fraction: float = math.nan
) -> float:
    """:func:`nmf_lrs_for_actions` for one action."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)[:1]
    return float(nmf_lrs_for_actions(a, config, clip, fraction)[0])


def nmf_actions_for_lrs(
    lrs: Any, config: NMFConfig, clip: Any, fraction: Any = math.nan
) -> np.ndarray:
    """The inverse of :func:`nmf_lrs_for_actions`, saturated to [-1, 1] (``lr <= 0``: -1)."""
    lr = np.asarray(lrs, dtype=np.float64)
    if config.action_mode == "log_lr":
        return log_range_actions(lr, *config.lr_range)
    clip = np.asarray(clip, dtype=np.float64)
    low, high = config.lr_floor, config.lr_ceiling
    with np.errstate(divide="ignore", invalid="ignore"):
        if config.action_mode == "bound":
            return log_range_actions(lr / clip, low, high)
        f = np.asarray(fraction, dtype=np.float64)
        f = np.where(np.isnan(f), high, np.clip(f, low, high))
        a = (np.log(lr / clip) - np.log(f)) / config.lr_step
    a = np.where(lr > 0, np.nan_to_num(a, nan=-1.0), -1.0)
    return np.clip(a, -1.0, 1.0).astype(np.float32)


def nmf_action_for_lr(
    lr: float, config: NMFConfig, clip: float, fraction: float = math.nan
) -> np.ndarray:
    """:func:`nmf_actions_for_lrs` for one learning rate: an action of shape ``(1,)``."""
    return nmf_actions_for_lrs(np.array([lr]), config, np.array([clip]), np.array([fraction]))
