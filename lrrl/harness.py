"""One harness for every comparison: build envs, roll out controllers, tune, summarise.

Every scheduler, learned or heuristic, is played through the same env on the same instances
with the same episode seeds (common random numbers), so differences in final loss come from
the schedules and not from minibatch or noise draws.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

import lrrl  # noqa: F401  (registers the environments)
from lrrl import stats
from lrrl.agents.baselines import (
    SCHEDULES,
    Constant,
    Controller,
    ScheduleController,
    default_grid,
    search_space,
    unavailable,
)
from lrrl.envs.base import as_float, as_int, check_options, require

#: Keys of an env config that are not constructor arguments.
ENV_META_KEYS = ("name", "id")

#: Learning-rate-free references: ``name -> (inner optimizer, constant lr)``, the package's
#: recommended learning rate. They run on envs that take an ``optimizer`` option (DNN).
REFERENCES: dict[str, tuple[str, float]] = {
    "schedulefree_sgd": ("schedulefree_sgd", 1.0),
    "schedulefree_adamw": ("schedulefree_adamw", 2.5e-3),
    "prodigy": ("prodigy", 1.0),
}


def split_env_config(env_cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(env_id, kwargs)`` from an env config such as ``conf/env/nmf.yaml``."""
    if "id" not in env_cfg:
        raise ValueError("env config has no 'id' (e.g. id: lrrl/NMF-v0)")
    kwargs = {k: v for k, v in env_cfg.items() if k not in ENV_META_KEYS}
    return env_cfg["id"], kwargs


def env_options(env_id: str) -> list[str]:
    """The constructor keyword arguments of a registered env."""
    if env_id not in gym.registry:
        lrrl_ids = sorted(k for k in gym.registry if k.startswith("lrrl/"))
        raise ValueError(f"env id={env_id!r} is invalid: expected one of {lrrl_ids}")
    entry = gym.spec(env_id).entry_point
    cls = gym.envs.registration.load_env_creator(entry) if isinstance(entry, str) else entry
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with the env's ``horizon`` as the time limit and checked options."""
    check_options(f"env ({env_id})", kwargs, env_options(env_id))
    spec = gym.spec(env_id)
    horizon = kwargs.get("horizon", spec.max_episode_steps)
    return gym.make(env_id, max_episode_steps=horizon, disable_env_checker=True, **kwargs)


@dataclass
class Episode:
    """One controller's run on one instance."""

    scheduler: str
    instance: str
    seed: int
    lr: list[float] = field(default_factory=list)
    lr_bound: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # loss[0] before the first decision
    clipped: list[bool] = field(default_factory=list)
    reward: float = 0.0
    diverged: bool = False

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if not self.diverged else math.inf

    @property
    def loss_0(self) -> float:
        return self.loss[0]

    @property
    def clip_rate(self) -> float:
        return float(np.mean(self.clipped)) if self.clipped else 0.0

    @property
    def log_loss_ratio(self) -> float:
        """``log(loss_T / loss_0)``: comparable across instances of different scales."""
        if self.diverged or not self.loss[-1] > 0:
            return math.inf if self.diverged else -math.inf
        return math.log(self.loss[-1] / self.loss[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "seed": self.seed,
            "lr": self.lr,
            "loss": self.loss,
            "lr_bound": [b if math.isfinite(b) else None for b in self.lr_bound],
            "diverged": self.diverged,
        }


def rollout(env: gym.Env, controller: Controller, instance: Any, seed: int) -> Episode:
    """Play one episode of ``controller`` on ``instance`` with episode seed ``seed``."""
    obs, info = env.reset(seed=seed, options={"instance": instance})
    controller.reset(env, info)
    episode = Episode(controller.name, info["instance"], seed, loss=[info["loss"]])
    done = False
    while not done:
        action = controller.act(obs, info, env)
        obs, reward, terminated, truncated, info = env.step(action)
        episode.lr.append(float(info["lr"]))
        episode.lr_bound.append(float(info["lr_bound"]))
        episode.loss.append(float(info["loss"]))
        episode.clipped.append(bool(info["clipped"]))
        episode.reward += float(reward)
        episode.diverged = episode.diverged or bool(info["diverged"])
        done = terminated or truncated
    return episode


def episode_seeds(
    instances: Sequence[Any], episodes_per_instance: int, base_seed: int
) -> list[tuple[Any, int]]:
    """``(instance, seed)`` pairs shared by every scheduler under comparison."""
    return [
        (inst, base_seed * 10_000 + 100 * i + k)
        for i, inst in enumerate(instances)
        for k in range(episodes_per_instance)
    ]


def evaluate(
    env: gym.Env, controller: Controller, runs: Sequence[tuple[Any, int]]
) -> list[Episode]:
    """Roll out ``controller`` on every ``(instance, seed)`` of ``runs``."""
    return [rollout(env, controller, inst, seed) for inst, seed in runs]


# -- parallel rollouts -----------------------------------------------------------------------

#: One rollout to do: ``(controller, instance, seed)``.
Task = tuple[Controller, Any, int]


def _run_chunk(env_id: str, env_kwargs: dict[str, Any], tasks: Sequence[Task]) -> list[Episode]:
    """Worker body: one env for a chunk of rollouts (single-threaded torch per process)."""
    import torch

    torch.set_num_threads(1)
    env = make_env(env_id, **env_kwargs)
    try:
        return [rollout(env, controller, inst, seed) for controller, inst, seed in tasks]
    finally:
        env.close()


def run_tasks(
    env_id: str,
    env_kwargs: dict[str, Any],
    tasks: Sequence[Task],
    workers: int = 1,
    advance: Callable[[int], None] | None = None,
) -> list[Episode]:
    """Roll out every task, in order; with ``workers > 1`` in joblib (loky) processes.

    Each rollout depends only on its controller, instance and episode seed, so the episodes
    are the same whatever ``workers`` is.
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if workers <= 1 or len(tasks) == 1:
        env = make_env(env_id, **env_kwargs)
        out = []
        try:
            for controller, inst, seed in tasks:
                out.append(rollout(env, controller, inst, seed))
                if advance is not None:
                    advance(1)
        finally:
            env.close()
        return out
    from joblib import Parallel, delayed

    size = max(1, math.ceil(len(tasks) / (4 * workers)))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator")
    out = []
    for episodes in parallel(delayed(_run_chunk)(env_id, env_kwargs, c) for c in chunks):
        out.extend(episodes)
        if advance is not None:
            advance(len(episodes))
    return out


# -- tuning ----------------------------------------------------------------------------------


def score(episodes: Sequence[Episode]) -> float:
    """Mean ``log(loss_T / loss_0)``; lower is better, a divergence counts as +inf."""
    return float(np.mean([e.log_loss_ratio for e in episodes]))


TUNERS = ("grid", "optuna")
#: Optuna trials per baseline when ``tune_budget`` is not set.
DEFAULT_TRIALS = 20


@dataclass
class EvalSettings:
    """The ``eval:`` block of the configs: what is compared, where, and how it is tuned."""

    split: str = "test"
    episodes_per_instance: int = 2
    tune_split: str = "train"
    tune_episodes_per_instance: int = 1
    baselines: list[str] = field(default_factory=lambda: ["constant", "step_decay"])
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    tuner: str = "grid"
    tune_budget: int | None = None
    n_jobs: int = 1
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    reference: bool = True
    references: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, ev: Mapping[str, Any]) -> EvalSettings:
        """Check an ``eval:`` mapping; a bad value raises a one-line ``ValueError`` naming it."""
        known = set(cls.__dataclass_fields__)
        check_options("eval", dict(ev), sorted(known))
        out = cls(**{k: v for k, v in ev.items() if v is not None or k == "tune_budget"})
        for key in ("episodes_per_instance", "tune_episodes_per_instance", "n_jobs"):
            setattr(out, key, as_int(f"eval.{key}", getattr(out, key), 1))
        out.bootstrap_samples = as_int("eval.bootstrap_samples", out.bootstrap_samples, 100)
        out.confidence = as_float("eval.confidence", out.confidence, 0.0, 1.0, strict=True)
        if out.tune_budget is not None:
            out.tune_budget = as_int("eval.tune_budget", out.tune_budget, 1)
        require(out.tuner in TUNERS, "eval.tuner", out.tuner, f"one of {TUNERS}")
        require(isinstance(out.reference, bool), "eval.reference", out.reference, "true or false")
        out.baselines = list(out.baselines or [])
        for name in out.baselines:
            require(name in SCHEDULES, "eval.baselines", name, f"names from {sorted(SCHEDULES)}")
        lrs = out.lr_grid or []
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
        out.lr_grid = [float(x) for x in lrs]
        out.references = list(out.references or [])
        for name in out.references:
            require(name in REFERENCES, "eval.references", name, f"names from {sorted(REFERENCES)}")
        out.grids = dict(out.grids or {})
        for name, options in out.grids.items():
            require(name in SCHEDULES, "eval.grids", name, f"keys from {sorted(SCHEDULES)}")
            try:
                default_grid(name, out.lr_grid, options)
            except (ValueError, TypeError) as err:
                raise ValueError(f"eval.grids.{name}: {err}") from None
        return out


@dataclass
class Tuned:
    """The outcome of tuning one baseline family on the training instances."""

    controller: ScheduleController
    train_score: float
    candidates: int
    tuner: str


def _budgeted(candidates: list[Any], budget: int | None, seed: int) -> list[Any]:
    if budget is None or len(candidates) <= budget:
        return candidates
    keep = np.sort(np.random.default_rng(seed).choice(len(candidates), budget, replace=False))
    return [candidates[i] for i in keep]


def tune_grid(
    env_id: str,
    env_kwargs: dict[str, Any],
    name: str,
    candidates: Sequence[Any],
    runs: Sequence[tuple[Any, int]],
    workers: int = 1,
    advance: Callable[[int], None] | None = None,
) -> Tuned:
    """The candidate schedule with the best :func:`score` on ``runs`` (first one on ties)."""
    require(len(candidates) > 0, "candidates", list(candidates), f"schedules for {name!r}")
    controllers = [ScheduleController(name, c) for c in candidates]
    tasks = [(c, inst, seed) for c in controllers for inst, seed in runs]
    episodes = run_tasks(env_id, env_kwargs, tasks, workers, advance)
    k = len(runs)
    scores = [score(episodes[i * k : (i + 1) * k]) for i in range(len(controllers))]
    best = min(range(len(scores)), key=lambda i: (scores[i], i))
    return Tuned(controllers[best], scores[best], len(candidates), "grid")


def tune_optuna(
    env_id: str,
    env_kwargs: dict[str, Any],
    name: str,
    space: Mapping[str, Any],
    runs: Sequence[tuple[Any, int]],
    trials: int,
    seed: int,
    workers: int = 1,
    advance: Callable[[int], None] | None = None,
) -> Tuned:
    """Tune with optuna's TPE sampler (fixed seed) for ``trials`` trials, one at a time.

    Trials run sequentially so the sampler sees every result and the search is reproducible;
    the rollouts of one trial run in parallel.
    """
    try:
        import optuna
    except ImportError as err:  # optional dependency
        raise ValueError("eval.tuner='optuna' needs optuna: pip install 'lrrl[tune]'") from err

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kind = SCHEDULES[name]
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    best: tuple[float, ScheduleController] | None = None
    for _ in range(trials):
        trial = study.ask()
        params = {}
        for key, spec in space.items():
            if isinstance(spec, list):
                params[key] = trial.suggest_categorical(key, spec)
            elif len(spec) == 2:
                params[key] = trial.suggest_int(key, int(spec[0]), int(spec[1]))
            else:
                params[key] = trial.suggest_float(key, spec[0], spec[1], log=bool(spec[2]))
        controller = ScheduleController(name, kind(**params))
        tasks = [(controller, inst, s) for inst, s in runs]
        value = score(run_tasks(env_id, env_kwargs, tasks, workers, advance))
        # optuna wants finite values; a diverging candidate is simply very bad
        study.tell(trial, value if math.isfinite(value) else 1e9)
        if best is None or value < best[0]:
            best = (value, controller)
    assert best is not None, f"eval.tune_budget must allow at least one trial for {name!r}"
    return Tuned(best[1], best[0], trials, "optuna")


def tune(
    env: gym.Env,
    name: str,
    candidates: Sequence[Any],
    runs: Sequence[tuple[Any, int]],
    progress: Callable[[int], None] | None = None,
) -> tuple[ScheduleController, float]:
    """Grid-tune in-process with an existing env (kept for callers holding an env)."""
    best, best_score = None, math.inf
    for schedule in candidates:
        controller = ScheduleController(name, schedule)
        value = score(evaluate(env, controller, runs))
        if value < best_score or best is None:
            best, best_score = controller, value
        if progress is not None:
            progress(1)
    assert best is not None, f"no candidates to tune baseline {name!r}"
    return best, best_score


# -- summaries -------------------------------------------------------------------------------


def episode_gap(episode: Episode, references: Mapping[str, float]) -> float:
    """The episode's optimality gap to its instance's reference loss (NaN without one)."""
    ref = references.get(episode.instance)
    if ref is None:
        return math.nan
    return stats.optimality_gap(episode.final_loss, episode.loss_0, ref)


def summarise(
    episodes: Sequence[Episode],
    references: Mapping[str, float] | None = None,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-scheduler summary: means (the historical keys), bootstrap statistics, gaps."""
    references = references or {}
    finals = np.array([e.final_loss for e in episodes])
    ratios = np.array([e.log_loss_ratio for e in episodes])
    gaps = np.array([episode_gap(e, references) for e in episodes])
    finite = np.isfinite(ratios)
    described = {
        "final_loss": stats.describe(finals, samples, confidence, seed),
        "log_loss_ratio": stats.describe(ratios, samples, confidence, seed),
    }
    has_gap = bool(references) and not np.isnan(gaps).all()
    if has_gap:
        described["gap"] = stats.describe(gaps, samples, confidence, seed)
    out: dict[str, Any] = {
        "final_loss": float(np.mean(finals)),
        "final_loss_ci": described["final_loss"]["mean_ci"],
        "final_loss_median": described["final_loss"]["median"],
        "final_loss_iqm": described["final_loss"]["iqm"],
        "final_loss_iqm_ci": described["final_loss"]["iqm_ci"],
        "final_loss_ratio": float(np.mean(np.exp(ratios))),
        "log_loss_ratio": float(np.mean(ratios)),
        "log_loss_ratio_ci": described["log_loss_ratio"]["mean_ci"],
        "log_loss_ratio_std": float(np.std(ratios[finite])) if finite.any() else math.nan,
        "log_loss_ratio_iqm": described["log_loss_ratio"]["iqm"],
        "log_loss_ratio_iqm_ci": described["log_loss_ratio"]["iqm_ci"],
        "gap": described["gap"]["mean"] if has_gap else None,
        "gap_iqm": described["gap"]["iqm"] if has_gap else None,
        "gap_iqm_ci": described["gap"]["iqm_ci"] if has_gap else None,
        "divergence_rate": float(np.mean([e.diverged for e in episodes])),
        "clip_rate": float(np.mean([e.clip_rate for e in episodes])),
        "episodes": len(episodes),
        "confidence": confidence,
        "stats": described,
        "per_instance": {
            f"{e.instance}@{e.seed}": {
                "final_loss": e.final_loss,
                "log_loss_ratio": e.log_loss_ratio,
                **({"gap": float(g)} if has_gap else {}),
            }
            for e, g in zip(episodes, gaps, strict=True)
        },
    }
    return out


def pairwise(episodes: Mapping[str, Sequence[Episode]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {"win_rate": {other: x}, "probability_of_improvement": {other: p}}}``.

    Both compare final losses on the same instances; the win rate pairs episode seeds too.
    """
    keyed = {
        name: {(e.instance, e.seed): e.final_loss for e in eps} for name, eps in episodes.items()
    }
    grouped: dict[str, dict[str, list[float]]] = {}
    for name, eps in episodes.items():
        by_instance: dict[str, list[float]] = {}
        for e in eps:
            by_instance.setdefault(e.instance, []).append(e.final_loss)
        grouped[name] = by_instance
    out: dict[str, dict[str, dict[str, float]]] = {}
    for a in episodes:
        wins, poi = {}, {}
        for b in episodes:
            if a == b:
                continue
            common = [k for k in keyed[a] if k in keyed[b]]
            wins[b] = stats.win_rate([keyed[a][k] for k in common], [keyed[b][k] for k in common])
            poi[b] = stats.probability_of_improvement(grouped[a], grouped[b])
        out[a] = {"win_rate": wins, "probability_of_improvement": poi}
    return out


# -- the comparison --------------------------------------------------------------------------


@dataclass
class Comparison:
    """Every scheduler's test episodes, how the baselines were tuned, and the statistics."""

    split: str
    episodes: dict[str, list[Episode]]
    details: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    references: dict[str, float]
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def schedulers(self) -> dict[str, dict[str, Any]]:
        """The ``schedulers`` mapping of ``metrics.json``: summary plus tuning details."""
        return {name: {**self.summaries[name], **self.details[name]} for name in self.summaries}


def reference_losses(env: gym.Env, instances: Sequence[Any]) -> dict[str, float]:
    """Batch-NMF reference losses per instance name, where the env exposes the matrices."""
    u = env.unwrapped
    rank = getattr(u, "rank", None)
    if rank is None or not all(hasattr(inst, "matrix") for inst in instances):
        return {}
    return {inst.name: stats.reference_loss(inst, int(rank)) for inst in instances}


def compare(
    env_id: str,
    env_kwargs: dict[str, Any],
    settings: EvalSettings,
    seed: int,
    agents: Mapping[str, Controller] | None = None,
    baselines: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = False,
) -> Comparison:
    """Tune each baseline on the tuning split, then play everyone on the test split.

    Test episodes use seeds from ``seed + 1`` and tuning episodes from ``seed + 2``, shared
    by every scheduler (common random numbers). ``agents`` are played as given; baselines
    that cannot run in this env (e.g. ``follow_bound`` without a bound) are skipped and
    listed in :attr:`Comparison.skipped`. ``settings.references`` (see :data:`REFERENCES`)
    play a constant learning rate with the env's inner optimizer replaced, on envs that have
    one (otherwise they are skipped too).
    """
    env = make_env(env_id, **env_kwargs)
    u = env.unwrapped
    env.reset(seed=seed)  # so that properties like the clip are defined
    test_instances = u.instances(settings.split)
    test_runs = episode_seeds(test_instances, settings.episodes_per_instance, seed + 1)
    tune_runs = episode_seeds(
        u.instances(settings.tune_split), settings.tune_episodes_per_instance, seed + 2
    )
    skipped: dict[str, str] = {}
    names = []
    for name in baselines if baselines is not None else settings.baselines:
        reason = unavailable(name, env)
        if reason is not None:
            skipped[name] = reason
            log(reason)
        else:
            names.append(name)
    plans: dict[str, Any] = {}
    for name in names:
        if settings.tuner == "grid":
            grid = default_grid(name, settings.lr_grid, settings.grids.get(name))
            plans[name] = _budgeted(grid, settings.tune_budget, seed)
        else:
            plans[name] = search_space(name, settings.lr_grid)
    refs: dict[str, Controller] = {}
    for name in settings.references:
        reason = None
        if "optimizer" not in env_options(env_id):
            reason = f"{name} skipped: {env_id} has no inner-optimizer option"
        else:
            try:  # e.g. the optimizer's package is not installed
                make_env(env_id, **{**env_kwargs, "optimizer": REFERENCES[name][0]}).close()
            except ValueError as err:
                reason = f"{name} skipped: {err}"
        if reason is not None:
            skipped[name] = reason
            log(reason)
        else:
            refs[name] = ScheduleController(name, Constant(REFERENCES[name][1]))
    trials = settings.tune_budget or DEFAULT_TRIALS
    total = sum(
        (len(p) if settings.tuner == "grid" else trials) * len(tune_runs) for p in plans.values()
    ) + (len(names) + len(agents or {}) + len(refs)) * len(test_runs)

    references = reference_losses(env, test_instances) if settings.reference else {}
    env.close()

    with _progress(show_progress, total) as advance:
        details: dict[str, dict[str, Any]] = {}
        controllers: dict[str, Controller] = dict(agents or {})
        for name, controller in (agents or {}).items():
            details[name] = {"params": dict(getattr(controller, "params", {"kind": "agent"}))}
        for name in names:
            start = time.perf_counter()
            if settings.tuner == "grid":
                tuned = tune_grid(
                    env_id, env_kwargs, name, plans[name], tune_runs, settings.n_jobs, advance
                )
            else:
                tuned = tune_optuna(
                    env_id,
                    env_kwargs,
                    name,
                    plans[name],
                    tune_runs,
                    trials,
                    seed,
                    settings.n_jobs,
                    advance,
                )
            controllers[name] = tuned.controller
            details[name] = {
                "params": tuned.controller.params,
                "tuned_on": settings.tune_split,
                "tuner": tuned.tuner,
                "candidates": tuned.candidates,
                "train_log_loss_ratio": tuned.train_score,
                "tuning_time_s": time.perf_counter() - start,
            }
            log(f"tuned {name}: {tuned.candidates} candidates, best {tuned.controller.params}")
        tasks = [(c, inst, s) for c in controllers.values() for inst, s in test_runs]
        flat = run_tasks(env_id, env_kwargs, tasks, settings.n_jobs, advance)
        k = len(test_runs)
        episodes = {name: flat[i * k : (i + 1) * k] for i, name in enumerate(controllers)}
        for name, controller in refs.items():
            # Same instances and episode seeds, the env's inner optimizer swapped for the reference.
            optimizer, lr = REFERENCES[name]
            kwargs = {**env_kwargs, "optimizer": optimizer}
            tasks = [(controller, inst, s) for inst, s in test_runs]
            episodes[name] = run_tasks(env_id, kwargs, tasks, settings.n_jobs, advance)
            details[name] = {"params": {"kind": "reference", "optimizer": optimizer, "lr": lr}}
    result = Comparison(settings.split, episodes, details, skipped, references)
    result.summaries = {
        name: summarise(eps, references, settings.bootstrap_samples, settings.confidence, seed)
        for name, eps in episodes.items()
    }
    for name, pair in pairwise(episodes).items():
        result.summaries[name].update(pair)
    return result


class _progress:
    """A rich progress bar on stderr (or nothing) yielding an ``advance(n)`` callback."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("evaluating", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
