"""``lrrl/NMF-v0``: choose the learning rate of stochastic non-negative matrix factorisation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from lrrl.envs import nmf_ops
from lrrl.envs.base import (
    LRControlEnv,
    as_float,
    as_int,
    as_lr_range,
    is_diverged,
    log_range_action,
    log_ratio_reward,
    require,
)
from lrrl.envs.nmf_instances import SUITES, make_suite

ACTION_MODES = ("bound", "log_lr")
BOUNDS = ("noisy", "deterministic", "none")
REWARDS = ("log_ratio", "relative_delta")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
HISTORY = 3  # recent log-loss changes in the observation
OBS_LIMIT = 50.0


class NMFEnv(LRControlEnv):
    """Learning-rate control of alternating projected SGD on non-negative matrix factorisation.

    ## Description

    The agent schedules the learning rate of stochastic NMF, ``V ~ W H`` with ``W, H >= 0``
    at rank ``r``, minimising ``f = 1/2 ||V - W H||_F^2``. Each decision runs
    ``steps_per_action`` inner steps of alternating projected SGD (``W`` then ``H``) on
    sampled column minibatches (``batch_size``) and/or with additive gradient noise
    (``noise_std``). The learning rate is clipped to ``bound_scale`` times a stability bound
    computed from the current factors (see :mod:`lrrl.envs.nmf_ops` for the derivation):
    noise-free, every learning rate up to the bound provably never raises the loss.

    ## Action Space

    ``Box(-1, 1, (1,), float32)``. In ``action_mode="bound"`` (default) the action is the
    learning rate in log space between ``lr_floor * clip`` (action -1) and
    ``lr_ceiling * clip`` (action +1), where the clip is ``bound_scale * lr_bound``: the highest
    action reaches the clip (with the default ``lr_ceiling=2`` it asks for twice the clip, and
    the excess is clipped). In ``action_mode="log_lr"`` it is the log
    learning rate within ``lr_range``; requests above the clip are clipped (and counted).

    ## Observation Space

    ``Box(-50, 50, (8,), float32)``:

    | index | observation                                                   |
    |-------|---------------------------------------------------------------|
    | 0     | ``log(loss / loss_0)``                                        |
    | 1-3   | the last three log-loss changes ``log(loss_t / loss_{t-1})``  |
    | 4     | ``log(lr_prev / clip)``: last applied lr relative to the clip |
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
    (``info["diverged"]``). Truncated after ``horizon`` decisions by the registration's
    ``max_episode_steps``.

    ## Arguments

    See ``__init__``. Every argument is a plain value, so ``gymnasium.make("lrrl/NMF-v0",
    rank=8)`` and Hydra's ``env.rank=8`` both work.

    ## Version History

    * v0: initial version.
    """

    def __init__(
        self,
        shape: Sequence[int] = (200, 150),
        rank: int = 10,
        steps_per_action: int = 10,
        noise_std: float = 0.0,
        batch_size: int | None = None,
        bound_scale: float = 1.0,
        bound: str = "noisy",
        action_mode: str = "bound",
        lr_floor: float = 1e-2,
        lr_ceiling: float = 2.0,
        lr_range: Sequence[float] = (1e-4, 10.0),
        reward: str = "log_ratio",
        divergence_penalty: float = 10.0,
        max_loss_ratio: float = 1e3,
        suite: str = "mixed",
        instances: str | Sequence[str] = "train",
        instance_seed: int = 0,
        horizon: int = 50,
        safeguard: bool = True,
        dtype: str = "float32",
        device: str = "cpu",
    ) -> None:
        """Build the env; every bad value raises a one-line ``ValueError`` naming it.

        Args:
            shape: ``(m, n)`` of the base synthetic instances (others are half this size).
            rank: factorisation rank ``r``; at most ``min(m, n)`` of every instance.
            steps_per_action: inner SGD steps per decision.
            noise_std: standard deviation of additive Gaussian gradient noise per entry.
            batch_size: columns sampled per inner step; ``None`` for the full gradient.
            bound_scale: the applied learning rate never exceeds ``bound_scale * lr_bound``.
            bound: ``"noisy"`` (expected-descent bound, equal to the deterministic one without
                noise), ``"deterministic"`` (``2 / max(L_W, L_H)``) or ``"none"`` (no clipping;
                needs ``action_mode="log_lr"``).
            action_mode: ``"bound"`` (log space below the clip) or ``"log_lr"`` (absolute).
            lr_floor: in ``"bound"`` mode, the lowest action's learning rate relative to the clip.
            lr_ceiling: in ``"bound"`` mode, the highest action's request relative to the clip;
                above 1 it reaches beyond the clip (the excess is clipped and counted), which
                keeps the best learning rates inside the action range rather than at its edge.
            lr_range: in ``"log_lr"`` mode, ``(low, high)`` learning rates of actions -1 and +1.
            reward: ``"log_ratio"`` or ``"relative_delta"``.
            divergence_penalty: reward (negated) of the step that diverges.
            max_loss_ratio: a loss above this multiple of the initial one is a divergence.
            suite: which instances: ``"mixed"`` (synthetic and digits), ``"synthetic"``, ``"digits"``.
            instances: the split drawn from on reset (``"train"``, ``"test"``, ``"all"``) or a
                list of instance names.
            instance_seed: seed of the synthetic instance family (not of the episode).
            horizon: decisions per episode, for the progress feature; registration truncates.
            safeguard: also cap every inner block update at ``bound_scale * 2 / L`` of the
                factors it sees, so noise-free descent holds at every inner step. Costs two
                ``r x r`` eigenvalue problems per inner step (noticeable only for small ``m, n``).
            dtype: ``"float32"`` or ``"float64"``.
            device: torch device of the factorisation (``"cpu"``, ``"cuda"``).
        """
        super().__init__()
        require(
            isinstance(shape, Sequence) and len(shape) == 2,
            "shape",
            shape,
            "a pair (m, n) of positive integers",
        )
        m, n = as_int("shape[0]", shape[0], 1), as_int("shape[1]", shape[1], 1)
        self.shape = (m, n)
        self.rank = as_int("rank", rank, 1)
        require(self.rank <= min(m, n), "rank", rank, f"an integer <= min(m, n) = {min(m, n)}")
        self.steps_per_action = as_int("steps_per_action", steps_per_action, 1)
        self.noise_std = as_float("noise_std", noise_std, 0.0)
        if batch_size is not None:
            batch_size = as_int("batch_size", batch_size, 1)
        self.batch_size = batch_size
        self.bound_scale = as_float("bound_scale", bound_scale, 0.0, strict=True)
        require(bound in BOUNDS, "bound", bound, f"one of {BOUNDS}")
        require(action_mode in ACTION_MODES, "action_mode", action_mode, f"one of {ACTION_MODES}")
        require(
            not (bound == "none" and action_mode == "bound"),
            "action_mode",
            action_mode,
            "'log_lr' when bound='none' (there is no bound to act relative to)",
        )
        self.bound, self.action_mode = bound, action_mode
        self.lr_floor = as_float("lr_floor", lr_floor, 0.0, 1.0, strict=True)
        self.lr_ceiling = as_float("lr_ceiling", lr_ceiling, 1.0)
        self.lr_range = as_lr_range("lr_range", lr_range)
        require(reward in REWARDS, "reward", reward, f"one of {REWARDS}")
        self.reward_mode = reward
        self.divergence_penalty = as_float("divergence_penalty", divergence_penalty, 0.0)
        self.max_loss_ratio = as_float("max_loss_ratio", max_loss_ratio, 1.0, strict=True)
        require(suite in SUITES, "suite", suite, f"one of {SUITES}")
        self.suite = suite
        self.instance_seed = as_int("instance_seed", instance_seed, 0)
        self.horizon = as_int("horizon", horizon, 1)
        require(isinstance(safeguard, bool), "safeguard", safeguard, "true or false")
        self.safeguard = safeguard
        require(dtype in DTYPES, "dtype", dtype, f"one of {tuple(DTYPES)}")
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={device!r} is invalid: {err}") from None
        require(
            self.device.type != "cuda" or torch.cuda.is_available(),
            "device",
            device,
            "'cpu' (CUDA is not available here)",
        )

        self._suite = make_suite(self.shape, self.rank, suite, self.instance_seed)
        self._suite["all"] = self._suite["train"] + self._suite["test"]
        for inst in self._suite["all"]:
            require(
                self.rank <= min(inst.shape),
                "rank",
                rank,
                f"an integer <= {min(inst.shape)} (instance {inst.name} is {inst.shape[0]}x{inst.shape[1]})",
            )
        self._hold_instances(self._suite, instances)
        self._instances_arg = instances if isinstance(instances, str) else list(instances)

        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(-OBS_LIMIT, OBS_LIMIT, shape=(8,), dtype=np.float32)
        self._gen: torch.Generator | None = None
        self._V: torch.Tensor | None = None

    # -- the public contract -------------------------------------------------------------

    @property
    def V(self) -> np.ndarray:
        return self._V.cpu().numpy()

    @property
    def W(self) -> np.ndarray:
        return self._W.cpu().numpy()

    @property
    def H(self) -> np.ndarray:
        return self._H.cpu().numpy()

    def config(self) -> dict[str, Any]:
        return {
            "shape": list(self.shape),
            "rank": self.rank,
            "steps_per_action": self.steps_per_action,
            "noise_std": self.noise_std,
            "batch_size": self.batch_size,
            "bound_scale": self.bound_scale,
            "bound": self.bound,
            "action_mode": self.action_mode,
            "lr_floor": self.lr_floor,
            "lr_ceiling": self.lr_ceiling,
            "lr_range": list(self.lr_range),
            "reward": self.reward_mode,
            "divergence_penalty": self.divergence_penalty,
            "max_loss_ratio": self.max_loss_ratio,
            "suite": self.suite,
            "instances": self._instances_arg,
            "instance_seed": self.instance_seed,
            "horizon": self.horizon,
            "safeguard": self.safeguard,
            "dtype": self.dtype_name,
            "device": str(self.device),
        }

    @property
    def clip(self) -> float:
        """The largest learning rate the next step may apply: ``bound_scale * lr_bound``."""
        return self.bound_scale * self._lr_bound if self.bound != "none" else math.inf

    def lr_for_action(self, action: np.ndarray) -> float:
        """The learning rate an action requests (before clipping); NaN actions count as -1."""
        return nmf_lr_for_action(
            action, self.action_mode, self.clip, self.lr_floor, self.lr_ceiling, self.lr_range
        )

    def action_for_lr(self, lr: float) -> np.ndarray:
        if self.action_mode == "bound":
            return log_range_action(lr / self.clip, self.lr_floor, self.lr_ceiling)
        return log_range_action(lr, *self.lr_range)

    # -- gymnasium API --------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._lr_request = None
        options = options or {}
        if "instance" in options and options["instance"] is not None:
            self._instance = self._resolve(options["instance"])
        else:
            self._instance = self._pool[int(self.np_random.integers(len(self._pool)))]
        inst = self._instance  # every instance's shape admits the rank (checked in __init__)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(int(self.np_random.integers(2**62)))

        self._V = torch.tensor(inst.matrix(), dtype=self.dtype, device=self.device)
        m, n = inst.shape
        init_scale = math.sqrt(float(self._V.mean()) / self.rank)
        # Draws stay on the CPU generator-backed stream so CPU and CUDA runs start alike.
        self._W = (
            init_scale
            * torch.randn(
                (m, self.rank), generator=self._gen, dtype=self.dtype, device=self.device
            ).abs()
        )
        self._H = (
            init_scale
            * torch.randn(
                (self.rank, n), generator=self._gen, dtype=self.dtype, device=self.device
            ).abs()
        )

        self._t = 0
        with torch.inference_mode():
            R = nmf_ops.residual(self._V, self._W, self._H)
            terms = self._bound_terms(self._W, self._H, R)
            loss0, lr_bound, noise_ratio = torch.stack(
                [nmf_ops.loss_from_residual(R), terms.lr_bound, terms.noise_ratio]
            ).tolist()
        self._loss0 = self._loss = loss0
        self._deltas = [0.0] * HISTORY
        self._lr_prev = math.nan
        self._set_bound(loss0, lr_bound, noise_ratio)
        info = {
            "lr": math.nan,
            "lr_bound": self._lr_bound if self.bound != "none" else math.inf,
            "loss": self._loss,
            "clipped": False,
            "diverged": False,
            "instance": inst.name,
            "noise_ratio": self._noise_ratio,
        }
        return self._observation(), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        requested = self._take_lr_request()
        if requested is None:
            requested = self.lr_for_action(action)
        lr_bound = self._lr_bound if self.bound != "none" else math.inf
        if not self._healthy:
            # The factors already blew up (e.g. NaN data): nothing left to train.
            return self._diverged_step(requested, lr_bound)
        clip = self.clip
        clipped = requested > clip * (1.0 + 1e-6)
        lr = min(requested, clip)
        cap = self.bound_scale if self.bound != "none" and self.safeguard else None
        lr_t = torch.tensor(lr, dtype=self.dtype, device=self.device)
        caps = []
        with torch.inference_mode():
            draws = nmf_ops.draw(
                self._gen,
                self.steps_per_action,
                tuple(self._V.shape),
                self.rank,
                self.batch_size,
                self.noise_std,
                self.dtype,
                self.device,
            )
            W, H = self._W, self._H
            for k in range(self.steps_per_action):
                W, H, min_cap = nmf_ops.inner_step(
                    self._V,
                    W,
                    H,
                    lr_t,
                    cap,
                    columns=None if draws.columns is None else draws.columns[k],
                    noise_w=None if draws.noise_w is None else draws.noise_w[k],
                    noise_h=None if draws.noise_h is None else draws.noise_h[k],
                )
                caps.append(min_cap)
            R = nmf_ops.residual(self._V, W, H)
            capped = (torch.stack(caps) < lr_t).sum() if cap is not None else R.new_zeros(())
            terms = self._bound_terms(W, H, R)
            # One device-to-host transfer per decision: loss, inner caps and the next bound.
            loss, inner_capped, lr_bound_next, noise_ratio = torch.stack(
                [
                    nmf_ops.loss_from_residual(R),
                    capped.to(R.dtype),
                    terms.lr_bound,
                    terms.noise_ratio,
                ]
            ).tolist()
        self._W, self._H = W, H
        self._t += 1

        loss_prev = self._loss
        diverged = is_diverged(loss, self._loss0, self.max_loss_ratio)
        if not diverged:
            self._set_bound(loss, lr_bound_next, noise_ratio)
            diverged = not self._healthy
        if diverged:
            self._healthy = False
            reward = -self.divergence_penalty
        elif self.reward_mode == "log_ratio":
            reward = log_ratio_reward(max(loss_prev, 1e-300), max(loss, 1e-300))
        else:
            reward = (loss_prev - loss) / self._loss0
        self._loss = loss
        self._lr_prev = lr
        if not diverged:
            delta = math.log(max(loss, 1e-300)) - math.log(max(loss_prev, 1e-300))
            self._deltas = [delta, *self._deltas[:-1]]
        info = {
            "lr": lr,
            "lr_bound": lr_bound,
            "loss": loss,
            "clipped": bool(clipped),
            "diverged": bool(diverged),
            "instance": self._instance.name,
            "noise_ratio": self._noise_ratio,
            "inner_capped": int(inner_capped),
        }
        return self._observation(), float(reward), bool(diverged), False, info

    def _diverged_step(
        self, requested: float, lr_bound: float
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._t += 1
        info = {
            "lr": 0.0 if math.isnan(requested) else requested,
            "lr_bound": lr_bound,
            "loss": self._loss,
            "clipped": False,
            "diverged": True,
            "instance": self._instance.name,
            "noise_ratio": self._noise_ratio,
            "inner_capped": 0,
        }
        return self._observation(), -self.divergence_penalty, True, False, info

    # -- internals ------------------------------------------------------------------------

    def _bound_terms(self, W: torch.Tensor, H: torch.Tensor, R: torch.Tensor) -> nmf_ops.BoundTerms:
        with torch.inference_mode():
            return nmf_ops.stability_bound(
                self._V, W, H, self.noise_std, self.batch_size, noisy=self.bound == "noisy", R=R
            )

    def _set_bound(self, loss: float, lr_bound: float, noise_ratio: float) -> None:
        # Non-finite factors make a Gram matrix non-finite, whose eigenvalue counts as inf, so
        # the bound is 0 (or NaN): no separate finiteness check.
        self._lr_bound, self._noise_ratio = lr_bound, noise_ratio
        self._healthy = math.isfinite(loss) and 0.0 < lr_bound < math.inf

    def _observation(self) -> np.ndarray:
        return nmf_observation(
            loss=self._loss,
            loss0=self._loss0,
            deltas=self._deltas,
            lr_prev=self._lr_prev,
            lr_bound=None if self.bound == "none" else self._lr_bound,
            bound_scale=self.bound_scale,
            noise_ratio=self._noise_ratio,
            progress=self._t / self.horizon,
        )


def nmf_observation(
    loss: Any,
    loss0: Any,
    deltas: Any,
    lr_prev: Any,
    lr_bound: Any | None,
    bound_scale: float,
    noise_ratio: Any,
    progress: Any,
) -> np.ndarray:
    """The ``lrrl/NMF-v0`` observation from the quantities it summarises (see ``NMFEnv``).

    Shared by the env, the batched env (every argument may carry a leading batch dimension;
    ``deltas`` then has shape ``(B, HISTORY)`` and the result ``(B, 8)``) and
    :class:`lrrl.schedulers.PolicyScheduler`, which rebuilds it from a loss history in any
    training loop. ``deltas`` are the last ``HISTORY`` log-loss changes, newest first;
    ``lr_prev`` the last applied learning rate (NaN before the first decision); ``lr_bound``
    the current bound (``None`` when the env has none).
    """
    loss, loss0 = np.asarray(loss, dtype=np.float64), np.asarray(loss0, dtype=np.float64)
    lr_prev = np.asarray(lr_prev, dtype=np.float64)
    deltas = np.asarray(deltas, dtype=np.float64)
    obs = np.empty((*deltas.shape[:-1], 8))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        obs[..., 0] = np.where(loss > 0, np.log(loss / loss0), -OBS_LIMIT)
        obs[..., 1 : 1 + HISTORY] = deltas
        if lr_bound is None:
            obs[..., 4:6] = 0.0
        else:
            lr_bound = np.asarray(lr_bound, dtype=np.float64)
            obs[..., 4] = np.where(lr_prev > 0, np.log(lr_prev / (bound_scale * lr_bound)), 0.0)
            obs[..., 5] = np.where(lr_bound > 0, np.log10(lr_bound), -OBS_LIMIT)
    obs[..., 6] = noise_ratio
    obs[..., 7] = progress
    np.nan_to_num(obs, copy=False, nan=0.0, posinf=OBS_LIMIT, neginf=-OBS_LIMIT)
    return np.clip(obs, -OBS_LIMIT, OBS_LIMIT, out=obs).astype(np.float32)


def nmf_lr_for_action(
    action: Any,
    action_mode: str,
    clip: float,
    lr_floor: float,
    lr_ceiling: float,
    lr_range: Sequence[float],
) -> float:
    """The learning rate an ``lrrl/NMF-v0`` action requests (before clipping to ``clip``).

    Shared by the env and :class:`lrrl.schedulers.PolicyScheduler`; NaN actions count as -1.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)[:1]
    return float(nmf_lrs_for_actions(a, action_mode, clip, lr_floor, lr_ceiling, lr_range)[0])


def nmf_lrs_for_actions(
    actions: np.ndarray,
    action_mode: str,
    clip: Any,
    lr_floor: float,
    lr_ceiling: float,
    lr_range: Sequence[float],
) -> np.ndarray:
    """:func:`nmf_lr_for_action` over a batch: ``actions`` and ``clip`` of shape ``(B,)``."""
    a = np.asarray(actions, dtype=np.float64)
    a = np.where(np.isnan(a), -1.0, np.clip(a, -1.0, 1.0))
    low, high = (lr_floor, lr_ceiling) if action_mode == "bound" else lr_range
    lr = np.exp(math.log(low) + (a + 1.0) / 2.0 * (math.log(high) - math.log(low)))
    return lr * np.asarray(clip, dtype=np.float64) if action_mode == "bound" else lr
