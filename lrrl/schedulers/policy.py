"""Run a trained lrrl agent as a learning-rate scheduler inside any PyTorch training loop.

A learned schedule is a policy: observation in, learning rate out. :class:`PolicyScheduler`
rebuilds, from the losses a training loop reports, the observation the agent's env would
have built, asks the agent for an action and sets the learning rate it maps to. The
observation depends on the env the agent was trained in; each env id has an
:class:`ObservationBuilder` in :data:`OBSERVATION_BUILDERS` (``lrrl/NMF-v0`` and
``lrrl/DNN-v0`` here; ``register_observation_builder`` adds one).
"""

from __future__ import annotations

import dataclasses
import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrrl.envs.base import log_range_lr
from lrrl.envs.dnn import DNNConfig, DNNHistory
from lrrl.envs.dnn_models import ADAPTIVE, optimizer_name

#: A number, or a function called (with no arguments) at each decision to get it.
FloatSource = float | Callable[[], float]


def _read(source: FloatSource | None) -> float | None:
    if source is None:
        return None
    return float(source() if callable(source) else source)


class ObservationBuilder(Protocol):
    """Turns a training loop's loss history into an env's observations and actions into lrs.

    A factory ``factory(env_config, reference_lr, lr_bound=, noise_ratio=, optimizer=)``
    builds one per scheduler.
    """

    #: Measurements besides the training loss that the loop may report (``step(loss, **m)``).
    metrics: tuple[str, ...]
    #: Decisions per episode in the agent's env: by default a run's steps are spread over them.
    horizon: int

    def start(self, loss0: float | None, **initial: float) -> np.ndarray:
        """The observation before the first decision; ``loss0`` and ``initial`` (of
        :attr:`metrics`) are the measurements before training, where the loop has them."""
        ...

    def lr_for_action(self, action: np.ndarray) -> float:
        """The learning rate an action asks for, clipped as the env would clip it."""
        ...

    def observe(
        self, loss0: float, loss: float, lr: float, progress: float, **metrics: float
    ) -> np.ndarray:
        """The observation after a decision that applied ``lr`` and ended at ``loss``, with the
        latest reported value of each of :attr:`metrics` (those reported so far)."""
        ...

    # A builder that remembers past losses also defines ``state_dict() -> dict`` (plain
    # numbers and lists) and ``load_state_dict(state)``, so checkpoints can carry it.


class NMFObservation:
    """Observations of ``lrrl/NMF-v0`` (see :func:`lrrl.envs.nmf.nmf_observation`).

    The env knows its stability bound; a generic loop does not. ``lr_bound`` supplies it (a
    number, or a function called at each decision); without one the clip is the constant
    ``reference_lr`` (the stand-in bound is ``reference_lr / bound_scale``), so the agent
    schedules relative to that learning rate: in ``action_mode="bound"`` it picks between
    ``lr_floor * reference_lr`` and ``reference_lr``; in ``"log_lr"`` it picks within
    ``lr_range``, capped at ``reference_lr``. ``noise_ratio`` (the env's gradient-noise feature) is 0
    unless given. These stand-ins are what limits transfer: the agent sees features that
    mean what they meant in training only when the bound and noise ratio are real.
    """

    metrics: tuple[str, ...] = ()

    def __init__(
        self,
        env: dict[str, Any],
        reference_lr: float,
        lr_bound: FloatSource | None = None,
        noise_ratio: FloatSource = 0.0,
        optimizer: Optimizer | None = None,
    ) -> None:
        # ``optimizer`` is unused: NMF's action mapping does not depend on the loop's optimizer.
        from lrrl.envs.nmf import HISTORY, NMFConfig

        # The run's env options, with the env's own defaults for anything not saved.
        options = {k: v for k, v in env.items() if k not in ("name", "id")}
        self.config = NMFConfig.build(**options)
        self.horizon = self.config.horizon
        self.has_bound = self.config.bound != "none"
        self.bound_scale = self.config.bound_scale
        stand_in = float(reference_lr) / self.bound_scale
        self.lr_bound_source = lr_bound if lr_bound is not None else stand_in
        self.noise_source = noise_ratio
        self.deltas = [0.0] * HISTORY
        self.loss_prev: float | None = None
        self.fraction = math.nan  # the last lr over the clip it was applied under
        self.lr_bound = 0.0
        self._refresh()

    def _refresh(self) -> None:
        self.lr_bound = float(_read(self.lr_bound_source))  # type: ignore[arg-type]
        if self.has_bound and not (0.0 < self.lr_bound < math.inf):
            raise ValueError(f"lr_bound={self.lr_bound!r} is invalid: expected a positive float")
        self.noise_ratio = float(_read(self.noise_source))  # type: ignore[arg-type]

    def _obs(self, loss: float, loss0: float, progress: float) -> np.ndarray:
        from lrrl.envs.nmf import nmf_observation

        return nmf_observation(
            loss=loss,
            loss0=loss0,
            deltas=self.deltas,
            fraction=self.fraction,
            lr_bound=self.lr_bound if self.has_bound else None,
            noise_ratio=self.noise_ratio,
            progress=progress,
        )

    def start(self, loss0: float | None = None, **initial: float) -> np.ndarray:
        # loss / loss0 = 1 before any decision, so the loss values do not matter yet.
        return self._obs(1.0, 1.0, 0.0)

    @property
    def clip(self) -> float:
        return self.bound_scale * self.lr_bound if self.has_bound else math.inf

    def lr_for_action(self, action: np.ndarray) -> float:
        from lrrl.envs.nmf import nmf_lr_for_action

        lr = min(nmf_lr_for_action(action, self.config, self.clip, self.fraction), self.clip)
        self.fraction = lr / self.clip if self.has_bound else math.nan
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The loss history the next observation depends on."""
        return {"deltas": list(self.deltas), "loss_prev": self.loss_prev, "fraction": self.fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.deltas = list(state["deltas"])
        self.loss_prev = state["loss_prev"]
        self.fraction = state.get("fraction", math.nan)

    def observe(
        self, loss0: float, loss: float, lr: float, progress: float, **metrics: float
    ) -> np.ndarray:
        loss_prev = loss0 if self.loss_prev is None else self.loss_prev
        if math.isfinite(loss):
            delta = math.log(max(loss, 1e-300)) - math.log(max(loss_prev, 1e-300))
            self.deltas = [delta, *self.deltas[:-1]]
        self.loss_prev = loss
        self._refresh()
        return self._obs(loss, loss0, progress)


class DNNObservation:
    """Observations of ``lrrl/DNN-v0`` (see :class:`lrrl.envs.dnn.DNNEnv`).

    The env observes, at every decision, the window's mean training loss, the validation
    loss and accuracy after it and the gradient norm of its last step, each also relative to
    its value before training. A loop reports the training loss every step
    (``step(loss)``) and, when it has them, ``val_loss=``, ``accuracy=`` and ``grad_norm=``
    (``step(loss, val_loss=v)`` after each evaluation, ``grad_norm=`` e.g. from
    ``torch.nn.utils.clip_grad_norm_``); a decision uses the latest value of each. The
    values before training are ``PolicyScheduler(loss0=..., initial={"val_loss": ...,
    "grad_norm": ..., "accuracy": ...})``; without them the first reported values stand in.

    Where a measurement is never reported, its features are 0 (the env's "no change"),
    which the agent did not see in training: the schedule then follows the training loss
    alone. Validation reported less often than decisions leaves the validation features
    stale in between. The action maps to a learning rate through the range of the loop's
    optimizer (``sgd``, ``adam``, ``adamw``, ... recognised from its class) in the run's
    ``lr_range``, and the adaptive-optimizer feature follows it too. With the env's
    sharpness bound (``bound_every > 0``), pass ``lr_bound=`` as for NMF; otherwise no clip
    applies (``reference_lr`` is not used).
    """

    metrics: tuple[str, ...] = ("val_loss", "accuracy", "grad_norm")

    def __init__(
        self,
        env: dict[str, Any],
        reference_lr: float,
        lr_bound: FloatSource | None = None,
        noise_ratio: FloatSource = 0.0,
        optimizer: Optimizer | None = None,
    ) -> None:
        if optimizer is None:
            raise ValueError("optimizer=None is invalid: expected the torch optimizer being run")
        # The run's env options, with the env's own defaults for anything not saved.
        self.config = DNNConfig.build(**{k: v for k, v in env.items() if k not in ("name", "id")})
        self.horizon = self.config.horizon
        self.optimizer = optimizer_name(optimizer)
        self.lr_range = self.config.lr_ranges[self.optimizer]
        self.adaptive = self.optimizer in ADAPTIVE
        self.bound_scale = self.config.bound_scale
        self.lr_bound_source = lr_bound
        self.history: DNNHistory | None = None
        self.clip = math.inf
        self._refresh()

    def _refresh(self) -> None:
        bound = _read(self.lr_bound_source)
        if bound is not None and not 0.0 < bound <= math.inf:
            raise ValueError(f"lr_bound={bound!r} is invalid: expected a positive float")
        self.clip = math.inf if bound is None else self.bound_scale * bound

    def start(self, loss0: float | None = None, **initial: float) -> np.ndarray:
        nan = math.nan
        self.history = DNNHistory(
            train_loss0=nan if loss0 is None else float(loss0),
            val_loss0=float(initial.get("val_loss", nan)),
            grad_norm0=float(initial.get("grad_norm", nan)),
            accuracy0=float(initial.get("accuracy", nan)),
        )
        return self.history.observation(self.lr_range, self.clip, 0.0, self.adaptive)

    def lr_for_action(self, action: np.ndarray) -> float:
        return min(log_range_lr(action, *self.lr_range), self.clip)

    def state_dict(self) -> dict[str, Any]:
        """The measurements the next observation depends on (plain numbers and lists)."""
        return {} if self.history is None else dataclasses.asdict(self.history)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            self.history = None
            return
        keys = ("train_loss0", "val_loss0", "grad_norm0", "accuracy0")
        self.history = DNNHistory(*(float(state[k]) for k in keys))
        for key, value in state.items():
            setattr(self.history, key, list(value) if isinstance(value, list) else value)

    def observe(
        self, loss0: float, loss: float, lr: float, progress: float, **metrics: float
    ) -> np.ndarray:
        h = self.history
        assert h is not None, "start() comes first"
        # A starting value not given at construction: the first reported one stands in.
        if math.isnan(h.train_loss0):
            h.train_loss0 = h.train_loss = float(loss0)
        for key, attr in (("val_loss", "val_loss"), ("grad_norm", "grad_norm")):
            if key in metrics and math.isnan(getattr(h, attr + "0")):
                setattr(h, attr + "0", float(metrics[key]))
                setattr(h, attr, float(metrics[key]))
        h.record(
            train_loss=loss,
            val_loss=float(metrics.get("val_loss", math.nan)),
            grad_norm=float(metrics.get("grad_norm", math.nan)),
            accuracy=float(metrics.get("accuracy", math.nan)),
            lr=lr,
        )
        self._refresh()
        return h.observation(self.lr_range, self.clip, progress, self.adaptive)


#: Observation builders by env id: ``factory(env_config, reference_lr, **options)``.
OBSERVATION_BUILDERS: dict[str, Callable[..., ObservationBuilder]] = {
    "lrrl/NMF-v0": NMFObservation,
    "lrrl/DNN-v0": DNNObservation,
}


def register_observation_builder(env_id: str, factory: Callable[..., ObservationBuilder]) -> None:
    """Make :class:`PolicyScheduler` work for agents trained in ``env_id``."""
    OBSERVATION_BUILDERS[env_id] = factory


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The composed config and model path of a training run directory (checked)."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    config_path, model_path = run_dir / ".hydra" / "config.yaml", run_dir / "model.zip"
    for needed in (config_path, model_path):
        if not needed.is_file():
            raise ValueError(
                f"run_dir={str(run_dir)!r} is invalid: {needed.relative_to(run_dir)} is missing "
                "(expected a directory written by python -m lrrl.train)"
            )
    if not zipfile.is_zipfile(model_path):
        raise ValueError(f"{model_path}: not a saved agent (truncated or corrupt?)")
    try:
        config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as err:  # omegaconf raises many types for a bad file
        raise ValueError(f"{config_path}: cannot read the run's config: {err}") from None
    if not isinstance(config, dict) or "env" not in config or "agent" not in config:
        raise ValueError(f"{config_path}: not an lrrl.train config (no env/agent section)")
    return config, model_path  # type: ignore[return-value]


class PolicyScheduler(LRScheduler):
    """A trained agent choosing the learning rate of any PyTorch loop, online.

    Call ``step(loss)`` after every optimizer step with that step's training loss. Every
    ``steps_per_decision`` steps the scheduler summarises the losses of the window (their
    mean, or the last with ``window_loss="last"``), builds the observation the agent's env
    would have built, and sets the learning rate of the next window from the agent's action.
    Progress (an observation feature) is ``steps / total_steps``. The first window's
    learning rate is chosen at construction, from the start observation.

    Args:
        optimizer: the wrapped optimizer; group 0 gets the agent's lr, other groups keep
            their ratio to group 0's starting lr.
        run_dir: a run directory of ``python -m lrrl.train`` (``model.zip`` and
            ``.hydra/config.yaml``).
        total_steps: optimizer steps of the run.
        steps_per_decision: optimizer steps per decision; default ``total_steps`` spread
            over the env's ``horizon`` decisions (at least 1).
        lr_bound: what the env's stability bound was (NMF): a float or a function called
            at each decision; default the constant ``reference_lr / bound_scale``.
        reference_lr: the stand-in clip (the highest lr the agent may set without a real
            bound); default the optimizer's starting lr of group 0.
        noise_ratio: the env's gradient-noise feature (NMF): float or function; default 0.
        loss0: the (training) loss before training; default the first loss reported.
        initial: the other measurements before training, by the names the env's builder
            accepts (``lrrl/DNN-v0``: ``val_loss``, ``accuracy``, ``grad_norm``; see
            :class:`DNNObservation`); default the first reported values.
        window_loss: ``"mean"`` or ``"last"`` loss of a window stands for the decision's loss.
        deterministic: act with the policy's mean action.
        device: torch device of the agent.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        run_dir: str | Path,
        total_steps: int,
        steps_per_decision: int | None = None,
        lr_bound: FloatSource | None = None,
        reference_lr: float | None = None,
        noise_ratio: FloatSource = 0.0,
        loss0: float | None = None,
        initial: Mapping[str, float] | None = None,
        window_loss: str = "mean",
        deterministic: bool = True,
        device: str = "cpu",
    ) -> None:
        from lrrl.agents.sb3 import load_agent

        config, model_path = load_run(run_dir)
        env_cfg = dict(config["env"])
        env_id = env_cfg.get("id")
        if env_id not in OBSERVATION_BUILDERS:
            raise ValueError(
                f"env id={env_id!r} is invalid: PolicyScheduler knows "
                f"{sorted(OBSERVATION_BUILDERS)} (add one with register_observation_builder)"
            )
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} is invalid: expected an integer >= 1")
        if window_loss not in ("mean", "last"):
            raise ValueError(f"window_loss={window_loss!r} is invalid: expected 'mean' or 'last'")
        starts = [float(g["lr"]) for g in optimizer.param_groups]
        self.ratios = [lr / starts[0] if starts[0] > 0 else 1.0 for lr in starts]
        self.reference_lr = float(reference_lr) if reference_lr is not None else starts[0]
        self.builder = OBSERVATION_BUILDERS[env_id](
            env_cfg,
            self.reference_lr,
            lr_bound=lr_bound,
            noise_ratio=noise_ratio,
            optimizer=optimizer,
        )
        if steps_per_decision is None:
            steps_per_decision = max(1, round(total_steps / self.builder.horizon))
        if steps_per_decision < 1:
            raise ValueError(
                f"steps_per_decision={steps_per_decision!r} is invalid: expected an integer >= 1"
            )
        self.model = load_agent(model_path, config["agent"].get("algo", "ppo"), device=device)
        initial = dict(initial or {})
        self._check_metrics("initial", initial)
        self.total_steps = total_steps
        self.steps_per_decision = int(steps_per_decision)
        self.window_loss = window_loss
        self.deterministic = deterministic
        self.loss0 = loss0
        self.steps = 0
        self.window: list[float] = []
        self.metrics: dict[str, float] = {}  # the latest reported value of each metric
        self.decisions: list[float] = []  # the lr of each decision so far
        self._state: Any = None
        self._lr = self._decide(self.builder.start(loss0, **initial), first=True)
        super().__init__(optimizer)

    def _check_metrics(self, key: str, given: Mapping[str, Any]) -> None:
        unknown = sorted(set(given) - set(self.builder.metrics))
        if unknown:
            accepted = ", ".join(self.builder.metrics) or "none"
            raise ValueError(
                f"{key}={unknown!r} is invalid: this agent's env observes {accepted} "
                "besides the training loss"
            )

    def _decide(self, obs: np.ndarray, first: bool = False) -> float:
        action, self._state = self.model.predict(
            obs,
            state=self._state,
            episode_start=np.array([first]),
            deterministic=self.deterministic,
        )
        lr = self.builder.lr_for_action(action)
        self.decisions.append(lr)
        return lr

    def step(  # type: ignore[override]
        self,
        loss: float | Tensor | None = None,
        epoch: int | None = None,
        **metrics: float | Tensor,
    ) -> None:
        """Record the loss of the optimizer step just taken (and any other measurement the
        agent's env observes, e.g. ``val_loss=`` for DNN agents); decide at the end of a
        window."""
        if metrics:
            self._check_metrics("metrics", metrics)
            for name, value in metrics.items():
                self.metrics[name] = float(value.detach() if isinstance(value, Tensor) else value)
        if loss is not None:
            value = float(loss.detach() if isinstance(loss, Tensor) else loss)
            if self.loss0 is None:
                self.loss0 = value
            self.window.append(value)
            self.steps += 1
            if self.steps % self.steps_per_decision == 0:
                summary = (
                    self.window[-1] if self.window_loss == "last" else float(np.mean(self.window))
                )
                self.window = []
                progress = self.steps / self.total_steps
                obs = self.builder.observe(self.loss0, summary, self._lr, progress, **self.metrics)
                self._lr = self._decide(obs)
        super().step()

    def get_lr(self) -> list[float | Tensor]:
        """The current decision's learning rate for every group."""
        return [self._lr * r for r in self.ratios]

    def state_dict(self) -> dict[str, Any]:
        """Where the run stands (steps, window, decisions, the builder's loss history).

        The agent and the builder's inputs (which may be functions) stay out: they come from
        the constructor again. Everything left loads with ``torch.load(weights_only=True)``,
        as transformers' Trainer and Lightning resume checkpoints; a recurrent agent's
        hidden state is stored as tensors for that reason.
        """
        state = {
            k: v for k, v in super().state_dict().items() if k not in ("model", "builder", "_state")
        }
        saver = getattr(self.builder, "state_dict", None)
        state["builder_state"] = saver() if saver is not None else {}
        state["agent_state"] = (
            None if self._state is None else [torch.from_numpy(np.asarray(a)) for a in self._state]
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` into a scheduler built for the same run."""
        state = dict(state_dict)
        builder_state = state.pop("builder_state", {})
        agent_state = state.pop("agent_state", None)
        self.__dict__.update(state)
        loader = getattr(self.builder, "load_state_dict", None)
        if loader is not None:
            loader(builder_state)
        self._state = None if agent_state is None else tuple(t.numpy() for t in agent_state)
