"""Reinforcement-learning agents from stable-baselines3 (and sb3-contrib where installed)."""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from lrrl.rollout import Decision, DecisionState


def _recurrent_ppo() -> type[BaseAlgorithm]:
    try:
        from sb3_contrib import RecurrentPPO
    except ImportError as err:  # optional dependency
        raise ValueError(
            "agent algo='recurrent_ppo' needs sb3-contrib: pip install 'lrrl[contrib]'"
        ) from err
    return RecurrentPPO


#: ``algo`` names accepted in ``conf/agent/*.yaml``; values build the algorithm class.
ALGOS: dict[str, Any] = {
    "ppo": lambda: PPO,
    "a2c": lambda: A2C,
    "sac": lambda: SAC,
    "recurrent_ppo": _recurrent_ppo,
}
DEFAULT_POLICY = {"recurrent_ppo": "MlpLstmPolicy"}


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class behind an ``algo`` name, with a clear error for unknown names."""
    if algo not in ALGOS:
        raise ValueError(f"agent.algo={algo!r} is invalid: expected one of {sorted(ALGOS)}")
    return ALGOS[algo]()


def check_hyperparams(algo: str, hyperparams: dict[str, Any]) -> None:
    """Reject constructor arguments the algorithm does not take, before any work starts."""
    accepted = set(inspect.signature(algo_class(algo).__init__).parameters) - {
        "self",
        "env",
        "policy",
    }
    unknown = sorted(set(hyperparams) - accepted)
    if unknown:
        raise ValueError(
            f"unknown agent.hyperparams option(s) {', '.join(unknown)} for {algo}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )


def make_agent(
    algo: str,
    env: VecEnv,
    seed: int,
    hyperparams: dict[str, Any] | None = None,
    policy: str | None = None,
    device: str = "cpu",
) -> BaseAlgorithm:
    """Build an SB3 algorithm on ``env``; ``hyperparams`` go to its constructor unchanged."""
    hyperparams = dict(hyperparams or {})
    check_hyperparams(algo, hyperparams)
    cls = algo_class(algo)
    policy = policy or DEFAULT_POLICY.get(algo, "MlpPolicy")
    return cls(policy, env, seed=seed, device=device, verbose=0, **hyperparams)


def load_agent(path: str | Path, algo: str = "ppo", device: str = "cpu") -> BaseAlgorithm:
    """Load a saved agent (``model.zip``) for evaluation."""
    return algo_class(algo).load(str(path), device=device)


def algo_name(model: BaseAlgorithm) -> str:
    """The ``algo`` name of a model's class (the inverse of :func:`algo_class`)."""
    for name in ALGOS:
        try:
            if type(model) is algo_class(name):
                return name
        except ValueError:  # an optional algorithm that is not installed
            continue
    raise ValueError(f"model class {type(model).__name__} is not one of {sorted(ALGOS)}")


class AgentController:
    """Plays a trained agent in a batch of episodes: one batched ``predict`` per decision.

    The mean action (deterministic) by default. Recurrent policies (``recurrent_ppo``) get
    their hidden state carried from one decision to the next and reset at each episode start.
    The controller pickles (for parallel evaluation) by saving the model to bytes, without the
    training env.
    """

    def __init__(self, name: str, model: BaseAlgorithm, deterministic: bool = True) -> None:
        self.name = name
        self.model = model
        self.algo = algo_name(model)
        self.deterministic = deterministic
        self.params: dict[str, Any] = {
            "kind": "agent",
            "algo": self.algo,
            "deterministic": deterministic,
        }
        self._state: Any = None

    def reset(self, n: int) -> None:
        self._state = None

    def act(self, obs: np.ndarray, state: DecisionState) -> Decision:
        action, self._state = self.model.predict(
            obs,
            state=self._state,
            episode_start=np.asarray(state.t == 0),
            deterministic=self.deterministic,
        )
        return Decision(action=np.asarray(action, dtype=np.float32).reshape(len(obs), -1))

    def __getstate__(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        self.model.save(buffer)
        return {
            "name": self.name,
            "algo": self.algo,
            "deterministic": self.deterministic,
            "model": buffer.getvalue(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        model = algo_class(state["algo"]).load(io.BytesIO(state["model"]), device="cpu")
        self.__init__(state["name"], model, state["deterministic"])  # type: ignore[misc]
