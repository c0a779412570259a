"""Gymnasium registration of the lrrl environments."""

from __future__ import annotations

import gymnasium as gym

#: Decisions per episode unless ``max_episode_steps`` is given to ``gymnasium.make``.
NMF_EPISODE_STEPS = 50
DNN_EPISODE_STEPS = 20


def register_envs() -> None:
    """Register ``lrrl/NMF-v0`` and ``lrrl/DNN-v0`` (idempotent)."""
    if "lrrl/NMF-v0" not in gym.registry:
        gym.register(
            id="lrrl/NMF-v0",
            entry_point="lrrl.envs.nmf:NMFEnv",
            vector_entry_point="lrrl.envs.nmf_batched:BatchedNMFEnv",
            max_episode_steps=NMF_EPISODE_STEPS,
        )
    if "lrrl/DNN-v0" not in gym.registry:
        gym.register(
            id="lrrl/DNN-v0",
            entry_point="lrrl.envs.dnn:DNNEnv",
            max_episode_steps=DNN_EPISODE_STEPS,
        )
