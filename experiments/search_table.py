"""The trials of a hyperparameter search (``hydra/sweeper=lrrl_optuna``), as a markdown table.

    python experiments/search_table.py multirun/ppo_search

Reads the study the search stored in ``<sweep dir>/optuna.db`` and its
``optimization_results.yaml``: one row per trial, best first (its state, its objective on the
tuning instances, where a pruned trial stopped, its PPO training seconds from its run dir's
``metrics.json``, the sampled values), and the best trial's overrides, ready for the command
line. Trials share the machine (``hydra.sweeper.n_jobs``), so their seconds compare only
within one search.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import yaml

from lrrl.sweeper import RESULTS_FILE


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace(" ", "")


def _training_seconds(run_dir: str | None) -> str:
    """The trial's PPO wall time (``train.wall_time_s`` of its metrics.json), if it finished."""
    path = Path(run_dir or "") / "metrics.json"
    if run_dir is None or not path.is_file():
        return "–"
    return f"{json.loads(path.read_text())['train']['wall_time_s']:.0f}"


def table(sweep_dir: Path) -> str:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results_path = sweep_dir / RESULTS_FILE
    if not results_path.is_file():
        raise SystemExit(f"search_table: error: {results_path} is missing (no finished search)")
    results = yaml.safe_load(results_path.read_text())
    study = optuna.load_study(
        study_name=results["study_name"], storage=f"sqlite:///{sweep_dir}/optuna.db"
    )
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params}, key=_short)
    lines = [
        "| trial | state | objective (tune) | PPO s | " + " | ".join(map(_short, keys)) + " |",
        "|---" * (4 + len(keys)) + "|",
    ]

    def order(t: optuna.trial.FrozenTrial) -> tuple[int, float]:
        return (0, t.value) if t.value is not None and t.state.name == "COMPLETE" else (1, t.number)

    for t in sorted(trials, key=order):
        if t.state.name == "COMPLETE":
            state, value = "complete", f"{t.value:.3f}"
        elif t.state.name == "PRUNED":
            step = max(t.intermediate_values, default=math.nan)
            state, value = f"pruned at {step:,} steps", "–"
        else:
            state, value = t.state.name.lower(), "–"
        cells = [_value(t.params.get(k, "")) for k in keys]
        bold = "**" if t.number == results["best_trial"] else ""
        seconds = _training_seconds(t.user_attrs.get("run_dir"))
        lines.append(
            f"| {bold}{t.number}{bold} | {state} | {value} | {seconds} | "
            + " | ".join(cells)
            + " |"
        )
    counts = ", ".join(f"{n} {state}" for state, n in results["trials"].items())
    best = " ".join(results["best_overrides"])
    return "\n".join(
        [
            *lines,
            "",
            f"{len(trials)} trials ({counts}); best: trial {results['best_trial']}, "
            f"objective {results['best_value']:.3f} on the tuning instances, with `{best}`.",
        ]
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    text = table(args.sweep_dir)
    print(text)
    return text


if __name__ == "__main__":
    main()
