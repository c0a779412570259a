"""A DNN agent against cosine annealing and a constant rate tuned *per inner optimizer*.

``python -m lrrl.train env=dnn`` tunes each baseline with one learning rate for every
instance of its tuning split. On a suite that mixes SGD and Adam no single rate suits both
(SGD trains best near 0.1, Adam near 0.01), so that baseline is handicapped, and beating it
says little. Here each baseline family is tuned separately for each inner optimizer, on the
run's training instances (a log grid over the optimizer's default action range, the same
whatever the agent's range, so runs with different ranges meet the same baselines), and then
played on the
test and held-out instances of that optimizer, with the same episode seeds as the agent.

    python experiments/dnn_pilot.py outputs/dnn__ppo__0__...            # test and heldout
    python experiments/dnn_pilot.py RUN_DIR --splits heldout --episodes 1 --n-jobs 2

Prints, per split, the geometric mean of the agent's final validation loss over the
baseline's (the project's target is <= 0.95 against tuned cosine) with a 95% bootstrap
interval over instances, the paired win rate, divergences, and a breakdown by optimizer
and by task/model; writes the same as JSON (``--out``, default ``RUN_DIR/pilot.json``).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import lrrl  # noqa: F401  (registers the environments)
from lrrl.agents.baselines import Constant, Cosine, ScheduleController
from lrrl.agents.sb3 import AgentController, load_agent
from lrrl.envs.dnn_models import DEFAULT_LR_RANGES
from lrrl.harness import Episode, episode_seeds, make_env, run_tasks, split_env_config, tune_grid
from lrrl.schedulers.policy import load_run
from lrrl.stats import bootstrap_ci

#: Grid points per optimizer: log-spaced over its default action range.
GRID_POINTS = 9
MIN_RATIOS = (0.0, 0.1)


def candidates(family: str, low: float, high: float) -> list[Any]:
    lrs = [float(x) for x in np.geomspace(low, high, GRID_POINTS)]
    if family == "cosine":
        return [Cosine(lr, r) for lr in lrs for r in MIN_RATIOS]
    return [Constant(lr) for lr in lrs]


def ratio_summary(agent: list[Episode], other: list[Episode]) -> dict[str, Any]:
    """Agent/baseline final-loss ratio over paired episodes, clustered by instance."""
    by_instance: dict[str, list[float]] = defaultdict(list)
    wins = []
    for a, b in zip(agent, other, strict=True):
        assert (a.instance, a.seed) == (b.instance, b.seed)
        by_instance[a.instance].append(math.log(a.final_loss) - math.log(b.final_loss))
        wins.append(a.final_loss < b.final_loss)
    per_instance = [float(np.mean(v)) for v in by_instance.values()]
    low, high = bootstrap_ci(per_instance, "mean")
    return {
        "geo_mean_ratio": math.exp(float(np.mean(per_instance))),
        "ratio_ci": [math.exp(low), math.exp(high)],
        "win_rate": float(np.mean(wins)),
        "instances": len(per_instance),
        "episodes": len(wins),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--splits", nargs="+", default=["test", "heldout"])
    parser.add_argument("--episodes", type=int, default=2, help="episode seeds per instance")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config, model_path = load_run(args.run_dir)
    env_id, kwargs = split_env_config(config["env"])
    seed = int(config.get("seed", 0))
    env = make_env(env_id, **kwargs)
    u = env.unwrapped
    agent = AgentController("agent", load_agent(model_path, config["agent"].get("algo", "ppo")))

    tuned: dict[str, dict[str, ScheduleController]] = defaultdict(dict)
    params: dict[str, dict[str, Any]] = defaultdict(dict)
    for opt in u.optimizers:
        train = [i for i in u.instances("train") if i.optimizer == opt]
        runs = episode_seeds(train, 1, seed + 2)
        for family in ("constant", "cosine"):
            best = tune_grid(
                env_id,
                kwargs,
                family,
                candidates(family, *DEFAULT_LR_RANGES[opt]),
                runs,
                args.n_jobs,
            )
            tuned[family][opt] = best.controller
            params[family][opt] = {**best.controller.params, "train_score": best.train_score}
            print(f"tuned {family} for {opt} on {len(train)} instances: {params[family][opt]}")

    report: dict[str, Any] = {"run_dir": str(args.run_dir), "tuned": params, "splits": {}}
    for split in args.splits:
        runs = episode_seeds(u.instances(split), args.episodes, seed + 1)
        agent_eps = run_tasks(env_id, kwargs, [(agent, i, s) for i, s in runs], args.n_jobs)
        out: dict[str, Any] = {}
        for family, by_opt in tuned.items():
            tasks = [(by_opt[i.optimizer], i, s) for i, s in runs]
            eps = run_tasks(env_id, kwargs, tasks, args.n_jobs)
            summary = ratio_summary(agent_eps, eps)
            summary["diverged"] = {
                "agent": sum(e.diverged for e in agent_eps),
                family: sum(e.diverged for e in eps),
            }
            groups: dict[str, list[int]] = defaultdict(list)
            for k, (inst, _) in enumerate(runs):
                groups[f"opt={inst.optimizer}"].append(k)
                groups[f"{inst.task}-{inst.model}"].append(k)
            summary["by_group"] = {
                g: ratio_summary([agent_eps[k] for k in ks], [eps[k] for k in ks])["geo_mean_ratio"]
                for g, ks in sorted(groups.items())
            }
            summary["mean_final_loss"] = {
                "agent": float(np.mean([e.final_loss for e in agent_eps])),
                family: float(np.mean([e.final_loss for e in eps])),
            }
            out[family] = summary
            ci = summary["ratio_ci"]
            print(
                f"{split}: agent / tuned {family} final val loss, geometric mean "
                f"{summary['geo_mean_ratio']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] over "
                f"{summary['instances']} instances, win rate {summary['win_rate']:.0%}, "
                f"divergences {summary['diverged']}"
            )
            print(
                "    by group: " + ", ".join(f"{g} {r:.3f}" for g, r in summary["by_group"].items())
            )
        report["splits"][split] = out
    path = Path(args.out) if args.out else Path(args.run_dir) / "pilot.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
