"""``lrrl/NMF-v0`` vectorised: ``B`` NMF problems stepped together in one set of tensor ops.

``gymnasium.make_vec("lrrl/NMF-v0", num_envs=B, vectorization_mode="vector_entry_point")``
returns a :class:`BatchedNMFEnv`. Sub-env ``i`` behaves exactly like an
:class:`~lrrl.envs.nmf.NMFEnv` reset with seed ``seed + i`` (the convention of gymnasium's
vector envs): the same instances, initial factors, minibatches and gradient noise, so the
same observations, rewards and infos up to floating-point summation order.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from lrrl.envs import nmf_ops
from lrrl.envs.base import as_int, require
from lrrl.envs.nmf import HISTORY, NMFEnv, nmf_lrs_for_actions, nmf_observation
from lrrl.envs.nmf_instances import NMFInstance

AUTORESET_MODES = (AutoresetMode.NEXT_STEP.value, AutoresetMode.SAME_STEP.value)


class BatchedNMFEnv(VectorEnv):
    """``num_envs`` copies of :class:`~lrrl.envs.nmf.NMFEnv` as one batched computation.

    ## Description

    The factors of all sub-envs live in padded tensors ``V (B, M, N)``, ``W (B, M, r)`` and
    ``H (B, r, N)``, where ``(M, N)`` is the largest instance shape of the suite; every inner
    SGD step is one batched matrix product (``torch.bmm``) on the CPU or a GPU (``device=``).
    Zero padding is exact: padded rows of ``W`` and columns of ``H`` stay zero and add
    nothing to the loss, the gradients or the bound (:mod:`lrrl.envs.nmf_ops` takes the true
    sizes). The arithmetic, observation and action mapping are the single env's functions.

    ## Spaces, rewards, episode end, infos

    As ``NMFEnv``, batched: observations ``(B, 8)``, actions ``(B, 1)``; infos are gymnasium
    vector infos (``info["lr"]`` an array of ``B``, with the mask ``info["_lr"]``). A sub-env
    that diverges terminates alone; the others go on. Sub-envs truncate after
    ``max_episode_steps`` decisions (default: ``horizon``).

    ## Autoreset

    ``autoreset_mode="NextStep"`` (default, as gymnasium's vector envs): the step after a
    sub-env's episode ends resets it (reward 0). ``"SameStep"``: it is reset within the step
    that ends the episode; the last observation and info are in ``info["final_obs"]`` and
    ``info["final_info"]`` (what stable-baselines3 expects, see :mod:`lrrl.agents.vec`).

    ## Arguments

    ``num_envs``, ``max_episode_steps``, ``autoreset_mode`` and every ``NMFEnv`` keyword
    argument. With minibatches, ``batch_size`` must be below every instance's column count
    (one minibatch size for the whole batch).
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        max_episode_steps: int | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        **kwargs: Any,
    ) -> None:
        self.num_envs = as_int("num_envs", num_envs, 1)
        mode = autoreset_mode.value if isinstance(autoreset_mode, AutoresetMode) else autoreset_mode
        require(
            mode in AUTORESET_MODES, "autoreset_mode", autoreset_mode, f"one of {AUTORESET_MODES}"
        )
        self.autoreset_mode = AutoresetMode(mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        # The single env validates the options and holds the instance suite.
        self.template = NMFEnv(**kwargs)
        tpl = self.template
        self.max_episode_steps = (
            tpl.horizon
            if max_episode_steps is None
            else as_int("max_episode_steps", max_episode_steps, 1)
        )
        every = tpl.instances("all")
        self._M = max(inst.shape[0] for inst in every)
        self._N = max(inst.shape[1] for inst in every)
        if tpl.batch_size is not None:
            n_min = min(inst.shape[1] for inst in every)
            require(
                tpl.batch_size < n_min,
                "batch_size",
                tpl.batch_size,
                f"null or an integer below every instance's column count ({n_min}) "
                "for the batched env",
            )

        self.single_observation_space = tpl.observation_space
        self.single_action_space = tpl.action_space
        self.observation_space = batch_space(tpl.observation_space, self.num_envs)
        self.action_space = batch_space(tpl.action_space, self.num_envs)
        self.render_mode = None
        self.dtype, self.device = tpl.dtype, tpl.device

        B, r = self.num_envs, tpl.rank
        like = dict(dtype=self.dtype, device=self.device)
        self._V = torch.zeros((B, self._M, self._N), **like)
        self._W = torch.zeros((B, self._M, r), **like)
        self._H = torch.zeros((B, r, self._N), **like)
        self._m = torch.ones(B, **like)
        self._n = torch.ones(B, **like)
        self._matrices: dict[str, torch.Tensor] = {}
        self._rngs: list[np.random.Generator | None] = [None] * B
        self._gens: list[torch.Generator | None] = [None] * B
        self._instances: list[NMFInstance | None] = [None] * B
        self._loss0 = np.ones(B)
        self._loss = np.ones(B)
        self._deltas = np.zeros((B, HISTORY))
        self._lr_prev = np.full(B, math.nan)
        self._t = np.zeros(B, dtype=np.int64)
        self._lr_bound = np.ones(B)
        self._noise_ratio = np.zeros(B)
        self._healthy = np.ones(B, dtype=bool)
        self._autoreset = np.zeros(B, dtype=bool)

    # -- what the pipeline and the harness read -------------------------------------------

    @property
    def horizon(self) -> int:
        return self.template.horizon

    @property
    def steps_per_action(self) -> int:
        return self.template.steps_per_action

    def config(self) -> dict[str, Any]:
        """The ``NMFEnv`` keyword arguments shared by every sub-env."""
        return self.template.config()

    def instances(self, split: str) -> list[NMFInstance]:
        return self.template.instances(split)

    @property
    def current_instances(self) -> list[str]:
        """The instance name of each sub-env's current episode."""
        return [inst.name for inst in self._instances]

    def factors(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sub-env ``i``'s ``(W, H, V)`` without padding, as numpy arrays."""
        m, n = self._instances[i].shape
        return (
            self._W[i, :m].cpu().numpy(),
            self._H[i, :, :n].cpu().numpy(),
            self._V[i, :m, :n].cpu().numpy(),
        )

    # -- gymnasium vector API -------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every sub-env; an int ``seed`` seeds sub-env ``i`` with ``seed + i``.

        ``options={"instance": x}`` picks the instance (object, name or index) of every
        sub-env, or one per sub-env when ``x`` is a list of ``num_envs`` of them.
        """
        B = self.num_envs
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(B)]
        else:
            seeds = list(seed)
            require(len(seeds) == B, "seed", seed, f"an int or a list of {B} seeds")
        choice = (options or {}).get("instance")
        if isinstance(choice, (list, tuple)):
            require(len(choice) == B, "instance", choice, f"one instance or a list of {B}")
            choices = list(choice)
        else:
            choices = [choice] * B
        every = np.arange(B)
        for i in every:
            self._reset_one(int(i), seeds[i], choices[i])
        self._start(every)
        self._autoreset[:] = False
        return self._observations(), self._reset_infos(every)

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        B, tpl = self.num_envs, self.template
        actions = np.asarray(actions, dtype=np.float64)
        require(actions.size == B, "actions", actions.shape, f"{B} actions, shape ({B}, 1)")
        actions = actions.reshape(B)

        resetting = self._autoreset.copy()
        if resetting.any():  # NextStep autoreset: these sub-envs reset instead of stepping
            for i in np.flatnonzero(resetting):
                self._reset_one(int(i), None, None)
            self._start(np.flatnonzero(resetting))
        stepping = ~resetting
        was_healthy = self._healthy.copy()
        active = stepping & was_healthy

        has_bound = tpl.bound != "none"
        clip = tpl.bound_scale * self._lr_bound if has_bound else np.full(B, math.inf)
        lr_bound = self._lr_bound.copy() if has_bound else np.full(B, math.inf)
        requested = nmf_lrs_for_actions(
            actions, tpl.action_mode, clip, tpl.lr_floor, tpl.lr_ceiling, tpl.lr_range
        )
        clipped = active & (requested > clip * (1.0 + 1e-6))
        lr = np.minimum(requested, clip)
        inner_capped = self._run_inner_steps(np.where(active, lr, 0.0), active)

        with torch.no_grad():
            R = nmf_ops.residual(self._V, self._W, self._H)
            loss = nmf_ops.loss_from_residual(R).double().cpu().numpy()
            terms = self._bound_terms(R)
            finite = (
                (
                    torch.isfinite(self._W).all(dim=(-2, -1))
                    & torch.isfinite(self._H).all(dim=(-2, -1))
                )
                .cpu()
                .numpy()
            )
        loss = np.where(active, loss, self._loss)
        loss_prev = self._loss
        with np.errstate(invalid="ignore", over="ignore"):
            diverged = active & (~np.isfinite(loss) | (loss > tpl.max_loss_ratio * self._loss0))
        fresh = active & ~diverged
        new_bound, new_ratio = terms
        self._lr_bound = np.where(fresh, new_bound, self._lr_bound)
        self._noise_ratio = np.where(fresh, new_ratio, self._noise_ratio)
        healthy = (
            finite & np.isfinite(loss_prev) & (self._lr_bound > 0) & (self._lr_bound < math.inf)
        )
        diverged |= fresh & ~healthy
        # A sub-env whose factors had already blown up has nothing left to train.
        diverged |= stepping & ~was_healthy
        self._healthy = np.where(fresh, healthy, self._healthy) & ~diverged

        safe_prev, safe_loss = np.maximum(loss_prev, 1e-300), np.maximum(loss, 1e-300)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            if tpl.reward_mode == "log_ratio":
                reward = np.log(safe_prev) - np.log(safe_loss)
            else:
                reward = (loss_prev - loss) / self._loss0
        reward = np.where(diverged, -tpl.divergence_penalty, reward)
        reward = np.where(stepping, reward, 0.0)

        with np.errstate(invalid="ignore", divide="ignore"):
            delta = np.log(safe_loss) - np.log(safe_prev)
        grow = fresh & ~diverged
        self._deltas[grow] = np.concatenate([delta[grow, None], self._deltas[grow, :-1]], axis=1)
        self._loss = loss
        self._lr_prev = np.where(active, lr, self._lr_prev)
        self._t += stepping
        applied = np.where(active, lr, np.where(np.isnan(requested), 0.0, requested))

        terminated = stepping & diverged
        truncated = stepping & (self._t >= self.max_episode_steps)
        obs = self._observations()
        infos = self._infos(
            {
                "lr": np.where(stepping, applied, math.nan),
                "lr_bound": lr_bound if has_bound else np.full(B, math.inf),
                "loss": self._loss.copy(),
                "clipped": clipped,
                "diverged": terminated.copy(),
                "instance": np.array(self.current_instances, dtype=object),
                "noise_ratio": self._noise_ratio.copy(),
            }
        )
        if resetting.any():
            infos["lr_bound"] = np.where(resetting, self._bound_info(), infos["lr_bound"])
        infos["inner_capped"] = np.where(stepping, inner_capped, 0)
        infos["_inner_capped"] = stepping.copy()

        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            ended = np.flatnonzero(done)
            final_obs = np.full(B, None, dtype=object)
            for i in ended:
                final_obs[i] = obs[i]
            final_info = {
                key: value.copy() if isinstance(value, np.ndarray) else value
                for key, value in infos.items()
            }
            for key in [k for k in final_info if k.startswith("_")]:
                final_info[key] = final_info[key] & done
            for i in ended:
                self._reset_one(int(i), None, None)
            self._start(ended)
            obs = self._observations()
            fresh_info = self._reset_infos(ended)
            for key in fresh_info:
                if not key.startswith("_"):
                    infos[key] = np.where(done, fresh_info[key], infos[key])
            infos["_inner_capped"] = stepping & ~done
            infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
            infos["final_info"], infos["_final_info"] = final_info, done.copy()
        else:
            self._autoreset = done
        return obs, reward.astype(np.float64), terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        self.template.close()

    @property
    def np_randoms(self) -> list[np.random.Generator | None]:
        """Each sub-env's own generator by index (``None`` before its first reset); assignable,
        so a checkpoint can put them back."""
        return self._rngs

    # -- internals ------------------------------------------------------------------------

    def _matrix(self, inst: NMFInstance) -> torch.Tensor:
        if inst.name not in self._matrices:
            self._matrices[inst.name] = torch.tensor(
                inst.matrix(), dtype=self.dtype, device=self.device
            )
        return self._matrices[inst.name]

    def _reset_one(self, i: int, seed: int | None, choice: Any) -> None:
        """Sub-env ``i``'s ``NMFEnv.reset``: the same draws from the same generators."""
        tpl = self.template
        if seed is not None or self._rngs[i] is None:
            self._rngs[i], _ = seeding.np_random(seed)
        rng = self._rngs[i]
        if choice is not None:
            inst = tpl._resolve(choice)
        else:
            inst = tpl._pool[int(rng.integers(len(tpl._pool)))]
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(rng.integers(2**62)))
        V = self._matrix(inst)
        m, n = inst.shape
        r = tpl.rank
        init_scale = math.sqrt(float(V.mean()) / r)
        like = dict(generator=gen, dtype=self.dtype, device=self.device)
        W = init_scale * torch.randn((m, r), **like).abs()
        H = init_scale * torch.randn((r, n), **like).abs()
        self._V[i].zero_()
        self._W[i].zero_()
        self._H[i].zero_()
        self._V[i, :m, :n] = V
        self._W[i, :m] = W
        self._H[i, :, :n] = H
        self._m[i], self._n[i] = m, n
        self._gens[i], self._instances[i] = gen, inst

    def _start(self, idx: np.ndarray) -> None:
        """Initial loss, bound and counters of freshly reset sub-envs ``idx``."""
        index = torch.as_tensor(idx, device=self.device)
        with torch.no_grad():
            V, W, H = self._V[index], self._W[index], self._H[index]
            R = nmf_ops.residual(V, W, H)
            loss = nmf_ops.loss_from_residual(R).double().cpu().numpy()
            bound, ratio = self._bound_terms(R, index)
            finite = (
                (torch.isfinite(W).all(dim=(-2, -1)) & torch.isfinite(H).all(dim=(-2, -1)))
                .cpu()
                .numpy()
            )
        self._loss0[idx] = self._loss[idx] = loss
        self._deltas[idx] = 0.0
        self._lr_prev[idx] = math.nan
        self._t[idx] = 0
        self._lr_bound[idx], self._noise_ratio[idx] = bound, ratio
        self._healthy[idx] = finite & np.isfinite(loss) & (bound > 0) & (bound < math.inf)

    def _bound_terms(
        self, R: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        tpl = self.template
        pick = (lambda x: x) if index is None else (lambda x: x[index])
        terms = nmf_ops.stability_bound(
            pick(self._V),
            pick(self._W),
            pick(self._H),
            tpl.noise_std,
            tpl.batch_size,
            noisy=tpl.bound == "noisy",
            R=R,
            m=pick(self._m),
            n=pick(self._n),
        )
        return (
            terms.lr_bound.double().cpu().numpy(),
            terms.noise_ratio.double().cpu().numpy(),
        )

    def _run_inner_steps(self, lr: np.ndarray, active: np.ndarray) -> np.ndarray:
        """``steps_per_action`` batched inner steps; sub-envs not ``active`` keep their factors.

        Returns, per sub-env, how many inner steps the safeguard capped.
        """
        tpl = self.template
        B, steps, r = self.num_envs, tpl.steps_per_action, tpl.rank
        like = dict(dtype=self.dtype, device=self.device)
        minibatch = tpl.batch_size is not None
        cols = tpl.batch_size if minibatch else self._N
        columns = (
            torch.zeros((B, steps, cols), dtype=torch.long, device=self.device)
            if minibatch
            else None
        )
        noisy = tpl.noise_std > 0
        noise_w = torch.zeros((B, steps, self._M, r), **like) if noisy else None
        noise_h = torch.zeros((B, steps, r, cols), **like) if noisy else None
        with torch.no_grad():
            for i in np.flatnonzero(active):
                inst = self._instances[i]
                m, n = inst.shape
                draws = nmf_ops.draw(
                    self._gens[i],
                    steps,
                    (m, n),
                    r,
                    tpl.batch_size,
                    tpl.noise_std,
                    self.dtype,
                    self.device,
                )
                if minibatch:
                    columns[i] = draws.columns
                if noisy:
                    noise_w[i, :, :m] = draws.noise_w
                    noise_h[i, :, :, : draws.noise_h.shape[-1]] = draws.noise_h
            lr_t = torch.as_tensor(lr, **like)
            cap = tpl.bound_scale if tpl.bound != "none" and tpl.safeguard else None
            W, H = self._W, self._H
            capped = torch.zeros(B, dtype=torch.long, device=self.device)
            for k in range(steps):
                W, H, min_cap = nmf_ops.inner_step(
                    self._V,
                    W,
                    H,
                    lr_t,
                    cap,
                    columns=None if columns is None else columns[:, k],
                    noise_w=None if noise_w is None else noise_w[:, k],
                    noise_h=None if noise_h is None else noise_h[:, k],
                    n=self._n,
                )
                if min_cap is not None:
                    capped += min_cap < lr_t
            if not active.all():
                keep = torch.as_tensor(active, device=self.device)[:, None, None]
                W, H = torch.where(keep, W, self._W), torch.where(keep, H, self._H)
            self._W, self._H = W, H
        return capped.cpu().numpy()

    def _bound_info(self) -> np.ndarray:
        return (
            self._lr_bound.copy()
            if self.template.bound != "none"
            else np.full(self.num_envs, math.inf)
        )

    def _observations(self) -> np.ndarray:
        tpl = self.template
        return nmf_observation(
            loss=self._loss,
            loss0=self._loss0,
            deltas=self._deltas,
            lr_prev=self._lr_prev,
            lr_bound=None if tpl.bound == "none" else self._lr_bound,
            bound_scale=tpl.bound_scale,
            noise_ratio=self._noise_ratio,
            progress=self._t / tpl.horizon,
        )

    def _infos(self, values: dict[str, np.ndarray]) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for key, value in values.items():
            infos[key] = value
            infos[f"_{key}"] = np.ones(self.num_envs, dtype=bool)
        return infos

    def _reset_infos(self, idx: np.ndarray) -> dict[str, Any]:
        B = self.num_envs
        mask = np.zeros(B, dtype=bool)
        mask[idx] = True
        infos = self._infos(
            {
                "lr": np.full(B, math.nan),
                "lr_bound": self._bound_info(),
                "loss": self._loss.copy(),
                "clipped": np.zeros(B, dtype=bool),
                "diverged": np.zeros(B, dtype=bool),
                "instance": np.array(self.current_instances, dtype=object),
                "noise_ratio": self._noise_ratio.copy(),
            }
        )
        for key in list(infos):
            if key.startswith("_"):
                infos[key] = mask.copy()
        return infos


def make_batched(num_envs: int, **kwargs: Any) -> BatchedNMFEnv:
    """``gymnasium.make_vec`` for ``lrrl/NMF-v0`` with the env's ``horizon`` as the time limit."""
    horizon = kwargs.get("horizon", gym.spec("lrrl/NMF-v0").max_episode_steps)
    return gym.make_vec(
        "lrrl/NMF-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        max_episode_steps=horizon,
        **kwargs,
    )
