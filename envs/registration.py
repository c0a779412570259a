"""Gymnasium registration of the lrrl environments, and building them by id.

The envs truncate their episodes themselves, at each instance's own horizon, so
``gymnasium.make("lrrl/NMF-v0", horizon=20)`` runs 20 decisions wherever it is made; the
registrations carry no ``max_episode_steps``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import gymnasium as gym

from lrrl.envs.base import check_options

#: The lrrl environments: id -> (entry point, vector entry point or None).
ENVS = {
    "lrrl/NMF-v0": ("lrrl.envs.nmf:NMFEnv", "lrrl.envs.nmf_batched:BatchedNMFEnv"),
    "lrrl/DNN-v0": ("lrrl.envs.dnn:DNNEnv", None),
}


def register_envs() -> None:
    """Register ``lrrl/NMF-v0`` and ``lrrl/DNN-v0`` (idempotent)."""
    for env_id, (entry, vector_entry) in ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, vector_entry_point=vector_entry)


def env_options(env_id: str) -> list[str]:
    """The constructor keyword arguments of a registered lrrl env."""
    if env_id not in gym.registry:
        lrrl_ids = sorted(k for k in gym.registry if k.startswith("lrrl/"))
        raise ValueError(f"env id={env_id!r} is invalid: expected one of {lrrl_ids}")
    entry = gym.spec(env_id).entry_point
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    config = getattr(cls, "config_class", None)
    if config is not None:  # options live in a config dataclass
        return [f.name for f in dataclasses.fields(config)]
    assert callable(cls), f"{env_id} has no entry point"
    return [p for p in inspect.signature(cls).parameters if p != "kwargs"]


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` of an lrrl env with its options checked (one-line errors)."""
    check_options(f"env ({env_id})", kwargs, env_options(env_id))
    return gym.make(env_id, disable_env_checker=True, **kwargs)


def env_config(env_id: str, options: dict[str, Any]) -> Any:
    """The checked config object of an env whose options live in a config dataclass
    (``lrrl/NMF-v0``: :class:`~lrrl.envs.nmf.NMFConfig`), else ``None``."""
    env_options(env_id)  # a known id
    entry = gym.spec(env_id).entry_point
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    config = getattr(cls, "config_class", None)
    return config.build(**options) if config is not None else None
