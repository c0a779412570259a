"""``python -m lrrl.distill run_dir=DIR``: distil a learned schedule into GreedyLR.

1. Open loop: roll the trained agent (``DIR/model.zip``) on the training instances, record
   its losses and learning rates, and fit GreedyLR's parameters and starting lr so that
   GreedyLR, fed the same losses, chooses the same learning rates (mean squared log-lr
   error; :func:`lrrl.agents.greedylr_fit.fit_greedylr`, vectorised over candidates).
2. Closed loop: run the fitted GreedyLR in the env on the evaluation instances with the
   seeds the training run used, next to the agent, GreedyLR's defaults (starting lr tuned
   on the training instances) and the run's tuned baselines (from ``DIR/metrics.json``).
   The share of the agent's gain over default GreedyLR that the distilled one keeps is
   ``(L_default - L_distilled) / (L_default - L_agent)``, ``L`` the mean log final loss.

Writes ``DIR/greedylr.json`` (``params`` for ``lrrl.schedulers.GreedyLR`` and transformers'
``get_scheduler("greedy", optimizer, scheduler_specific_kwargs=params)``; create the optimizer
with ``lr=initial_lr`` and call ``step(loss)`` once every ``steps_per_action`` optimizer
steps), ``DIR/distill_report.json`` and ``DIR/distill.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lrrl.agents.greedylr_fit import (
    FitResult,
    fit_greedylr,
    greedylr_controller,
    schedule_lrs,
)
from lrrl.agents.sb3 import AgentController, load_agent
from lrrl.cli import ConfigError, fail
from lrrl.comparison import summarise
from lrrl.config import EnvSpec
from lrrl.envs.base import as_int
from lrrl.envs.registration import make_env
from lrrl.outputs import write_json
from lrrl.rollout import Episode, episode_seeds, jobs_for, run_jobs
from lrrl.schedulers.greedylr import GREEDYLR_SCHEMA
from lrrl.schedulers.policy import load_run
from lrrl.seeding import seed_everything


def _usable(episodes: list[Episode]) -> list[Episode]:
    """Episodes whose learning rates can be fitted in log space (no divergence)."""
    return [e for e in episodes if not e.diverged and all(lr > 0 for lr in e.lr)]


def _gain_share(default: float, distilled: float, agent: float) -> float:
    gap = default - agent
    return (default - distilled) / gap if gap != 0 and math.isfinite(gap) else math.nan


def distill(config: dict[str, Any]) -> dict[str, Any]:
    """Fit GreedyLR to the agent of ``config["run_dir"]``, check it, write the outputs."""
    if not config.get("run_dir"):
        raise ConfigError("run_dir is required: python -m lrrl.distill run_dir=outputs/<run>")
    run_dir = Path(str(config["run_dir"]))
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r} is invalid: no such directory")
    try:
        run_cfg, model_path = load_run(run_dir)
        spec = EnvSpec.from_dict(run_cfg["env"])
        env_id, env_kwargs = spec.id, spec.options
        fit_cfg, check_cfg = config.get("fit") or {}, config.get("check") or {}
        budget = as_int("fit.budget", fit_cfg.get("budget", 20000), 100)
        fit_eps = as_int("fit.episodes_per_instance", fit_cfg.get("episodes_per_instance", 1), 1)
        fit_seed = as_int("fit.seed", fit_cfg.get("seed", 0), 0)
        run_eval = run_cfg.get("eval") or {}
        check_split = check_cfg.get("split") or run_eval.get("split", "test")
        check_eps = as_int(
            "check.episodes_per_instance",
            check_cfg.get("episodes_per_instance") or run_eval.get("episodes_per_instance", 1),
            1,
        )
        env = make_env(env_id, **env_kwargs)
        u = env.unwrapped
        fit_instances = u.instances(fit_cfg.get("split", "train"))
        check_instances = u.instances(check_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    seed = int(run_cfg.get("seed", 0))
    seed_everything(seed, int(config.get("torch_threads", 1)))
    console = Console(stderr=True)
    algo = run_cfg["agent"].get("algo", "ppo")
    agent = AgentController(algo, load_agent(model_path, algo))

    # 1. open loop: the agent's schedules on the training instances, then the fit.
    start = time.perf_counter()
    fit_runs = episode_seeds(fit_instances, fit_eps, seed + 3)
    recorded = _usable(run_jobs(env_id, env_kwargs, jobs_for([agent], fit_runs)))
    if not recorded:
        raise ConfigError(f"{run_dir}: every agent episode on the fit instances diverged")
    rollout_s = time.perf_counter() - start
    start = time.perf_counter()
    fit = fit_greedylr([e.loss for e in recorded], [e.lr for e in recorded], budget, fit_seed)
    fit_s = time.perf_counter() - start
    console.log(
        f"fitted GreedyLR to {len(recorded)} agent schedules in {fit_s:.1f} s: "
        f"log-lr rmse {fit.log_lr_rmse:.3f} (defaults {fit.default_log_lr_rmse:.3f})"
    )

    # 2. closed loop on the evaluation instances, with the training run's seeds.
    check_runs = episode_seeds(check_instances, check_eps, seed + 1)
    default_lr = _tune_default_lr(spec, run_eval.get("lr_grid") or [], fit_runs, recorded)
    controllers = {
        algo: agent,
        "greedylr_distilled": greedylr_controller("greedylr_distilled", fit.params, fit.initial_lr),
        "greedylr_default": greedylr_controller("greedylr_default", {}, default_lr),
    }
    flat = run_jobs(env_id, env_kwargs, jobs_for(list(controllers.values()), check_runs))
    k = len(check_runs)
    episodes = {name: flat[i * k : (i + 1) * k] for i, name in enumerate(controllers)}
    env.close()
    summaries = {name: summarise(eps) for name, eps in episodes.items()}
    L = {name: s["log_loss_ratio"] for name, s in summaries.items()}
    recovered = _gain_share(L["greedylr_default"], L["greedylr_distilled"], L[algo])
    baselines = _run_baselines(run_dir, algo)

    steps_per_action = int(u.steps_per_action)
    greedylr = {
        "schema": GREEDYLR_SCHEMA,
        "params": fit.params,
        "initial_lr": fit.initial_lr,
        "steps_per_action": steps_per_action,
        "usage": (
            "optimizer lr=initial_lr; GreedyLR(optimizer, **params) or transformers "
            "get_scheduler('greedy', optimizer, scheduler_specific_kwargs=params); call "
            f"step(loss) once every steps_per_action={steps_per_action} optimizer steps"
        ),
        "source": {"run_dir": str(run_dir), "env_id": env_id, "seed": seed},
    }
    write_json(run_dir / "greedylr.json", greedylr)
    report = {
        "run_dir": str(run_dir),
        "env_id": env_id,
        "fit": {
            "split": fit_cfg.get("split", "train"),
            "schedules": len(recorded),
            "decisions": int(sum(len(e.lr) for e in recorded)),
            "log_lr_rmse": fit.log_lr_rmse,
            "default_log_lr_rmse": fit.default_log_lr_rmse,
            "candidates": fit.n_evaluations,
            "history": fit.history,
            "rollout_time_s": rollout_s,
            "fit_time_s": fit_s,
            "params": fit.params,
            "initial_lr": fit.initial_lr,
        },
        "check": {
            "split": check_split,
            "episodes": len(check_runs),
            "schedulers": {
                name: {**s, "params": controllers[name].params} for name, s in summaries.items()
            },
            "run_metrics": baselines,
            "recovered_gain": recovered,
            "agent_beats_default": L[algo] < L["greedylr_default"],
            "recovered_gain_definition": (
                "(L_default - L_distilled) / (L_default - L_agent), L = mean log(loss_T/loss_0) "
                "over the same (instance, seed) runs"
            ),
        },
    }
    write_json(run_dir / "distill_report.json", report)
    _plot(run_dir / "distill.png", recorded[0], episodes, fit, algo)
    Console().print(_table(L, baselines, recovered, check_split, algo))
    console.log(f"wrote greedylr.json, distill_report.json, distill.png in {run_dir}")
    return report


def _tune_default_lr(
    env: EnvSpec, lr_grid: list[float], runs: list[tuple[Any, int]], recorded: list[Episode]
) -> float:
    """Starting lr for GreedyLR's defaults: the best of the run's lr grid on the fit runs.

    Falls back to the geometric mean of the agent's learning rates without a grid.
    """
    fallback = float(np.exp(np.mean(np.log(np.concatenate([e.lr for e in recorded])))))
    best, best_score = fallback, math.inf
    for lr in [fallback, *[float(x) for x in lr_grid]]:
        controller = greedylr_controller("greedylr_default", {}, lr)
        eps = run_jobs(env.id, env.options, jobs_for([controller], runs))
        value = float(np.mean([e.log_loss_ratio for e in eps]))
        if value < best_score:
            best, best_score = lr, value
    return best


def _run_baselines(run_dir: Path, algo: str) -> dict[str, float]:
    """``log_loss_ratio`` of every scheduler the training run compared (``metrics.json``)."""
    path = run_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        return {
            name: float(s["log_loss_ratio"])
            for name, s in (metrics.get("schedulers") or {}).items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _table(
    L: dict[str, float], baselines: dict[str, float], recovered: float, split: str, agent: str
) -> Table:
    table = Table(title=f"closed loop on the {split} instances: mean log(loss_T/loss_0)")
    table.add_column("scheduler")
    table.add_column("this check", justify="right")
    table.add_column("training run (metrics.json)", justify="right")
    names = list(L) + [n for n in baselines if n not in L]
    for name in sorted(names, key=lambda n: L.get(n, baselines.get(n, math.inf))):
        ours = f"{L[name]:.4f}" if name in L else ""
        theirs = f"{baselines[name]:.4f}" if name in baselines else ""
        table.add_row(name, ours, theirs, style="bold" if name == "greedylr_distilled" else None)
    if L[agent] < L["greedylr_default"]:
        table.caption = (
            f"distilled GreedyLR recovers {recovered:.1%} of the agent's gain over default GreedyLR"
        )
    else:  # the share is still computed, but there is no gain to recover
        table.caption = (
            f"the agent does not beat default GreedyLR here; recovered_gain={recovered:.3f} "
            "only says how far the distilled one moved towards the agent"
        )
    return table


def _plot(
    path: Path, fit_episode: Episode, episodes: dict[str, list[Episode]], fit: FitResult, algo: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_open, ax_closed) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    t = np.arange(len(fit_episode.lr))
    replay = schedule_lrs(fit_episode.loss, len(fit_episode.lr), fit.initial_lr, **fit.params)[0]
    default = schedule_lrs(fit_episode.loss, len(fit_episode.lr), fit.initial_lr)[0]
    ax_open.plot(t, fit_episode.lr, lw=2, label=f"{algo} (agent)")
    ax_open.plot(t, replay, ls="--", label="GreedyLR distilled (replay)")
    ax_open.plot(t, default, ls=":", label="GreedyLR defaults (replay)")
    ax_open.set(
        yscale="log",
        xlabel="decision",
        ylabel="learning rate",
        title=f"open loop on {fit_episode.instance} (fit, rmse {fit.log_lr_rmse:.2f})",
    )
    for name, eps in episodes.items():
        ax_closed.plot(np.arange(len(eps[0].lr)), eps[0].lr, label=name)
    ax_closed.set(
        yscale="log",
        xlabel="decision",
        ylabel="learning rate",
        title=f"closed loop on {episodes[algo][0].instance}",
    )
    ax_open.legend(fontsize=8)
    ax_closed.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path="pkg://lrrl.conf", config_name="distill")
def _hydra_main(cfg: DictConfig) -> float:
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    try:
        report = distill(config)
    except ConfigError as err:
        fail("lrrl.distill", err)
    return float(report["check"]["recovered_gain"])


def main() -> None:
    """Console entry point."""
    _hydra_main()


if __name__ == "__main__":
    main()
