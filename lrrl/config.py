"""The typed configuration of each entry point, checked once, where its defaults live.

The entry points compose a Hydra config (``conf/``), turn it into a plain dict and build one
of these dataclasses from it; construction checks every value and raises a one-line
``ValueError`` naming it, before any work starts. The env's options are its own config
dataclass (:class:`lrrl.envs.nmf.NMFConfig`, :class:`lrrl.envs.dnn.DNNConfig`) or, for an env
without one, its constructor; :class:`EnvSpec` checks them by building the config (or a probe
env). ``lrrl/conf`` registers these defaults with Hydra's ConfigStore, so the YAML files hold
only what differs from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lrrl.envs.base import as_float, as_int, check_options, require
from lrrl.sweeper import TrialLink

#: Learning-rate-free references: ``name -> (inner optimizer, constant lr)``, the package's
#: recommended learning rate. They run on envs that take an ``optimizer`` option (DNN).
REFERENCES: dict[str, tuple[str, float]] = {
    "schedulefree_sgd": ("schedulefree_sgd", 1.0),
    "schedulefree_adamw": ("schedulefree_adamw", 2.5e-3),
    "prodigy": ("prodigy", 1.0),
}
TUNERS = ("grid", "optuna")
#: Keys of an env config that are not env options.
ENV_META_KEYS = ("name", "id")


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, name: str, given: Mapping[str, Any] | None) -> Any:
    """``cls(**given)`` with unknown keys rejected in one line naming the accepted ones."""
    given = dict(given or {})
    check_options(name, given, _fields(cls))
    return cls(**given)


@dataclass
class EnvSpec:
    """An env config: the registered id, a short name for run dirs, and the env's options."""

    id: str
    name: str
    options: dict[str, Any]

    @classmethod
    def from_dict(cls, env: Mapping[str, Any]) -> EnvSpec:
        """Check an ``env:`` block such as ``conf/env/nmf.yaml`` by building the env's config."""
        require(isinstance(env, Mapping) and "id" in env, "env", env, "a mapping with an 'id'")
        options = {k: v for k, v in env.items() if k not in ENV_META_KEYS}
        spec = cls(str(env["id"]), str(env.get("name", env["id"])), options)
        spec.check()
        return spec

    def check(self) -> None:
        """Build the env's config (or a probe env): any bad option raises here."""
        from lrrl.envs.registration import env_config, make_env

        config = env_config(self.id, self.options)
        if config is None:
            make_env(self.id, **self.options).close()

    def steps_per_action(self) -> int:
        """Optimizer steps per decision: from the env's config, or a probe env without one."""
        from lrrl.envs.registration import env_config, make_env

        config = env_config(self.id, self.options)
        if config is not None:
            return int(config.steps_per_action)
        probe = make_env(self.id, **self.options)
        try:
            return int(probe.unwrapped.steps_per_action)
        finally:
            probe.close()

    def replace(self, **options: Any) -> EnvSpec:
        """The same env with some options changed (checked)."""
        spec = EnvSpec(self.id, self.name, {**self.options, **options})
        spec.check()
        return spec


@dataclass
class EvalConfig:
    """The ``eval:`` block: what is compared, on which instances, and how baselines are tuned.

    Test episodes use seeds derived from ``seed + 1`` and tuning episodes from ``seed + 2``,
    shared by every scheduler (common random numbers) and independent of the training seed, so
    agents of different training seeds meet exactly the same test episodes.

    Fields:
        split: the instances the comparison is reported on.
        episodes_per_instance: episode seeds per test instance (one: the 288 default test
            instances are the samples; more seeds add little beside them).
        tune_split: where baselines are tuned (never the test split); ``None``: the env's
            ``tune`` split if it has one, else ``train``.
        tune_episodes_per_instance: episode seeds per tuning instance.
        baselines: baseline names (``lrrl.agents.baselines.BASELINES``).
        unclipped: baselines also tuned and tested without the env's clip (``bound="none"``):
            what a user without lrrl runs; named ``<baseline>@unclipped``. Envs with a bound.
        headroom: also report per test episode the best constant and step-decay schedule of
            the tuning grid in hindsight (``hindsight_constant``, ``hindsight_step_decay``):
            what any adaptive schedule could gain.
        lr_grid: the learning rates every baseline's grid (or search range) spans.
        grids: per-baseline option grids overriding the defaults, e.g.
            ``{step_decay: {gamma: [0.1, 0.5]}}``.
        tuner: ``grid`` (a seeded random subset of ``tune_budget`` candidates) or ``optuna``
            (TPE, ``tune_budget`` trials).
        tune_budget: candidates or trials per baseline, the same for every one (``None``:
            the whole grid, or 20 trials). The default, 16 candidates on the 72 default tuning
            instances, gives every baseline about as many episodes (1,152) as the default
            agent trains on (60,000 steps of 50-decision episodes: 1,200).
        seed: seed of the evaluation and tuning episodes.
        n_jobs: processes for the rollouts (joblib); set 1 inside a parallel sweep.
        chunk: episodes stepped together by the batched rollouts (NMF).
        bootstrap_samples, confidence: the bootstrap intervals.
        reference: the optimality gap against scikit-learn's batch NMF (slow on big suites).
        references: learning-rate-free inner optimizers run as references (DNN).
    """

    split: str = "test"
    episodes_per_instance: int = 1
    tune_split: str | None = None
    tune_episodes_per_instance: int = 1
    baselines: list[str] = field(
        default_factory=lambda: ["constant", "step_decay", "cosine", "greedylr", "follow_bound"]
    )
    unclipped: list[str] = field(default_factory=lambda: ["constant", "cosine"])
    headroom: bool = False
    lr_grid: list[float] = field(
        default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0]
    )
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    tuner: str = "grid"
    tune_budget: int | None = 16
    seed: int = 0
    n_jobs: int = 2
    chunk: int = 256
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    reference: bool = False
    references: list[str] = field(
        default_factory=lambda: ["schedulefree_sgd", "schedulefree_adamw", "prodigy"]
    )

    def __post_init__(self) -> None:
        from lrrl.agents.baselines import BASELINES, default_grid

        for key in ("episodes_per_instance", "tune_episodes_per_instance", "n_jobs", "chunk"):
            setattr(self, key, as_int(f"eval.{key}", getattr(self, key), 1))
        self.seed = as_int("eval.seed", self.seed, 0)
        self.bootstrap_samples = as_int("eval.bootstrap_samples", self.bootstrap_samples, 100)
        self.confidence = as_float("eval.confidence", self.confidence, 0.0, 1.0, strict=True)
        if self.tune_budget is not None:
            self.tune_budget = as_int("eval.tune_budget", self.tune_budget, 1)
        require(self.tuner in TUNERS, "eval.tuner", self.tuner, f"one of {TUNERS}")
        for key in ("headroom", "reference"):
            require(
                isinstance(getattr(self, key), bool),
                f"eval.{key}",
                getattr(self, key),
                "true or false",
            )
        for key in ("baselines", "unclipped"):
            names = list(getattr(self, key) or [])
            for name in names:
                require(name in BASELINES, f"eval.{key}", name, f"names from {sorted(BASELINES)}")
            setattr(self, key, names)
        lrs = list(self.lr_grid or [])
        require(
            len(lrs) > 0
            and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf
                for x in lrs
            ),
            "eval.lr_grid",
            lrs,
            "a non-empty list of positive learning rates",
        )
        self.lr_grid = [float(x) for x in lrs]
        self.references = list(self.references or [])
        for name in self.references:
            require(name in REFERENCES, "eval.references", name, f"names from {sorted(REFERENCES)}")
        self.grids = dict(self.grids or {})
        for name, options in self.grids.items():
            require(name in BASELINES, "eval.grids", name, f"keys from {sorted(BASELINES)}")
            try:
                default_grid(name, self.lr_grid, options)
            except (ValueError, TypeError) as err:
                raise ValueError(f"eval.grids.{name}: {err}") from None

    @classmethod
    def from_dict(cls, ev: Mapping[str, Any] | None) -> EvalConfig:
        return _build(cls, "eval", ev)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


VEC_ENVS = ("auto", "dummy", "subproc", "batched")


@dataclass
class AgentConfig:
    """The ``agent:`` block (``conf/agent/<algo>.yaml``): algorithm and training budget.

    Fields:
        algo: ``ppo``, ``a2c``, ``sac`` or ``recurrent_ppo``.
        policy: the SB3 policy name (default: the algorithm's MLP policy).
        total_timesteps: env steps of training.
        n_envs: sub-envs of the training vector env.
        vec_env: ``auto`` (batched where the env has it, else dummy), ``dummy``, ``subproc``
            or ``batched``.
        env_workers: processes the batched env's sub-envs are split across, stepped in
            parallel (``lrrl.agents.vec.ShardedVecEnv``); 1: in the training process. The
            dummy and subproc envs do not use it. A run is reproducible for a given value
            (the sub-envs' episodes do not depend on it, the floating-point sums do).
        device: torch device of the agent.
        checkpoint_every: env steps between checkpoints in ``RUN_DIR/checkpoint/`` (0: none).
        hyperparams: keyword arguments of the SB3 algorithm, passed unchanged.
    """

    algo: str = "ppo"
    policy: str | None = None
    total_timesteps: int = 60_000
    n_envs: int = 16
    vec_env: str = "auto"
    env_workers: int = 2
    device: str = "cpu"
    checkpoint_every: int = 10_000
    hyperparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from lrrl.agents.sb3 import check_hyperparams

        self.total_timesteps = as_int("agent.total_timesteps", self.total_timesteps, 1)
        self.n_envs = as_int("agent.n_envs", self.n_envs, 1)
        self.env_workers = as_int("agent.env_workers", self.env_workers, 1)
        self.checkpoint_every = as_int("agent.checkpoint_every", self.checkpoint_every, 0)
        require(self.vec_env in VEC_ENVS, "agent.vec_env", self.vec_env, f"one of {VEC_ENVS}")
        self.hyperparams = dict(self.hyperparams or {})
        check_hyperparams(self.algo, self.hyperparams)

    @classmethod
    def from_dict(cls, agent: Mapping[str, Any] | None) -> AgentConfig:
        return _build(cls, "agent", agent)


@dataclass
class TrainConfig:
    """A whole ``lrrl.train`` run (``conf/train.yaml``), checked before any work starts."""

    env: EnvSpec
    agent: AgentConfig
    eval: EvalConfig
    logger: dict[str, Any]
    seed: int = 0
    torch_threads: int = 1
    progress_bar: bool = True
    #: In a hyperparameter search: where this trial reports its progress (``lrrl.sweeper``).
    search: TrialLink | None = None

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> TrainConfig:
        check_options("config", dict(config), _fields(cls))
        env = EnvSpec.from_dict(config.get("env") or {})
        agent = AgentConfig.from_dict(config.get("agent"))
        ev = EvalConfig.from_dict(config.get("eval"))
        from lrrl.tracking import LOGGERS

        logger = dict(config.get("logger") or {"name": "none"})
        require(logger.get("name") in LOGGERS, "logger", logger.get("name"), f"one of {LOGGERS}")
        out = cls(
            env=env,
            agent=agent,
            eval=ev,
            logger=logger,
            seed=as_int("seed", config.get("seed", 0), 0),
            torch_threads=as_int("torch_threads", config.get("torch_threads", 1), 1),
            progress_bar=bool(config.get("progress_bar", True)),
            search=None if config.get("search") is None else TrialLink.from_dict(config["search"]),
        )
        from lrrl.agents.vec import check_vec_env

        check_vec_env(agent.vec_env, env.id)
        check_splits(env, ev)
        return out


def check_splits(env: EnvSpec, ev: EvalConfig) -> None:
    """The evaluation and tuning splits exist in the env and differ."""
    from lrrl.envs.registration import make_env

    probe = make_env(env.id, **env.options)
    try:
        u = probe.unwrapped
        for key in ("split", "tune_split"):
            value = getattr(ev, key) if key == "split" else tune_split(u, ev)
            try:
                u.instances(value)
            except ValueError as err:
                raise ValueError(f"eval.{key}: {err}") from None
        require(
            tune_split(u, ev) != ev.split,
            "eval.tune_split",
            tune_split(u, ev),
            f"a split other than the test split {ev.split!r} (baselines are never tuned on it)",
        )
    finally:
        probe.close()


def tune_split(env: Any, ev: EvalConfig) -> str:
    """Where baselines are tuned: ``eval.tune_split``, else the env's ``tune`` split if it
    has one, else ``train``."""
    if ev.tune_split is not None:
        return ev.tune_split
    try:
        env.instances("tune")
    except ValueError:
        return "train"
    return "tune"


@dataclass
class FitConfig:
    """The ``fit:`` block of ``lrrl.distill``: how GreedyLR is fitted to the agent.

    Fields:
        split: the instances the agent's schedules are recorded on, and where every
            candidate fit is rolled out and chosen (never the check split).
        episodes_per_instance: episode seeds per fit instance.
        budget: candidate GreedyLR parameter sets the search evaluates, per fit.
        seed: seed of the search.
        dagger_rounds: DAgger rounds after the open-loop fit: play the current fit on the fit
            instances, label each decision with the agent's lr for that state, refit on all
            the data so far. 0: open loop only.
    """

    split: str = "train"
    episodes_per_instance: int = 1
    budget: int = 20_000
    seed: int = 0
    dagger_rounds: int = 3

    def __post_init__(self) -> None:
        require(isinstance(self.split, str), "fit.split", self.split, "a split name")
        self.episodes_per_instance = as_int(
            "fit.episodes_per_instance", self.episodes_per_instance, 1
        )
        from lrrl.agents.greedylr_fit import min_budget

        self.budget = as_int("fit.budget", self.budget, min_budget())
        self.seed = as_int("fit.seed", self.seed, 0)
        self.dagger_rounds = as_int("fit.dagger_rounds", self.dagger_rounds, 0)

    @classmethod
    def from_dict(cls, fit: Mapping[str, Any] | None) -> FitConfig:
        return _build(cls, "fit", fit)


@dataclass
class CheckConfig:
    """The ``check:`` block of ``lrrl.distill``: the closed-loop comparison.

    Fields:
        split: the instances of the comparison; ``None``: the training run's ``eval.split``.
        episodes_per_instance: episode seeds per instance; ``None``: the run's
            ``eval.episodes_per_instance``.
    """

    split: str | None = None
    episodes_per_instance: int | None = None

    def __post_init__(self) -> None:
        if self.split is not None:
            require(isinstance(self.split, str), "check.split", self.split, "a split name")
        if self.episodes_per_instance is not None:
            self.episodes_per_instance = as_int(
                "check.episodes_per_instance", self.episodes_per_instance, 1
            )

    @classmethod
    def from_dict(cls, check: Mapping[str, Any] | None) -> CheckConfig:
        return _build(cls, "check", check)


@dataclass
class DistillConfig:
    """A whole ``lrrl.distill`` run (``conf/distill.yaml``), checked before any work starts."""

    run_dir: str
    fit: FitConfig
    check: CheckConfig
    torch_threads: int = 1

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> DistillConfig:
        check_options("config", dict(config), _fields(cls))
        run_dir = config.get("run_dir")
        if not run_dir:
            raise ValueError("run_dir is required: python -m lrrl.distill run_dir=outputs/<run>")
        return cls(
            run_dir=str(run_dir),
            fit=FitConfig.from_dict(config.get("fit")),
            check=CheckConfig.from_dict(config.get("check")),
            torch_threads=as_int("torch_threads", config.get("torch_threads", 1), 1),
        )
