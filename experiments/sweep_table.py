"""Summarise a ``python -m lrrl.train -m ...`` sweep: each scheduler's test score over seeds.

    python -m lrrl.train -m env=nmf agent=ppo seed=0,1,2 logger=none hydra.sweep.dir=multirun/nmf
    python experiments/sweep_table.py multirun/nmf

Reads every ``metrics.json`` below the sweep dir and prints, per scheduler, the mean over runs
of the mean test ``log(loss_T / loss_0)`` (lower is better), its standard deviation over runs,
the per-run values, and in how many runs the learned schedule beat it. ``--json`` also writes
the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console
from rich.table import Table


def collect(sweep_dir: Path) -> list[dict]:
    """The ``metrics.json`` of every run below ``sweep_dir``, ordered by seed."""
    runs = [json.loads(p.read_text()) for p in sorted(sweep_dir.rglob("metrics.json"))]
    if not runs:
        raise SystemExit(f"sweep_table: error: no metrics.json below {sweep_dir}")
    return sorted(runs, key=lambda m: m["seed"])


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per scheduler: mean, std and per-run values of the test log loss ratio; runs beaten."""
    agent = next(name for name in runs[0]["schedulers"] if name not in runs[0]["wins"])
    names = sorted({name for run in runs for name in run["schedulers"]})
    table = {}
    for name in names:
        values = [run["schedulers"][name]["log_loss_ratio"] for run in runs]
        beaten = sum(run["objective"] < run["schedulers"][name]["log_loss_ratio"] for run in runs)
        table[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "runs": values,
            "seeds": [run["seed"] for run in runs],
            "beaten_by_agent": None if name == agent else beaten,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    runs = collect(args.sweep_dir)
    table = summarise(runs)
    out = Table(
        title=f"{runs[0]['env_id']}: mean test log(loss_T/loss_0) over {len(runs)} seeds "
        "(lower is better)"
    )
    for column in ("scheduler", "mean", "± std", "per seed", "agent wins"):
        out.add_column(column, justify="left" if column == "scheduler" else "right")
    for name, row in sorted(table.items(), key=lambda kv: kv[1]["mean"]):
        wins = "" if row["beaten_by_agent"] is None else f"{row['beaten_by_agent']}/{len(runs)}"
        per_seed = " ".join(f"{v:.3f}" for v in row["runs"])
        out.add_row(name, f"{row['mean']:.3f}", f"{row['std']:.3f}", per_seed, wins)
    Console().print(out)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
