"""Vectorised training envs for stable-baselines3: dummy, subprocess or batched (NMF).

``agent.vec_env`` picks one:

* ``dummy``: SB3's ``DummyVecEnv``, the sub-envs stepped one after the other in-process;
* ``subproc``: SB3's ``SubprocVecEnv``, one worker process per sub-env (1 torch thread each);
* ``batched``: :class:`BatchedVecEnv` around :class:`lrrl.envs.nmf_batched.BatchedNMFEnv`,
  all sub-envs stepped in one set of batched tensor ops (``lrrl/NMF-v0`` only); with
  ``agent.env_workers > 1``, :class:`ShardedVecEnv` splits them into that many batched envs,
  one per worker process, stepped in parallel (one torch thread each);
* ``auto`` (the default): ``batched`` where the env has a batched implementation, else ``dummy``.

All give sub-env ``i`` the seed ``seed + i`` and Monitor's ``info["episode"]``, so a
training run sees the same episodes whichever is used (up to floating-point order: a batched
env sums in a different order than a single one, so runs are exactly reproducible for a
given ``vec_env``, ``n_envs`` and ``env_workers``).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from lrrl.config import VEC_ENVS
from lrrl.envs.nmf_batched import BatchedNMFEnv
from lrrl.envs.registration import make_env

#: Env ids with a batched implementation.
BATCHED_ENV_IDS = ("lrrl/NMF-v0",)


def check_vec_env(kind: Any, env_id: str) -> None:
    """Raise a one-line ``ValueError`` when ``kind`` is unknown or unsupported for ``env_id``."""
    if kind not in VEC_ENVS:
        raise ValueError(f"agent.vec_env={kind!r} is invalid: expected one of {VEC_ENVS}")
    if kind == "batched" and env_id not in BATCHED_ENV_IDS:
        raise ValueError(
            f"agent.vec_env='batched' is invalid for env {env_id!r}: only {BATCHED_ENV_IDS} "
            "have a batched implementation; use 'dummy' or 'subproc'"
        )


def resolve_vec_env(kind: str, env_id: str) -> str:
    """``kind`` with ``auto`` replaced by ``batched`` where the env has a batched
    implementation, else by ``dummy``."""
    if kind != "auto":
        return kind
    return "batched" if env_id in BATCHED_ENV_IDS else "dummy"


def make_training_vec_env(
    env_id: str,
    env_kwargs: dict[str, Any],
    n_envs: int,
    seed: int,
    kind: str = "auto",
    workers: int = 1,
) -> VecEnv:
    """The SB3 ``VecEnv`` a training run learns on, sub-env ``i`` seeded with ``seed + i``.

    ``workers`` (the batched env only) splits the sub-envs across that many processes.
    """
    from stable_baselines3.common.env_util import make_vec_env

    check_vec_env(kind, env_id)
    kind = resolve_vec_env(kind, env_id)
    if kind == "batched":
        venv: VecEnv = (
            ShardedVecEnv(env_kwargs, n_envs, workers)
            if min(workers, n_envs) > 1
            else batched_vec_env(env_kwargs, n_envs)
        )
        venv.seed(seed)
        return venv
    factory: Callable[[], gym.Env] = (
        _SingleThreaded(env_id, env_kwargs)
        if kind == "subproc"
        else lambda: make_env(env_id, **env_kwargs)
    )
    vec_cls = SubprocVecEnv if kind == "subproc" else DummyVecEnv
    return make_vec_env(factory, n_envs=n_envs, seed=seed, vec_env_cls=vec_cls)


class _SingleThreaded:
    """Builds an env in a worker process after limiting torch to one thread there.

    Small tensor work runs fastest single-threaded, and ``n_envs`` workers on a few cores
    would otherwise oversubscribe them.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any]) -> None:
        self.env_id, self.env_kwargs = env_id, env_kwargs

    def __call__(self) -> gym.Env:
        import torch

        torch.set_num_threads(1)
        return make_env(self.env_id, **self.env_kwargs)


def batched_vec_env(env_kwargs: dict[str, Any], n_envs: int) -> BatchedVecEnv:
    """``n_envs`` sub-envs of ``lrrl/NMF-v0`` as one batched SB3 ``VecEnv``."""
    return BatchedVecEnv(BatchedNMFEnv(num_envs=n_envs, autoreset_mode="SameStep", **env_kwargs))


class _SharedVecEnv(VecEnv):
    """What the batched vector envs share: attributes common to every sub-env, no rendering,
    and Monitor's episode statistics reported by the env itself."""

    def _check_all(self, indices: VecEnvIndices) -> None:
        if indices is not None and len(list(self._get_indices(indices))) != self.num_envs:
            raise ValueError(
                f"indices={indices!r} is invalid: the batched env shares its attributes, "
                "so set_attr applies to all sub-envs (indices=None)"
            )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]


class BatchedVecEnv(_SharedVecEnv):
    """An SB3 ``VecEnv`` over a gymnasium vector env that autoresets in the same step.

    Translates gymnasium's vector conventions to SB3's: per-env info dicts, ``dones``,
    ``info["terminal_observation"]`` and ``info["TimeLimit.truncated"]`` at episode ends,
    Monitor's ``info["episode"]`` (return, length, time), and ``seed``/``set_options``
    applied at the next ``reset``. ``get_attr``/``env_method`` reach the vector env's
    attributes (shared by all sub-envs).
    """

    def __init__(self, env: BatchedNMFEnv) -> None:
        if env.autoreset_mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(
                f"autoreset_mode={env.autoreset_mode.value!r} is invalid: expected 'SameStep' "
                "(stable-baselines3 resets an env in the step that ends its episode)"
            )
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._start = time.time()

    def reset(self) -> np.ndarray:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        options = None
        if any(self._options):
            options = {"instance": [opt.get("instance") for opt in self._options]}
        obs, infos = self.env.reset(seed=seeds, options=options)
        self.reset_infos = _split_infos(infos, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, infos = self.env.step(self._actions)
        dones = terminated | truncated
        self._returns += rewards
        self._lengths += 1
        per_env = _split_infos(infos, self.num_envs)
        if dones.any():
            finals = _split_infos(infos["final_info"], self.num_envs)
            now = round(time.time() - self._start, 6)
            for i in np.flatnonzero(dones):
                info = finals[i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                info["terminal_observation"] = infos["final_obs"][i]
                info["episode"] = {
                    "r": round(float(self._returns[i]), 6),
                    "l": int(self._lengths[i]),
                    "t": now,
                }
                self.reset_infos[i] = per_env[i]
                per_env[i] = info
            self._returns[dones] = 0.0
            self._lengths[dones] = 0
        for i in np.flatnonzero(~dones):
            per_env[i]["TimeLimit.truncated"] = False
        return obs, rewards.astype(np.float32), dones, per_env

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "np_random":  # each sub-env's own generator (checkpoints save these)
            return [self.env.np_randoms[i] for i in self._get_indices(indices)]
        value = getattr(self.env, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if attr_name == "np_random":
            for i in self._get_indices(indices):
                self.env.np_randoms[i] = value
            return
        self._check_all(indices)
        setattr(self.env, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]


class ShardedVecEnv(_SharedVecEnv):
    """The batched training env split into ``workers`` shards, each in its own process.

    Shard ``k`` is a :class:`BatchedVecEnv` of a contiguous block of sub-envs; sub-env ``i``
    gets seed ``seed + i`` as in one batched env, so the same episodes are drawn. Each step
    sends every shard its actions, then collects the results, so the shards compute in
    parallel (one torch thread each). ``get_attr("np_random")`` and ``set_attr`` reach each
    sub-env's own generator, as :class:`BatchedVecEnv` does, so checkpoints work unchanged.
    """

    def __init__(self, env_kwargs: dict[str, Any], n_envs: int, workers: int) -> None:
        blocks = [b for b in np.array_split(np.arange(n_envs), workers) if b.size]
        self._starts = [int(b[0]) for b in blocks]
        self._sizes = [int(b.size) for b in blocks]
        ctx = _worker_context()
        self._pipes: list[Connection] = []
        self._processes = []
        for size in self._sizes:
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=_shard_worker, args=(child, parent, env_kwargs, size), daemon=True
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
        self._closed = False
        try:  # each worker answers with its spaces once its env is built, or with the error
            observation_space, action_space = self._gather()[0]
        except Exception:
            self.close()
            raise
        super().__init__(n_envs, observation_space, action_space)

    def _call_one(self, k: int, command: str, *args: Any) -> Any:
        self._pipes[k].send((command, args))
        return self._gather([k])[0]

    def _call_all(self, command: str, per_shard: Sequence[tuple[Any, ...]]) -> list:
        for pipe, args in zip(self._pipes, per_shard, strict=True):
            pipe.send((command, args))
        return self._gather()

    def _gather(self, shards: Sequence[int] | None = None) -> list:
        """Every asked worker's answer, in shard order; a worker's exception is re-raised here
        with its message, after all the answers are read (so the pipes stay in step)."""
        replies = []
        for k in range(len(self._pipes)) if shards is None else shards:
            try:
                replies.append(self._pipes[k].recv())
            except (EOFError, ConnectionError):
                self._processes[k].join(timeout=5)
                raise RuntimeError(
                    f"env worker {k} exited (exit code {self._processes[k].exitcode}); its "
                    "error is printed above"
                ) from None
        for ok, value in replies:
            if not ok:
                raise value
        return [value for _, value in replies]

    def _slices(self, values: Sequence[Any]) -> list[list[Any]]:
        return [list(values[s : s + n]) for s, n in zip(self._starts, self._sizes, strict=True)]

    def reset(self) -> np.ndarray:
        args = zip(self._slices(self._seeds), self._slices(self._options), strict=True)
        results = self._call_all("reset", list(args))
        self.reset_infos = [info for _, infos in results for info in infos]
        self._reset_seeds()
        self._reset_options()
        return np.concatenate([obs for obs, _ in results])

    def step_async(self, actions: np.ndarray) -> None:
        for k, (s, n) in enumerate(zip(self._starts, self._sizes, strict=True)):
            self._pipes[k].send(("step", (actions[s : s + n],)))

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = zip(*self._gather(), strict=True)
        return (
            np.concatenate(obs),
            np.concatenate(rewards),
            np.concatenate(dones),
            [info for shard in infos for info in shard],
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for pipe in self._pipes:
            with contextlib.suppress(OSError):  # a worker that is gone already
                pipe.send(("close", ()))
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()

    def _locate(self, indices: VecEnvIndices) -> list[tuple[int, int]]:
        """``(shard, index within the shard)`` of each sub-env index."""
        out = []
        for i in self._get_indices(indices):
            k = int(np.searchsorted(self._starts, i, side="right")) - 1
            out.append((k, int(i) - self._starts[k]))
        return out

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "np_random":
            shards = self._call_all("get_attr", [(attr_name,)] * len(self._pipes))
            return [shards[k][j] for k, j in self._locate(indices)]
        value = self._call_one(0, "get_attr", attr_name)[0]  # shared by every sub-env
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if attr_name == "np_random":
            for k, j in self._locate(indices):
                self._call_one(k, "set_attr", attr_name, value, [j])
            return
        self._check_all(indices)
        self._call_all("set_attr", [(attr_name, value, None)] * len(self._pipes))

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        results = self._call_all(
            "env_method", [(method_name, method_args, method_kwargs)] * len(self._pipes)
        )
        every = [value for shard in results for value in shard]
        return [every[i] for i in self._get_indices(indices)]


def _worker_context() -> Any:
    """forkserver (spawn where missing): forking a process that has run torch ops may deadlock
    its thread pools. The server imports this module once, so each worker starts in
    milliseconds rather than re-importing torch."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # A child first switches to its parent's default start method. Where a library registers
    # that method (joblib's loky workers, where Hydra's joblib launcher runs jobs), the server
    # must have imported the library too.
    parent = type(mp.get_context()).__module__
    preload = [__name__] + ([parent] if parent != "multiprocessing.context" else [])
    ctx.set_forkserver_preload(preload)
    return ctx


def _shard_worker(
    pipe: Connection, parent: Connection, env_kwargs: dict[str, Any], n_envs: int
) -> None:
    """One shard of a :class:`ShardedVecEnv`: serves its commands until ``close``."""
    import torch

    parent.close()
    torch.set_num_threads(1)
    try:
        venv = batched_vec_env(env_kwargs, n_envs)
    except Exception as err:  # noqa: BLE001  (the parent re-raises it)
        pipe.send((False, err))
        return
    pipe.send((True, (venv.observation_space, venv.action_space)))
    commands: dict[str, Callable[..., Any]] = {
        "reset": lambda seeds, options: _reset_shard(venv, seeds, options),
        "step": venv.step,
        "get_attr": venv.get_attr,
        "set_attr": venv.set_attr,
        "env_method": lambda name, args, kwargs: venv.env_method(name, *args, **kwargs),
    }
    try:
        while True:
            command, args = pipe.recv()
            if command == "close":
                break
            try:
                pipe.send((True, commands[command](*args)))
            except Exception as err:  # noqa: BLE001  (sent to the parent, which re-raises it)
                pipe.send((False, err))
    except (EOFError, KeyboardInterrupt):  # the parent is gone
        pass
    finally:
        venv.close()


def _reset_shard(
    venv: BatchedVecEnv, seeds: list[int | None], options: list[dict[str, Any]]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    venv._seeds, venv._options = seeds, options
    obs = venv.reset()
    return obs, venv.reset_infos


def _split_infos(infos: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Gymnasium vector infos (arrays with ``_key`` masks) as one dict per sub-env."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in infos.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = infos.get(f"_{key}", np.ones(num_envs, dtype=bool))
        for i in np.flatnonzero(mask):
            item = value[i]
            out[i][key] = item.item() if isinstance(item, np.generic) else item
    return out
