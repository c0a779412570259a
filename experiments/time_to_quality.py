"""Time to a good schedule: the held-out objective against training wall-clock and env steps.

Trains ``python -m lrrl.train env=nmf agent=ppo`` (as a user would, one subprocess per run)
for every setting x budget x seed, evaluates only the agent on the default test suite (the
baselines are the same for every run: pass ``--shared DIR``, an evaluation of the same test
episodes, to draw the best tuned baseline as a line) and reports, per setting and budget,
the mean test ``log(loss_T/loss_0)`` over seeds, PPO's wall time and its env steps per second.

    python experiments/time_to_quality.py --out outputs/ttq [--shared DIR] [--quick]

Settings (``--settings``, Hydra overrides per name in :data:`SETTINGS`): ``default`` is the
shipped config (for NMF: 64 sub-envs with 16 steps each per update, in two env worker
processes); ``narrow`` steps 16 sub-envs with 64 steps each (the same 1,024 transitions per
update, four times the Python hops per env step; PPO's generic default); ``one_process`` is
``narrow`` with the env in the training process (``agent.env_workers=1``): the NMF default
before env workers and the wide rollout. A default run uses two processes, so ``--jobs 1``
gives seconds that compare on a 2-core machine. Writes
``time_to_quality.json`` and ``time_to_quality.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from report import read_shared

from lrrl import stats

NARROW = ["agent.n_envs=16", "agent.hyperparams.n_steps=64"]
SETTINGS: dict[str, list[str]] = {
    "default": [],
    "narrow": NARROW,
    "one_process": [*NARROW, "agent.env_workers=1"],
}


def train(out: Path, setting: str, budget: int, seed: int, quick: bool) -> dict[str, Any]:
    run_dir = out / f"{setting}__{budget}__{seed}"
    if not (run_dir / "metrics.json").is_file():
        cmd = [
            sys.executable,
            "-m",
            "lrrl.train",
            "env=nmf",
            "agent=ppo",
            "logger=none",
            "progress_bar=false",
            "eval.baselines=[]",
            "eval.unclipped=[]",
            "eval.n_jobs=1",
            f"seed={seed}",
            f"agent.total_timesteps={budget}",
            f"hydra.run.dir={run_dir}",
            *SETTINGS[setting],
            *(["debug=smoke"] if quick else []),
        ]
        done = subprocess.run(
            cmd, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    train_info = metrics["train"]
    return {
        "setting": setting,
        "budget": budget,
        "seed": seed,
        "objective": metrics["objective"],
        "train_s": train_info["wall_time_s"],
        "env_steps": train_info["timesteps"],
        "steps_per_s": train_info["env_steps_per_s"],
    }


def best_shared(folder: Path) -> tuple[str, float]:
    """The best scheduler (lowest mean test score) of a shared evaluation dir, hindsight
    references aside; divergences score as in every comparison (``lrrl.stats.scores``)."""
    by: dict[str, list[float]] = {}
    for row in read_shared(folder):
        by.setdefault(row["scheduler"], []).append(float(row["log_loss_ratio"]))
    means = {
        name: float(stats.scores(v).mean()) for name, v in by.items() if "hindsight" not in name
    }
    name = min(means, key=means.__getitem__)
    return name, means[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/time_to_quality"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[20_000, 60_000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--shared", type=Path, help="an evaluation dir of the same test suite")
    parser.add_argument("--quick", action="store_true", help="debug=smoke runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    grid = [(s, b, k) for s in args.settings for b in args.budgets for k in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda x: train(args.out, *x, args.quick), grid))
    reference = best_shared(args.shared) if args.shared else None

    print(f"{'setting':>11} {'budget':>7} {'objective':>18} {'PPO s':>7} {'steps/s':>8}")
    table = []
    for setting in args.settings:
        for budget in args.budgets:
            runs = [r for r in rows if r["setting"] == setting and r["budget"] == budget]
            obj = np.array([r["objective"] for r in runs])
            secs = float(np.mean([r["train_s"] for r in runs]))
            rate = float(np.mean([r["steps_per_s"] for r in runs]))
            spread = f"{obj.mean():.3f} ± {obj.std():.3f}"
            print(f"{setting:>11} {budget:7d} {spread:>18} {secs:7.1f} {rate:8.0f}")
            table.append(
                {
                    "setting": setting,
                    "budget": budget,
                    "objective": float(obj.mean()),
                    "objective_std": float(obj.std()),
                    "train_s": secs,
                    "steps_per_s": rate,
                    "seeds": len(runs),
                }
            )
    if reference:
        print(f"best tuned baseline ({reference[0]}): {reference[1]:.3f}")
    (args.out / "time_to_quality.json").write_text(
        json.dumps({"runs": rows, "table": table, "reference": reference}, indent=2) + "\n"
    )
    _plot(args.out / "time_to_quality.png", rows, args.settings, reference)
    print(f"wrote {args.out / 'time_to_quality.json'} and time_to_quality.png")


def _plot(path: Path, rows: list[dict], settings: list[str], reference: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting]
        for ax, key in zip(axes, ("train_s", "env_steps"), strict=True):
            ax.scatter([r[key] for r in mine], [r["objective"] for r in mine], label=setting)
    for ax, label in zip(axes, ("PPO wall-clock s", "env steps"), strict=True):
        if reference:
            ax.axhline(reference[1], color="k", ls="--", lw=1, label=f"tuned {reference[0]}")
        ax.set(xlabel=label, ylabel="test mean log(loss_T/loss_0)")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
