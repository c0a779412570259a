"""``lrrl/NMF-v0`` vectorised: ``B`` NMF episodes stepped together in one set of tensor ops.

``gymnasium.make_vec("lrrl/NMF-v0", num_envs=B, vectorization_mode="vector_entry_point")``
returns a :class:`BatchedNMFEnv`. Sub-env ``i`` behaves exactly like an
:class:`~lrrl.envs.nmf.NMFEnv` reset with seed ``seed + i`` (the convention of gymnasium's
vector envs): the same instances, initial factors, minibatches and gradient noise, so the
same observations, rewards and infos up to floating-point summation order. Both run the one
episode implementation, :class:`lrrl.envs.nmf_episodes.NMFEpisodes`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from lrrl.envs.base import InnerControl, LRControlEnv, as_int, require
from lrrl.envs.nmf import NMFConfig, NMFEnv, nmf_actions_for_lrs, nmf_lrs_for_actions
from lrrl.envs.nmf_episodes import NMFEpisodes, Transition
from lrrl.envs.nmf_instances import NMFInstance

AUTORESET_MODES = tuple(mode.value for mode in AutoresetMode)


class BatchedNMFEnv(VectorEnv):
    """``num_envs`` copies of :class:`~lrrl.envs.nmf.NMFEnv` as one batched computation.

    ## Description

    Sub-envs may run different instances at once (shape, rank, minibatch size, gradient
    noise and horizon all vary by instance): see :mod:`lrrl.envs.nmf_episodes` for how they
    share padded tensors and batched products (``torch.bmm``) on the CPU or a GPU.

    ## Spaces, rewards, episode end, infos

    As ``NMFEnv``, batched: observations ``(B, 8)``, actions ``(B, 1)``; infos are gymnasium
    vector infos (``info["lr"]`` an array of ``B``, with the mask ``info["_lr"]``). A sub-env
    that diverges terminates alone; the others go on. Each sub-env truncates after its
    instance's horizon.

    ## Autoreset

    ``autoreset_mode="NextStep"`` (default, as gymnasium's vector envs): the step after a
    sub-env's episode ends resets it (reward 0). ``"SameStep"``: it is reset within the step
    that ends the episode; the last observation and info are in ``info["final_obs"]`` and
    ``info["final_info"]`` (what stable-baselines3 expects, see :mod:`lrrl.agents.vec`).
    ``"Disabled"``: a finished sub-env stays finished (its steps do nothing and report
    nothing) until ``reset(options={"reset_mask": mask})`` restarts it; batched evaluation
    runs this way.

    ## Arguments

    ``num_envs``, ``autoreset_mode`` and an :class:`~lrrl.envs.nmf.NMFConfig` as ``config=``
    or as its keyword arguments.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        config: NMFConfig | None = None,
        **kwargs: Any,
    ) -> None:
        self.num_envs = as_int("num_envs", num_envs, 1)
        mode = autoreset_mode.value if isinstance(autoreset_mode, AutoresetMode) else autoreset_mode
        require(
            mode in AUTORESET_MODES, "autoreset_mode", autoreset_mode, f"one of {AUTORESET_MODES}"
        )
        self.autoreset_mode = AutoresetMode(mode)
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.cfg = NMFConfig.build(config, **kwargs)
        # Instance lookup (by object, name or index) is the single env's; it holds no tensors.
        self._lookup = LRControlEnv()
        self._lookup._hold_instances(self.cfg.suite, self.cfg.instances)
        self._episodes = NMFEpisodes(self.cfg, self.num_envs)
        probe = NMFEnv(self.cfg)
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.observation_space = batch_space(probe.observation_space, self.num_envs)
        self.action_space = batch_space(probe.action_space, self.num_envs)
        self.render_mode = None
        B = self.num_envs
        self._rngs: list[np.random.Generator | None] = [None] * B
        self._autoreset = np.zeros(B, dtype=bool)  # NextStep: reset at the next step
        self._finished = np.zeros(B, dtype=bool)  # Disabled: idle until reset
        self._lr_request: np.ndarray | None = None
        self._inner: InnerControl | None = None

    # -- what the harness and the training code read --------------------------------------

    @property
    def steps_per_action(self) -> int:
        return self.cfg.steps_per_action

    @property
    def horizons(self) -> np.ndarray:
        """Each sub-env's current episode length."""
        return self._episodes.horizon.copy()

    @property
    def clips(self) -> np.ndarray:
        """Each sub-env's largest learning rate for its next step."""
        return self._episodes.clip

    def config(self) -> dict[str, Any]:
        """The ``NMFEnv`` keyword arguments shared by every sub-env."""
        return self.cfg.to_dict()

    def instances(self, split: str) -> list[NMFInstance]:
        return self._lookup.instances(split)

    @property
    def current_instances(self) -> list[str]:
        """The instance name of each sub-env's current episode."""
        return [inst.name if inst is not None else "" for inst in self._episodes.instances]

    def request_lr(self, lrs: Any) -> None:
        """Apply exactly these learning rates (then clipped) at the next step, one per sub-env;
        NaN entries take the sub-env's action instead. As ``NMFEnv.request_lr``, each request
        must be NaN or a positive finite number."""
        lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
        require(lrs.size == self.num_envs, "lr", lrs.shape, f"{self.num_envs} learning rates")
        given = lrs[~np.isnan(lrs)]
        require(
            bool(np.all((given > 0) & np.isfinite(given))),
            "lr",
            given[~((given > 0) & np.isfinite(given))].tolist(),
            "positive finite learning rates (NaN: none)",
        )
        self._lr_request = lrs

    def actions_for_lrs(self, lrs: Any) -> np.ndarray:
        """The ``(B, 1)`` actions requesting ``lrs`` under the current action mapping."""
        return nmf_actions_for_lrs(lrs, self.cfg, self.clips, self._episodes.fraction)[:, None]

    def set_inner_control(self, control: InnerControl | None) -> None:
        """As :meth:`NMFEnv.set_inner_control`, for every sub-env (``episodes`` are indices)."""
        self._inner = control

    # -- gymnasium vector API -------------------------------------------------------------

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset sub-envs; an int ``seed`` seeds sub-env ``i`` with ``seed + i``.

        ``options={"instance": x}`` picks the instance (object, name or index) of every
        sub-env, or one per sub-env when ``x`` is a list of ``num_envs`` of them;
        ``options={"reset_mask": mask}`` resets only the masked sub-envs.
        """
        B = self.num_envs
        options = options or {}
        mask = np.asarray(options.get("reset_mask", np.ones(B, dtype=bool)), dtype=bool)
        require(mask.shape == (B,), "reset_mask", mask.shape, f"a boolean array of {B}")
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(B)]
        else:
            seeds = list(seed)
            require(len(seeds) == B, "seed", seed, f"an int or a list of {B} seeds")
        choice = options.get("instance")
        if isinstance(choice, (list, tuple)):
            require(len(choice) == B, "instance", choice, f"one instance or a list of {B}")
            choices = list(choice)
        else:
            choices = [choice] * B
        idx = np.flatnonzero(mask)
        for i in idx:
            self._load(int(i), seeds[i], choices[i])
        self._episodes.start(idx)
        self._autoreset[idx] = False
        self._finished[idx] = False
        self._lr_request = None
        return self._episodes.observations(), self._reset_infos(idx)

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        B = self.num_envs
        actions = np.asarray(actions, dtype=np.float64)
        require(actions.size == B, "actions", actions.shape, f"{B} actions, shape ({B}, 1)")
        fraction = self._episodes.fraction
        requested = nmf_lrs_for_actions(actions.reshape(B), self.cfg, self.clips, fraction)
        if self._lr_request is not None:
            requested = np.where(np.isnan(self._lr_request), requested, self._lr_request)
            self._lr_request = None

        resetting = self._autoreset.copy()
        if resetting.any():  # NextStep autoreset: these sub-envs reset instead of stepping
            idx = np.flatnonzero(resetting)
            for i in idx:
                self._load(int(i), None, None)
            self._episodes.start(idx)
        stepping = ~resetting & ~self._finished
        tr = self._episodes.step(requested, stepping, self._inner)
        done = tr.diverged | tr.truncated
        obs = self._episodes.observations()
        infos = self._step_infos(tr, stepping)
        if resetting.any():
            infos["lr_bound"] = np.where(resetting, self._bound_info(), infos["lr_bound"])
            infos["_lr"] = infos["_lr"] | resetting

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
                self._load(int(i), None, None)
            self._episodes.start(ended)
            obs = self._episodes.observations()
            fresh = self._reset_infos(ended)
            for key in fresh:
                if not key.startswith("_"):
                    infos[key] = np.where(done, fresh[key], infos[key])
            infos["_inner_capped"] = stepping & ~done
            infos["final_obs"], infos["_final_obs"] = final_obs, done.copy()
            infos["final_info"], infos["_final_info"] = final_info, done.copy()
        elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = done
        else:
            self._finished |= done
        return obs, tr.reward, tr.diverged.copy(), tr.truncated.copy(), infos

    @property
    def np_randoms(self) -> list[np.random.Generator | None]:
        """Each sub-env's own generator by index (``None`` before its first reset); assignable,
        so a checkpoint can put them back."""
        return self._rngs

    # -- internals ------------------------------------------------------------------------

    def _load(self, i: int, seed: int | None, choice: Any) -> None:
        """Sub-env ``i``'s ``NMFEnv.reset``: the same draws from the same generators."""
        rng = self._rngs[i]
        if seed is not None or rng is None:
            rng, _ = seeding.np_random(seed)
            self._rngs[i] = rng
        lookup = self._lookup
        if choice is not None:
            inst = lookup._resolve(choice)
        else:
            inst = lookup._pool[int(rng.integers(len(lookup._pool)))]
        self._episodes.load(i, inst, int(rng.integers(2**62)))

    def _bound_info(self) -> np.ndarray:
        if self.cfg.bound == "none":
            return np.full(self.num_envs, math.inf)
        return self._episodes.lr_bound.copy()

    def _infos(self, values: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for key, value in values.items():
            infos[key] = value
            infos[f"_{key}"] = mask.copy()
        return infos

    def _step_infos(self, tr: Transition, stepping: np.ndarray) -> dict[str, Any]:
        ep = self._episodes
        infos = self._infos(
            {
                "lr": np.where(stepping, tr.lr, math.nan),
                "lr_bound": tr.lr_bound,
                "loss": ep.loss.copy(),
                "clipped": tr.clipped,
                "diverged": tr.diverged.copy(),
                "instance": np.array(self.current_instances, dtype=object),
                "noise_ratio": ep.noise_ratio.copy(),
                "inner_capped": np.where(stepping, tr.inner_capped, 0),
            },
            stepping if self.autoreset_mode == AutoresetMode.DISABLED else np.ones_like(stepping),
        )
        infos["_inner_capped"] = stepping.copy()
        return infos

    def _reset_infos(self, idx: np.ndarray) -> dict[str, Any]:
        B = self.num_envs
        mask = np.zeros(B, dtype=bool)
        mask[idx] = True
        ep = self._episodes
        return self._infos(
            {
                "lr": np.full(B, math.nan),
                "lr_bound": self._bound_info(),
                "loss": ep.loss.copy(),
                "clipped": np.zeros(B, dtype=bool),
                "diverged": np.zeros(B, dtype=bool),
                "instance": np.array(self.current_instances, dtype=object),
                "noise_ratio": ep.noise_ratio.copy(),
            },
            mask,
        )


def make_batched(num_envs: int, **kwargs: Any) -> BatchedNMFEnv:
    """``gymnasium.make_vec`` for ``lrrl/NMF-v0`` (the batched implementation)."""
    import gymnasium as gym

    venv = gym.make_vec(
        "lrrl/NMF-v0", num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )
    assert isinstance(venv, BatchedNMFEnv)
    return venv
