"""``python -m lrrl.distill run_dir=DIR``: distil a learned schedule into GreedyLR.

1. Open loop: roll the trained agent (``DIR/model.zip``) on the fit (training) instances,
   record its losses and learning rates, and fit GreedyLR's parameters and starting lr so that
   GreedyLR, fed the same losses, chooses the same learning rates (mean squared log-lr
   error; :func:`lrrl.agents.greedylr_fit.fit_greedylr`, vectorised over candidates).
2. DAgger (``fit.dagger_rounds`` rounds; 0 = open loop only). In closed loop a misfit
   compounds: GreedyLR visits states the agent never produced, where the open-loop data says
   nothing. Each round plays the current fit in the env on the fit instances and labels every
   decision with the lr the agent would have applied in that state (the agent is asked on the
   same observation; :class:`lrrl.agents.greedylr_fit.AgentLabeller`). GreedyLR's lr depends
   only on the losses it is fed, so the visited loss sequences with the agent's labels are
   schedules to fit like the agent's own; the refit uses all data so far (the agent's
   episodes and every round's labelled ones), warm-started from the previous fit. Envs
   without an action -> lr mapping to label with (only ``lrrl/NMF-v0`` has one here) skip it.
3. Choice: every candidate (the open-loop fit, each round's refit) is scored by its
   closed-loop rollout on the fit instances (the same rollout that collects its labels),
   mean ``log(loss_T/loss_0)`` with divergences scored as in the comparisons; the best is
   kept (ties: the earlier). The check split never takes part in fitting or choosing.
4. Check: run the chosen GreedyLR in the env on the evaluation instances with the seeds the
   training run used, next to the agent, the open-loop fit, GreedyLR's defaults (starting lr
   tuned on the fit instances) and the run's tuned baselines (from ``DIR/metrics.json``).
   The share of the agent's gain over default GreedyLR that the distilled one keeps is
   ``(L_default - L_distilled) / (L_default - L_agent)``, ``L`` the mean log final loss.

Writes ``DIR/greedylr.json`` (the chosen fit: ``params`` for ``lrrl.schedulers.GreedyLR``
and transformers' ``get_scheduler("greedy", optimizer, scheduler_specific_kwargs=params)``;
create the optimizer with ``lr=initial_lr`` and call ``step(loss)`` once every
``steps_per_action`` optimizer steps), ``DIR/distill_report.json`` (the open-loop fit, every
candidate's training objective and log-lr errors, which was chosen, the check) and
``DIR/distill.png``. Options: :class:`lrrl.config.FitConfig` and
:class:`lrrl.config.CheckConfig` (``conf/distill.yaml``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lrrl import stats
from lrrl.agents.greedylr_fit import (
    AgentLabeller,
    FitResult,
    LrsForActions,
    action_lrs,
    fit_greedylr,
    greedylr_controller,
    replay_log_lr_rmse,
    schedule_lrs,
)
from lrrl.agents.sb3 import AgentController, load_agent
from lrrl.cli import ConfigError, fail
from lrrl.comparison import summarise
from lrrl.config import DistillConfig, EnvSpec
from lrrl.envs.base import as_int, require
from lrrl.envs.registration import make_env
from lrrl.outputs import write_json
from lrrl.report import output_console
from lrrl.rollout import Episode, episode_seeds, jobs_for, run_jobs
from lrrl.schedulers.greedylr import GREEDYLR_SCHEMA
from lrrl.schedulers.policy import load_run
from lrrl.seeding import seed_everything

#: The training objective every candidate fit is chosen by.
OBJECTIVE = (
    "mean log(loss_T/loss_0) of the fitted GreedyLR in closed loop on the fit runs "
    "(a divergence scores log(1000)); lower is better"
)


def _usable(episodes: list[Episode]) -> list[Episode]:
    """Episodes whose learning rates can be fitted in log space (no divergence)."""
    return [e for e in episodes if not e.diverged and all(lr > 0 for lr in e.lr)]


def _labelled(episodes: list[Episode]) -> list[Episode]:
    """Episodes whose every decision has a positive finite label (the agent's lr there)."""
    return [
        e
        for e in episodes
        if len(e.label) == len(e.lr) > 0 and all(0 < x < math.inf for x in e.label)
    ]


def _gain_share(default: float, distilled: float, agent: float) -> float:
    gap = default - agent
    return (default - distilled) / gap if gap != 0 and math.isfinite(gap) else math.nan


@dataclass
class Candidate:
    """One fit of GreedyLR and how it does in closed loop on the fit runs."""

    name: str  # "open_loop", "dagger_1", ...
    fit: FitResult
    schedules: int  # schedules it was fitted to
    decisions: int
    fit_s: float
    episodes: list[Episode] = field(default_factory=list)  # its closed loop on the fit runs
    label_log_lr_rmse: float = math.nan  # against the agent's labels on the states it visits
    rollout_s: float = 0.0

    @property
    def objective(self) -> float:
        return float(np.mean(stats.scores([e.log_loss_ratio for e in self.episodes])))

    def controller(self, name: str | None = None) -> Any:
        return greedylr_controller(name or self.name, self.fit.params, self.fit.initial_lr)

    def to_json(self, chosen: bool) -> dict[str, Any]:
        return {
            "name": self.name,
            "chosen": chosen,
            "train_log_loss_ratio": self.objective,
            "train_divergences": int(sum(e.diverged for e in self.episodes)),
            "fit_log_lr_rmse": self.fit.log_lr_rmse,
            "label_log_lr_rmse": self.label_log_lr_rmse,
            "schedules": self.schedules,
            "decisions": self.decisions,
            "candidates": self.fit.n_evaluations,
            "fit_time_s": self.fit_s,
            "rollout_time_s": self.rollout_s,
            "params": self.fit.params,
            "initial_lr": self.fit.initial_lr,
        }


def dagger(
    env_id: str,
    env_kwargs: dict[str, Any],
    agent: Any,
    lrs_for_actions: LrsForActions | None,
    runs: list[tuple[Any, int]],
    recorded: list[Episode],
    first: Candidate,
    rounds: int,
    budget: int,
    seed: int,
    console: Console | None = None,
) -> list[Candidate]:
    """The open-loop fit ``first`` and ``rounds`` DAgger refits, each rolled out on ``runs``.

    Each candidate plays ``runs`` in closed loop (labelled by ``agent`` through
    ``lrs_for_actions``, where given); round ``r``'s refit is fitted to ``recorded`` (the
    agent's schedules) and the labelled episodes of candidates ``0 .. r-1``, warm-started
    from candidate ``r-1``. Without ``lrs_for_actions`` only ``first`` is rolled out.
    """
    losses, lrs = [e.loss for e in recorded], [e.lr for e in recorded]
    candidates = [first]
    rounds = rounds if lrs_for_actions is not None else 0
    for r in range(rounds + 1):
        cand = candidates[-1]
        ctrl = cand.controller()
        if lrs_for_actions is not None:
            ctrl = AgentLabeller(ctrl, agent, lrs_for_actions)
        start = time.perf_counter()
        cand.episodes = run_jobs(env_id, env_kwargs, jobs_for([ctrl], runs))
        cand.rollout_s = time.perf_counter() - start
        labelled = _labelled(cand.episodes)
        if labelled:
            cand.label_log_lr_rmse = replay_log_lr_rmse(
                [e.loss for e in labelled],
                [e.label for e in labelled],
                cand.fit.params,
                cand.fit.initial_lr,
            )
        if console is not None:
            console.log(
                f"{cand.name}: closed loop on the fit runs {cand.objective:.4f}, log-lr rmse "
                f"{cand.fit.log_lr_rmse:.3f} on its data, {cand.label_log_lr_rmse:.3f} "
                "against the agent on the states it visits"
            )
        if r == rounds:
            break
        losses += [e.loss for e in labelled]
        lrs += [e.label for e in labelled]
        start = time.perf_counter()
        fit = fit_greedylr(losses, lrs, budget, seed, start=(cand.fit.params, cand.fit.initial_lr))
        fit_s = time.perf_counter() - start
        decisions = int(sum(len(x) for x in lrs))
        candidates.append(Candidate(f"dagger_{r + 1}", fit, len(lrs), decisions, fit_s))
    return candidates


def choose(candidates: list[Candidate]) -> int:
    """The index of the candidate with the lowest training objective (ties: the earliest)."""
    return min(range(len(candidates)), key=lambda i: (candidates[i].objective, i))


def distill(config: dict[str, Any]) -> dict[str, Any]:
    """Fit GreedyLR to the agent of ``config["run_dir"]``, check it, write the outputs."""
    try:
        cfg = DistillConfig.from_dict(config)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r} is invalid: no such directory")
    try:
        run_cfg, model_path = load_run(run_dir)
        spec = EnvSpec.from_dict(run_cfg["env"])
        env_id, env_kwargs = spec.id, spec.options
        run_eval = run_cfg.get("eval") or {}
        check_split = cfg.check.split or run_eval.get("split", "test")
        check_eps = as_int(
            "check.episodes_per_instance",
            cfg.check.episodes_per_instance or run_eval.get("episodes_per_instance", 1),
            1,
        )
        require(
            cfg.fit.split != check_split,
            "fit.split",
            cfg.fit.split,
            f"a split other than the check split {check_split!r} (fits are chosen on it)",
        )
        env = make_env(env_id, **env_kwargs)
        u = env.unwrapped
        fit_instances = u.instances(cfg.fit.split)
        check_instances = u.instances(check_split)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    budget, fit_seed = cfg.fit.budget, cfg.fit.seed
    seed = int(run_cfg.get("seed", 0))
    seed_everything(seed, cfg.torch_threads)
    console = Console(stderr=True)
    algo = run_cfg["agent"].get("algo", "ppo")
    agent = AgentController(algo, load_agent(model_path, algo))

    # 1. open loop: the agent's schedules on the fit instances, then the fit.
    start = time.perf_counter()
    fit_runs = episode_seeds(fit_instances, cfg.fit.episodes_per_instance, seed + 3)
    agent_runs = run_jobs(env_id, env_kwargs, jobs_for([agent], fit_runs))
    agent_objective = float(np.mean(stats.scores([e.log_loss_ratio for e in agent_runs])))
    recorded = _usable(agent_runs)
    if not recorded:
        raise ConfigError(f"{run_dir}: every agent episode on the fit instances diverged")
    rollout_s = time.perf_counter() - start
    start = time.perf_counter()
    fit = fit_greedylr([e.loss for e in recorded], [e.lr for e in recorded], budget, fit_seed)
    fit_s = time.perf_counter() - start
    decisions = int(sum(len(e.lr) for e in recorded))
    console.log(
        f"fitted GreedyLR to {len(recorded)} agent schedules in {fit_s:.1f} s: "
        f"log-lr rmse {fit.log_lr_rmse:.3f} (defaults {fit.default_log_lr_rmse:.3f})"
    )

    # 2. DAgger rounds, every candidate rolled out on the fit runs; 3. keep the best there.
    lrs_for_actions = action_lrs(env)
    skipped = None
    if lrs_for_actions is None and cfg.fit.dagger_rounds > 0:
        skipped = (
            f"{env_id} has no action -> lr mapping to label GreedyLR's states with "
            "(lrrl.agents.greedylr_fit.action_lrs): open-loop fit only"
        )
        console.log(f"DAgger skipped: {skipped}")
    open_loop = Candidate("open_loop", fit, len(recorded), decisions, fit_s)
    candidates = dagger(
        env_id,
        env_kwargs,
        agent,
        lrs_for_actions,
        fit_runs,
        recorded,
        open_loop,
        cfg.fit.dagger_rounds,
        budget,
        fit_seed,
        console,
    )
    chosen_index = choose(candidates)
    chosen = candidates[chosen_index]
    console.log(
        f"chose {chosen.name}: closed loop on the {cfg.fit.split} runs {chosen.objective:.4f} "
        f"(open loop {open_loop.objective:.4f})"
    )

    # 4. closed loop on the evaluation instances, with the training run's seeds.
    check_runs = episode_seeds(check_instances, check_eps, seed + 1)
    default_lr = _tune_default_lr(spec, run_eval.get("lr_grid") or [], fit_runs, recorded)
    controllers = {
        algo: agent,
        "greedylr_distilled": chosen.controller("greedylr_distilled"),
        "greedylr_open_loop": open_loop.controller("greedylr_open_loop"),
        "greedylr_default": greedylr_controller("greedylr_default", {}, default_lr),
    }
    played = [c for name, c in controllers.items() if name != "greedylr_open_loop"]
    if chosen is not open_loop:
        played.append(controllers["greedylr_open_loop"])
    flat = run_jobs(env_id, env_kwargs, jobs_for(played, check_runs))
    k = len(check_runs)
    by_name = {c.name: flat[i * k : (i + 1) * k] for i, c in enumerate(played)}
    by_name.setdefault("greedylr_open_loop", by_name["greedylr_distilled"])  # the same fit
    episodes = {name: by_name[name] for name in controllers}
    env.close()
    summaries = {name: summarise(eps) for name, eps in episodes.items()}
    L = {name: s["log_loss_ratio"] for name, s in summaries.items()}
    recovered = _gain_share(L["greedylr_default"], L["greedylr_distilled"], L[algo])
    baselines = _run_baselines(run_dir, algo)

    steps_per_action = int(u.steps_per_action)
    greedylr = {
        "schema": GREEDYLR_SCHEMA,
        "params": chosen.fit.params,
        "initial_lr": chosen.fit.initial_lr,
        "steps_per_action": steps_per_action,
        "usage": (
            "optimizer lr=initial_lr; GreedyLR(optimizer, **params) or transformers "
            "get_scheduler('greedy', optimizer, scheduler_specific_kwargs=params); call "
            f"step(loss) once every steps_per_action={steps_per_action} optimizer steps"
        ),
        "source": {"run_dir": str(run_dir), "env_id": env_id, "seed": seed, "fit": chosen.name},
    }
    write_json(run_dir / "greedylr.json", greedylr)
    report = {
        "run_dir": str(run_dir),
        "env_id": env_id,
        "fit": {
            "split": cfg.fit.split,
            "schedules": len(recorded),
            "decisions": decisions,
            "log_lr_rmse": fit.log_lr_rmse,
            "default_log_lr_rmse": fit.default_log_lr_rmse,
            "candidates": fit.n_evaluations,
            "history": fit.history,
            "rollout_time_s": rollout_s,
            "fit_time_s": fit_s,
            "params": fit.params,
            "initial_lr": fit.initial_lr,
        },
        "dagger": {
            "rounds": len(candidates) - 1,
            "requested_rounds": cfg.fit.dagger_rounds,
            "skipped": skipped,
            "split": cfg.fit.split,
            "episodes": len(fit_runs),
            "objective": OBJECTIVE,
            "agent_train_log_loss_ratio": agent_objective,
            "label_log_lr_rmse_definition": (
                "log-lr rmse of the candidate against the agent's lr on the states the "
                "candidate itself visits in closed loop (NaN without labels)"
            ),
            "fit_log_lr_rmse_definition": "log-lr rmse on the data the candidate was fitted to",
            "chosen": chosen.name,
            "candidates": [c.to_json(i == chosen_index) for i, c in enumerate(candidates)],
        },
        "check": {
            "split": check_split,
            "episodes": len(check_runs),
            "schedulers": {
                name: {**s, "params": controllers[name].params} for name, s in summaries.items()
            },
            "run_metrics": baselines,
            "recovered_gain": recovered,
            "recovered_gain_open_loop": _gain_share(
                L["greedylr_default"], L["greedylr_open_loop"], L[algo]
            ),
            "agent_beats_default": L[algo] < L["greedylr_default"],
            "recovered_gain_definition": (
                "(L_default - L_distilled) / (L_default - L_agent), L = mean log(loss_T/loss_0) "
                "over the same (instance, seed) runs"
            ),
        },
    }
    write_json(run_dir / "distill_report.json", report)
    _plot(run_dir / "distill.png", recorded[0], episodes, candidates, chosen_index, algo)
    out = output_console()
    out.print(_candidates_table(candidates, chosen_index, cfg.fit.split, algo, agent_objective))
    out.print(_table(L, baselines, recovered, check_split, algo))
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
        style = {"greedylr_distilled": "bold", "greedylr_open_loop": "italic"}.get(name)
        table.add_row(name, ours, theirs, style=style)
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


def _candidates_table(
    candidates: list[Candidate], chosen: int, split: str, agent: str, agent_objective: float
) -> Table:
    table = Table(title=f"GreedyLR fits in closed loop on the {split} instances (chosen there)")
    table.add_column("fit")
    table.add_column("log(loss_T/loss_0)", justify="right")
    table.add_column("rmse, fit data", justify="right")
    table.add_column("rmse vs agent", justify="right")
    table.add_column("chosen", justify="center")
    for i, c in enumerate(candidates):
        table.add_row(
            c.name,
            f"{c.objective:.4f}",
            f"{c.fit.log_lr_rmse:.3f}",
            f"{c.label_log_lr_rmse:.3f}",
            "*" if i == chosen else "",
            style="bold" if i == chosen else None,
        )
    table.add_row(f"{agent} (the agent)", f"{agent_objective:.4f}", "", "", "", style="dim")
    table.caption = (
        "mean over the fit runs; rmse: log-lr error on the data fitted to, and against the "
        "agent's lr on the states the fit itself visits"
    )
    return table


def _plot(
    path: Path,
    fit_episode: Episode,
    episodes: dict[str, list[Episode]],
    candidates: list[Candidate],
    chosen: int,
    algo: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_open, ax_closed, ax_rounds) = plt.subplots(
        1, 3, figsize=(16, 4), constrained_layout=True
    )
    t = np.arange(len(fit_episode.lr))
    open_loop, best = candidates[0].fit, candidates[chosen]

    def replay(fit: FitResult) -> np.ndarray:
        return schedule_lrs(fit_episode.loss, len(fit_episode.lr), fit.initial_lr, **fit.params)[0]

    ax_open.plot(t, fit_episode.lr, lw=2, label=f"{algo} (agent)")
    ax_open.plot(t, replay(open_loop), ls="--", label="GreedyLR open-loop fit (replay)")
    if chosen != 0:
        ax_open.plot(t, replay(best.fit), ls="-.", label=f"GreedyLR {best.name} (replay)")
    default = schedule_lrs(fit_episode.loss, len(fit_episode.lr), open_loop.initial_lr)[0]
    ax_open.plot(t, default, ls=":", label="GreedyLR defaults (replay)")
    ax_open.set(
        yscale="log",
        xlabel="decision",
        ylabel="learning rate",
        title=f"open loop on {fit_episode.instance} (fit, rmse {open_loop.log_lr_rmse:.2f})",
    )
    for name, eps in episodes.items():
        if name == "greedylr_open_loop" and chosen == 0:
            continue  # the same schedule as greedylr_distilled
        label = f"{name} ({best.name})" if name == "greedylr_distilled" else name
        ax_closed.plot(np.arange(len(eps[0].lr)), eps[0].lr, label=label)
    ax_closed.set(
        yscale="log",
        xlabel="decision",
        ylabel="learning rate",
        title=f"closed loop on {episodes[algo][0].instance}",
    )
    x = np.arange(len(candidates))
    ax_rounds.plot(x, [c.objective for c in candidates], "o-", label="closed loop (fit runs)")
    ax_rounds.plot([chosen], [best.objective], "k*", ms=14, label=f"chosen: {best.name}")
    ax_rounds.set(
        xticks=x,
        xticklabels=["open loop" if i == 0 else f"round {i}" for i in x],
        ylabel="mean log(loss_T/loss_0)",
        title="GreedyLR fits on the fit instances",
    )
    ax_rmse = ax_rounds.twinx()
    ax_rmse.plot(x, [c.label_log_lr_rmse for c in candidates], "s--", color="tab:red")
    ax_rmse.set_ylabel("log-lr rmse vs agent on own states", color="tab:red")
    for ax in (ax_open, ax_closed, ax_rounds):
        ax.legend(fontsize=8)
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
