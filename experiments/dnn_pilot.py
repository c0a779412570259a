"""A DNN agent against cosine annealing and a constant rate tuned *per inner optimizer*.

``python -m lrrl.train env=dnn`` tunes each baseline with one learning rate for every
instance of its tuning split. On a suite that mixes SGD and Adam no single rate suits both
(SGD trains best near 0.1, Adam near 0.01), so that baseline is handicapped, and beating it
says little. Here each baseline family is tuned separately for each inner optimizer, on the
run's tuning instances of that optimizer (the train split: the DNN env has no tune split),
over a log grid of the optimizer's default action range (the same whatever the agent's
range, so runs with different ranges meet the same baselines; cosine also crosses its
default ``min_ratio`` grid), and then played on the test and held-out instances of that
optimizer, with the same episode seeds as the agent (the run's ``eval.seed``, as
``lrrl.evaluate`` uses them).

    python experiments/dnn_pilot.py outputs/dnn__ppo__0__...            # test and heldout
    python experiments/dnn_pilot.py RUN_DIR --splits heldout --episodes 1 --n-jobs 2

Prints, per split, the geometric mean of the agent's final validation loss over the
baseline's (the project's target is <= 0.95 against tuned cosine) with its stratified
bootstrap interval over instances and episodes (``lrrl.comparison.paired``), the probability
of improvement, the paired win rate, divergences, and the ratio by optimizer and by
task/model; writes the same as JSON (``--out``, default ``RUN_DIR/pilot.json``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lrrl  # noqa: F401  (registers the environments)
from lrrl.agents.sb3 import AgentController, load_agent
from lrrl.comparison import paired
from lrrl.config import EnvSpec, EvalConfig, tune_split
from lrrl.envs.dnn_models import DEFAULT_LR_RANGES
from lrrl.envs.registration import make_env
from lrrl.rollout import Controller, Episode, Job, episode_seeds, run_jobs
from lrrl.schedulers.policy import load_run
from lrrl.tuning import Tuned, tune

FAMILIES = ("constant", "cosine")
#: Learning rates per optimizer: log-spaced over its default action range.
GRID_POINTS = 9


def lr_grid(optimizer: str, points: int = GRID_POINTS) -> list[float]:
    """``points`` learning rates log-spaced over the optimizer's default action range."""
    return [float(x) for x in np.geomspace(*DEFAULT_LR_RANGES[optimizer], points)]


def tune_per_optimizer(
    env: EnvSpec, ev: EvalConfig, points: int = GRID_POINTS
) -> dict[str, dict[str, Tuned]]:
    """``family -> optimizer -> Tuned``: each family tuned on each optimizer's tuning
    instances over the whole grid (``points`` lrs over the optimizer's default range)."""
    probe = make_env(env.id, **env.options)
    try:
        u: Any = probe.unwrapped
        pool = u.instances(tune_split(u, ev))
        optimizers = u.cfg.optimizers
    finally:
        probe.close()
    out: dict[str, dict[str, Tuned]] = defaultdict(dict)
    for opt in optimizers:
        mine = [inst for inst in pool if inst.optimizer == opt]
        runs = episode_seeds(mine, ev.tune_episodes_per_instance, ev.seed + 2)
        grid = lr_grid(opt, points)
        per_opt = EvalConfig.from_dict(
            {**ev.to_dict(), "baselines": list(FAMILIES), "lr_grid": grid, "tune_budget": None}
        )
        for family, best in tune(env, {f: f for f in FAMILIES}, runs, per_opt).items():
            out[family][opt] = best
            print(f"tuned {family} for {opt} on {len(mine)} instances: {best.controller.params}")
    return dict(out)


def play_split(
    env: EnvSpec,
    agent: Controller,
    tuned: dict[str, dict[str, Tuned]],
    runs: list[tuple[Any, int]],
    n_jobs: int,
) -> dict[str, list[Episode]]:
    """The agent and every family (the tuned controller of each instance's optimizer) on
    ``runs``, in one rollout; episodes in run order."""
    jobs = [Job(agent, inst, seed) for inst, seed in runs]
    for by_opt in tuned.values():
        jobs += [Job(by_opt[inst.optimizer].controller, inst, seed) for inst, seed in runs]
    flat = run_jobs(env.id, env.options, jobs, n_jobs)
    k = len(runs)
    names = ["agent", *tuned]
    return {name: flat[i * k : (i + 1) * k] for i, name in enumerate(names)}


def summarise_split(
    episodes: dict[str, list[Episode]], runs: list[tuple[Any, int]], ev: EvalConfig
) -> dict[str, Any]:
    """Per family: the agent's paired statistics against it, overall and per group."""
    stats = (ev.bootstrap_samples, ev.confidence, ev.seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for k, (inst, _) in enumerate(runs):
        groups[f"opt={inst.optimizer}"].append(k)
        groups[f"{inst.task}-{inst.model}"].append(k)
    agent = episodes["agent"]
    out: dict[str, Any] = {}
    for family in FAMILIES:
        other = episodes[family]
        summary = paired(agent, other, *stats, by_family=False)
        summary["instances"] = len({inst.name for inst, _ in runs})
        summary["episodes"] = len(runs)
        summary["diverged"] = {
            "agent": sum(e.diverged for e in agent),
            family: sum(e.diverged for e in other),
        }
        summary["mean_final_loss"] = {
            "agent": float(np.mean([e.final_loss for e in agent])),
            family: float(np.mean([e.final_loss for e in other])),
        }
        summary["by_group"] = {
            g: paired([agent[k] for k in ks], [other[k] for k in ks], *stats, by_family=False)[
                "ratio"
            ]
            for g, ks in sorted(groups.items())
        }
        out[family] = summary
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--splits", nargs="+", default=["test", "heldout"])
    parser.add_argument(
        "--episodes", type=int, help="episode seeds per instance (default: the run's eval)"
    )
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--grid-points", type=int, default=GRID_POINTS)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config, model_path = load_run(args.run_dir)
    env = EnvSpec.from_dict(config["env"])
    ev = EvalConfig.from_dict({**config.get("eval", {}), "n_jobs": args.n_jobs})
    algo = config["agent"].get("algo", "ppo")
    agent = AgentController(algo, load_agent(model_path, algo))

    tuned = tune_per_optimizer(env, ev, args.grid_points)
    report: dict[str, Any] = {
        "run_dir": str(args.run_dir),
        "tuned": {
            family: {
                opt: {**t.controller.params, "tune_score": t.tune_score} for opt, t in d.items()
            }
            for family, d in tuned.items()
        },
        "splits": {},
    }
    probe = make_env(env.id, **env.options)
    u: Any = probe.unwrapped
    for split in args.splits:
        runs = episode_seeds(
            u.instances(split), args.episodes or ev.episodes_per_instance, ev.seed + 1
        )
        out = summarise_split(play_split(env, agent, tuned, runs, args.n_jobs), runs, ev)
        for family, summary in out.items():
            ci = summary["ratio_ci"]
            print(
                f"{split}: {algo} / tuned {family} final val loss, geometric mean "
                f"{summary['ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] over "
                f"{summary['instances']} instances, P(improvement) "
                f"{summary['probability_of_improvement']:.2f}, win rate {summary['win_rate']:.0%}, "
                f"divergences {summary['diverged']}"
            )
            print(
                "    by group: " + ", ".join(f"{g} {r:.3f}" for g, r in summary["by_group"].items())
            )
        report["splits"][split] = out
    probe.close()
    path = Path(args.out) if args.out else Path(args.run_dir) / "pilot.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
