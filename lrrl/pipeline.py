"""The training pipeline behind ``lrrl.train``, free of Hydra: check, train, compare, export.

:func:`run_experiment` takes the resolved config as a plain dict, so tests and notebooks can
call it with a composed config and a temporary directory.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from lrrl import checkpoint, report
from lrrl.agents.sb3 import AgentController, algo_class, make_agent
from lrrl.agents.vec import make_training_vec_env
from lrrl.cli import ConfigError
from lrrl.comparison import compare
from lrrl.config import TrainConfig
from lrrl.outputs import run_info, write_outputs
from lrrl.seeding import seed_everything
from lrrl.tracking import TrackingCallback, TrialReporter, make_tracker


def validate(config: dict[str, Any]) -> TrainConfig:
    """The typed config of a run; any bad value is a :class:`ConfigError` (one line)."""
    try:
        return TrainConfig.from_dict(config)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None


def _train_agent(
    cfg: TrainConfig, tracker: Any, run_dir: Path, resume: bool = False
) -> tuple[Any, dict[str, Any]]:
    agent = cfg.agent
    venv = make_training_vec_env(
        cfg.env.id, cfg.env.options, agent.n_envs, cfg.seed, agent.vec_env, agent.env_workers
    )
    folder = run_dir / checkpoint.FOLDER
    if resume:
        model, state = checkpoint.load_checkpoint(
            folder, algo_class(agent.algo), venv, agent.device
        )
    else:
        model = make_agent(
            agent.algo,
            venv,
            seed=cfg.seed,
            hyperparams=agent.hyperparams,
            policy=agent.policy,
            device=agent.device,
        )
        state = checkpoint.TrainState()
    # a search trial reports to its study; a resumed run's trial was finished by its search
    reporter = TrialReporter(cfg.search) if cfg.search is not None and not resume else None
    callback = TrackingCallback(tracker, reporter)
    callback.episodes, callback.divergences = state.episodes, state.divergences
    saver = checkpoint.CheckpointCallback(
        folder, agent.checkpoint_every, callback, state.wall_time_s
    )
    start = time.perf_counter()
    model.learn(
        total_timesteps=max(0, agent.total_timesteps - int(model.num_timesteps)),
        callback=[callback, saver],
        progress_bar=cfg.progress_bar,
        reset_num_timesteps=not resume,
    )
    if agent.checkpoint_every > 0:
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


def run_experiment(
    config: dict[str, Any], run_dir: str | Path, argv: list[str] | None = None, resume: bool = False
) -> dict[str, Any]:
    """Train an agent, compare it with tuned baselines and write the run's outputs.

    With ``resume=True`` training continues from ``run_dir/checkpoint/`` (see
    :mod:`lrrl.checkpoint`). The run dir is locked for the whole run. Returns the metrics
    written to ``metrics.json`` (``objective`` included).
    """
    cfg = validate(config)
    run_dir = Path(run_dir)
    if not resume:
        checkpoint.check_fresh(run_dir)
    with checkpoint.lock_run_dir(run_dir):
        if resume:
            checkpoint.read_manifest(run_dir / checkpoint.FOLDER)
        return _run(cfg, config, run_dir, argv, resume)


def _run(
    cfg: TrainConfig, config: dict[str, Any], run_dir: Path, argv: list[str] | None, resume: bool
) -> dict[str, Any]:
    start = time.perf_counter()
    seed_everything(cfg.seed, cfg.torch_threads)
    console = Console(stderr=True)
    algo = cfg.agent.algo
    run_name = f"{cfg.env.name}__{algo}__{cfg.seed}__{int(time.time())}"
    tracker = make_tracker(cfg.logger, str(run_dir), config, run_name)
    try:
        model, train_stats = _train_agent(cfg, tracker, run_dir, resume)
        console.log(
            f"trained {algo} for {train_stats['timesteps']} env steps "
            f"in {train_stats['wall_time_s']:.1f} s"
        )
        eval_start = time.perf_counter()
        comparison = compare(
            cfg.env,
            cfg.eval,
            agents={algo: AgentController(algo, model)},
            log=console.log,
            show_progress=cfg.progress_bar,
        )
        train_stats["eval_time_s"] = time.perf_counter() - eval_start
        train_stats["run_time_s"] = time.perf_counter() - start
        out = report.output_console()
        out.print(report.table(comparison.summaries, comparison.details, comparison.split, algo))
        out.print(
            f"{algo}: {train_stats['timesteps']} env steps of training in "
            f"{train_stats['wall_time_s']:.0f} s; tuning and comparison on "
            f"{len(comparison.episodes[algo])} {comparison.split} episodes in "
            f"{train_stats['eval_time_s']:.0f} s; {train_stats['run_time_s']:.0f} s in all"
        )
        steps_per_action = cfg.env.steps_per_action()
        metrics = write_outputs(
            run_dir,
            comparison,
            cfg.env,
            cfg.seed,
            steps_per_action,
            extra={"train": train_stats, "eval": cfg.eval.to_dict(), "run": run_info(argv)},
            subject_file="schedule.json",
        )
        tracker.image("plots/schedules", run_dir / "schedules.png")
        tracker.image("plots/intervals", run_dir / "intervals.png")
        tracker.summary(
            {
                f"test/{name}/log_loss_ratio": s["log_loss_ratio"]
                for name, s in comparison.summaries.items()
            }
        )
        first = {name: eps[0] for name, eps in comparison.episodes.items()}
        for name, episode in first.items():
            for t, (lr, loss) in enumerate(zip(episode.lr, episode.loss[1:], strict=True)):
                tracker.log({f"eval/{name}/lr": lr, f"eval/{name}/loss": loss, "eval/decision": t})
        console.log(f"outputs in {run_dir}")
        return metrics
    finally:
        tracker.finish()
