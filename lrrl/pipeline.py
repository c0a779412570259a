"""The training pipeline behind ``lrrl.train``, free of Hydra: validate, train, compare, export.

:func:`run_experiment` takes the resolved config as a plain dict, so tests and notebooks can
call it with a composed config and a temporary directory.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lrrl import checkpoint, report
from lrrl.agents.baselines import SCHEDULES, default_grid
from lrrl.agents.sb3 import AgentController, algo_class, check_hyperparams, make_agent
from lrrl.agents.vec import check_vec_env, make_training_vec_env
from lrrl.cli import ConfigError
from lrrl.envs.base import as_int, check_options
from lrrl.harness import Episode, EvalSettings, compare, make_env, split_env_config, summarise
from lrrl.outputs import plot_schedules, schedule_payload, write_json
from lrrl.seeding import seed_everything
from lrrl.tracking import LOGGERS, TrackingCallback, make_tracker

#: Top-level keys of a composed ``train`` config.
CONFIG_KEYS = ("seed", "torch_threads", "progress_bar", "eval", "env", "agent", "logger")


@dataclass
class Plan:
    """Everything a run needs, checked before any work starts."""

    env_id: str
    env_kwargs: dict[str, Any]
    algo: str
    seed: int
    total_timesteps: int
    n_envs: int
    baselines: list[str]
    lr_grid: list[float]
    checkpoint_every: int = 10_000  # env steps between checkpoints; 0: none


def _check(condition: bool, key: str, value: Any, accepted: str) -> None:
    if not condition:
        raise ConfigError(f"{key}={value!r} is invalid: expected {accepted}")


def validate(config: dict[str, Any]) -> Plan:
    """Check the whole config (building a probe env) and raise :class:`ConfigError` early."""
    try:
        check_options("config", config, CONFIG_KEYS)
        env_id, env_kwargs = split_env_config(config["env"])
        probe = make_env(env_id, **env_kwargs)
        probe.close()
        agent = config["agent"]
        algo = agent.get("algo")
        algo_class(algo)
        check_hyperparams(algo, agent.get("hyperparams") or {})
        seed = as_int("seed", config.get("seed"), 0)
        total = as_int("agent.total_timesteps", agent.get("total_timesteps"), 1)
        n_envs = as_int("agent.n_envs", agent.get("n_envs", 1), 1)
        as_int("torch_threads", config.get("torch_threads", 1), 1)
        checkpoint_every = as_int("agent.checkpoint_every", agent.get("checkpoint_every", 0), 0)
        check_vec_env(agent.get("vec_env", "auto"), env_id, env_kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ev = config["eval"]
    try:
        EvalSettings.from_config(ev)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for key in ("episodes_per_instance", "tune_episodes_per_instance"):
        try:
            as_int(f"eval.{key}", ev.get(key), 1)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    baselines = list(ev.get("baselines") or [])
    for name in baselines:
        _check(name in SCHEDULES, "eval.baselines", name, f"names from {sorted(SCHEDULES)}")
    lr_grid = ev.get("lr_grid") or []
    _check(
        len(lr_grid) > 0 and all(isinstance(x, (int, float)) and 0 < x < math.inf for x in lr_grid),
        "eval.lr_grid",
        lr_grid,
        "a non-empty list of positive learning rates",
    )
    grids = ev.get("grids") or {}
    for name, options in grids.items():
        _check(name in SCHEDULES, "eval.grids", name, f"keys from {sorted(SCHEDULES)}")
        try:
            default_grid(name, lr_grid, options)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"eval.grids.{name}: {err}") from None
    splits = probe.unwrapped
    for key in ("split", "tune_split"):
        try:
            splits.instances(ev.get(key))
        except ValueError as err:
            raise ConfigError(f"eval.{key}: {err}") from None
    logger = config.get("logger") or {}
    _check(logger.get("name") in LOGGERS, "logger", logger.get("name"), f"one of {list(LOGGERS)}")
    return Plan(
        env_id,
        env_kwargs,
        algo,
        seed,
        total,
        n_envs,
        baselines,
        [float(x) for x in lr_grid],
        checkpoint_every,
    )


def _train_agent(
    plan: Plan, config: dict[str, Any], tracker: Any, run_dir: Path, resume: bool = False
) -> tuple[Any, dict[str, Any]]:
    agent = config["agent"]
    venv = make_training_vec_env(
        plan.env_id, plan.env_kwargs, plan.n_envs, plan.seed, agent.get("vec_env", "auto")
    )
    folder = run_dir / checkpoint.FOLDER
    if resume:
        model, state = checkpoint.load_checkpoint(
            folder, algo_class(plan.algo), venv, agent.get("device", "cpu")
        )
    else:
        model = make_agent(
            plan.algo,
            venv,
            seed=plan.seed,
            hyperparams=agent.get("hyperparams"),
            policy=agent.get("policy"),
            device=agent.get("device", "cpu"),
        )
        state = checkpoint.TrainState()
    callback = TrackingCallback(tracker)
    callback.episodes, callback.divergences = state.episodes, state.divergences
    saver = checkpoint.CheckpointCallback(
        folder, plan.checkpoint_every, callback, state.wall_time_s
    )
    start = time.perf_counter()
    model.learn(
        total_timesteps=max(0, plan.total_timesteps - int(model.num_timesteps)),
        callback=[callback, saver],
        progress_bar=bool(config.get("progress_bar")),
        reset_num_timesteps=not resume,
    )
    if plan.checkpoint_every > 0:
        saver.save()  # a kill during the comparison resumes straight into it
    wall = state.wall_time_s + time.perf_counter() - start
    model.save(run_dir / "model.zip")
    venv.close()
    stats = {
        "timesteps": int(model.num_timesteps),
        "episodes": callback.episodes,
        "divergences": callback.divergences,
        "divergence_rate": callback.divergences / max(1, callback.episodes),
        "wall_time_s": wall,
        "env_steps_per_s": model.num_timesteps / wall if wall > 0 else math.nan,
        "resumed_from": state.timesteps if resume else None,
    }
    return model, stats


def _compare(
    plan: Plan, config: dict[str, Any], model: Any, console: Console
) -> tuple[dict[str, list[Episode]], dict[str, Any]]:
    """The trained agent and the tuned baselines on the test split, through the harness.

    Returns the episodes and, per scheduler, its statistics (bootstrap intervals, optimality
    gap, paired win rates) merged with how it was tuned; ``lrrl.evaluate run_dir=...``
    reproduces these numbers from the saved run.
    """
    settings = EvalSettings.from_config(config["eval"])
    comparison = compare(
        plan.env_id,
        plan.env_kwargs,
        settings,
        plan.seed,
        agents={plan.algo: AgentController(plan.algo, model)},
        baselines=plan.baselines,
        log=console.log,
        show_progress=bool(config.get("progress_bar")),
    )
    return comparison.episodes, comparison.schedulers()


def _table(summaries: dict[str, dict[str, Any]], details: dict[str, Any], split: str) -> Table:
    merged = {name: {**summaries[name], **details.get(name, {})} for name in summaries}
    return report.table(merged, details, split)


def run_experiment(
    config: dict[str, Any], run_dir: str | Path, argv: list[str] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train an agent, compare it with tuned baselines and write the run's outputs.

    With ``resume=True`` training continues from ``run_dir/checkpoint/`` (see
    :mod:`lrrl.checkpoint`). The run dir is locked for the whole run. Returns the metrics
    written to ``metrics.json`` (``objective`` included).
    """
    plan = validate(config)
    run_dir = Path(run_dir)
    if not resume:
        checkpoint.check_fresh(run_dir)
    with checkpoint.lock_run_dir(run_dir):
        if resume:
            checkpoint.read_manifest(run_dir / checkpoint.FOLDER)
        return _run(plan, config, run_dir, argv, resume)


def _run(
    plan: Plan, config: dict[str, Any], run_dir: Path, argv: list[str] | None, resume: bool
) -> dict[str, Any]:
    seed_everything(plan.seed, int(config.get("torch_threads", 1)))
    console = Console(stderr=True)
    env_name = config["env"].get("name", plan.env_id)
    run_name = f"{env_name}__{plan.algo}__{plan.seed}__{int(time.time())}"
    tracker = make_tracker(config.get("logger") or {}, str(run_dir), config, run_name)
    try:
        model, train_stats = _train_agent(plan, config, tracker, run_dir, resume)
        console.log(
            f"trained {plan.algo} for {train_stats['timesteps']} env steps in {train_stats['wall_time_s']:.1f} s"
        )
        episodes, details = _compare(plan, config, model, console)
        summaries = {name: summarise(eps) for name, eps in episodes.items()}
        Console().print(_table(summaries, details, config["eval"]["split"]))

        probe_env = make_env(plan.env_id, **plan.env_kwargs)
        env_config = probe_env.unwrapped.config()
        steps_per_action = probe_env.unwrapped.steps_per_action
        probe_env.close()
        for name, eps in episodes.items():
            payload = schedule_payload(eps, plan.env_id, env_config, plan.seed, steps_per_action)
            target = (
                run_dir / "schedule.json"
                if name == plan.algo
                else run_dir / "schedules" / f"{name}.json"
            )
            write_json(target, payload)
        first = {name: eps[0] for name, eps in episodes.items()}
        plot_schedules(
            run_dir / "schedules.png",
            first,
            f"{plan.env_id} · {first[plan.algo].instance} · seed {plan.seed}",
        )
        objective = summaries[plan.algo]["log_loss_ratio"]
        metrics = {
            "objective": objective,
            "objective_name": f"mean log(loss_T/loss_0) of {plan.algo} on the {config['eval']['split']} instances",
            "env_id": plan.env_id,
            "seed": plan.seed,
            "schedulers": {name: {**summaries[name], **details[name]} for name in summaries},
            "train": train_stats,
            "wins": {
                name: summaries[plan.algo]["log_loss_ratio"] < s["log_loss_ratio"]
                for name, s in summaries.items()
                if name != plan.algo
            },
            "run": {
                "argv": list(argv or []),
                "python": platform.python_version(),
                "packages": _versions(),
            },
        }
        write_json(run_dir / "metrics.json", metrics)
        tracker.summary(
            {f"test/{name}/log_loss_ratio": s["log_loss_ratio"] for name, s in summaries.items()}
        )
        for name, episode in first.items():
            for t, (lr, loss) in enumerate(zip(episode.lr, episode.loss[1:], strict=True)):
                tracker.log({f"eval/{name}/lr": lr, f"eval/{name}/loss": loss, "eval/decision": t})
        console.log(f"outputs in {run_dir}")
        return metrics
    finally:
        tracker.finish()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("lrrl", "torch", "gymnasium", "stable-baselines3", "numpy", "hydra-core"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def mean_over(values: list[float]) -> float:
    """Mean of finite values (NaN when none)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
