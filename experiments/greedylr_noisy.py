"""Tuned GreedyLR against tuned cosine annealing on small problems with and without noise.

    python experiments/greedylr_noisy.py                 # the full study (see notes/noisy.md)
    python experiments/greedylr_noisy.py --quick         # about a minute, for development
    python experiments/greedylr_noisy.py --out DIR --n-jobs 2
    python experiments/greedylr_noisy.py --report-from DIR  # re-render DIR's tables, no training

Five model families (digits MLP, CNN and softmax, a GRU on generated sequences, NMF) under
five conditions (no injected noise, gradient noise, label noise, a parameter spike, a data
shift); both schedulers tuned with the same budget on tuning seeds, then compared at equal
optimizer steps on disjoint evaluation seeds. Writes ``DIR/report.md`` (the tables, printed
too), ``DIR/results.json`` (every evaluation run with its traces, every tuning trial, the
summary) and ``DIR/noisy.png`` (loss ratios per problem, a spike-recovery trace).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from noisy.problems import FAMILIES, NOISES  # noqa: E402
from noisy.study import (  # noqa: E402
    PRESETS,
    StudyResult,
    config_from_json,
    config_to_json,
    run_study,
    with_overrides,
)
from noisy.summary import LABELS, markdown, recovery_steps, summarise  # noqa: E402
from noisy.training import SCHEDULERS, RunResult  # noqa: E402

DEFAULT_OUT = Path("outputs/greedylr_noisy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small study for development")
    parser.add_argument("--out", type=Path, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib worker processes")
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES))
    parser.add_argument("--noises", nargs="+", choices=NOISES)
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS)
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--budget", type=int, help="tuning candidates per scheduler and problem")
    parser.add_argument("--tune-seeds", type=int)
    parser.add_argument("--eval-seeds", type=int)
    parser.add_argument(
        "--report-from",
        type=Path,
        metavar="DIR",
        help="train nothing: re-render the tables and plot from DIR/results.json",
    )
    args = parser.parse_args(argv)
    if args.n_jobs < 1:
        parser.error(f"--n-jobs={args.n_jobs} is invalid: expected an integer >= 1")
    return args


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run_records(study: StudyResult) -> list[dict[str, Any]]:
    """Every evaluation run as JSON, with its spike recovery beside its traces."""
    records = []
    for r in study.runs:
        record = r.to_json()
        if r.noise == "spike" and not r.diverged:
            record["recovery_steps"] = recovery_steps(r.eval_steps, r.loss, r.event_step)
        records.append(record)
    return records


def plot(study: StudyResult, summary: dict[str, Any], path: Path) -> None:
    """Loss ratios per problem (one heatmap per GreedyLR variant) and a spike-recovery trace."""
    config = study.config
    variants = config.variants
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    families, noises = list(config.families), list(config.noises)
    for ax, variant in zip(axes[0], variants, strict=False):
        ratios = summary["variants"][variant]["ratio_by_problem"]
        grid = np.array([[ratios.get(f"{f}/{n}", np.nan) for n in noises] for f in families])
        image = ax.imshow(np.log2(grid), cmap="RdBu_r", vmin=-2, vmax=2)
        for i in range(len(families)):
            for j in range(len(noises)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(noises)), noises, rotation=30)
        ax.set_yticks(range(len(families)), families)
        ax.set_title(f"final loss, {LABELS[variant]} / cosine (tuned)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, label="log2 ratio (blue: GreedyLR lower)")
    if len(variants) < 2:
        axes[0, 1].axis("off")
    spike = [r for r in study.runs if r.noise == "spike"]
    ax_loss, ax_lr = axes[1]
    if spike:
        family = "mlp" if any(r.family == "mlp" for r in spike) else spike[0].family
        for scheduler in config.schedulers:
            runs = [r for r in spike if r.family == family and r.scheduler == scheduler]
            runs = [r for r in runs if not r.diverged]
            if not runs:
                continue
            # the loss right after the perturbation goes in beside the evaluation grid
            k = runs[0].eval_steps.index(runs[0].event_step) + 1
            steps = [*runs[0].eval_steps[:k], runs[0].event_step, *runs[0].eval_steps[k:]]
            loss = np.median([[*r.loss[:k], r.event_loss, *r.loss[k:]] for r in runs], axis=0)
            ax_loss.plot(steps, loss, label=LABELS[scheduler])
            ax_lr.plot(np.median([r.lr for r in runs], axis=0), label=LABELS[scheduler])
        for ax in (ax_loss, ax_lr):
            ax.axvline(spike[0].event_step, color="grey", ls=":", lw=1)
            ax.set_yscale("log")
            ax.set_xlabel("optimizer step")
        ax_loss.set_title(
            f"{family}/spike: full-batch training loss (median over seeds)", fontsize=9
        )
        ax_lr.set_title(f"{family}/spike: learning rate (median over seeds)", fontsize=9)
        ax_loss.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(study: StudyResult, out: Path, run: dict[str, Any], rerendered: bool) -> str:
    """Write report.md, results.json and noisy.png into ``out``; return the report text.

    ``run`` holds how the runs were made: ``command``, ``n_jobs`` and the total ``wall_s``.
    """
    config = study.config
    summary = summarise(study.runs, config.variants)
    header = (
        f"Command: `python {run['command']}` ({run['n_jobs']} worker(s)); wall time "
        f"{run['wall_s']:.0f} s (tuning {study.wall_s['tuning']:.0f} s, evaluation "
        f"{study.wall_s['evaluation']:.0f} s); CPU time of all runs "
        f"{sum(study.cpu_s.values()):.0f} s. {len(config.families)} families x "
        f"{len(config.noises)} conditions, {config.steps} optimizer steps per run, "
        f"{config.budget} tuning candidates x {config.tune_seeds} tuning seeds per scheduler "
        f"and problem, {config.eval_seeds} evaluation seeds."
        + (" Tables re-rendered from results.json (`--report-from`)." if rerendered else "")
        + "\n\n"
    )
    report = header + markdown(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    payload = {
        **run,
        "wall_s_phases": study.wall_s,
        "cpu_s": study.cpu_s,
        "config": config_to_json(config),
        "summary": summary,
        "tuning": study.tuning,
        "runs": run_records(study),
    }
    (out / "results.json").write_text(json.dumps(_json_safe(payload), indent=1))
    plot(study, summary, out / "noisy.png")
    return report


def load_study(path: Path) -> tuple[StudyResult, dict[str, Any]]:
    """A finished study back from its results.json, and how its runs were made."""
    data = json.loads(path.read_text())
    study = StudyResult(
        config=config_from_json(data["config"]),
        runs=[RunResult.from_json(r) for r in data["runs"]],
        tuning=data["tuning"],
        wall_s=data["wall_s_phases"],
        cpu_s=data["cpu_s"],
    )
    return study, {k: data[k] for k in ("command", "n_jobs", "wall_s")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        study, run = load_study(args.report_from / "results.json")
        print(write_outputs(study, args.out or args.report_from, run, rerendered=True))
        return 0
    config = with_overrides(
        PRESETS["quick" if args.quick else "default"],
        families=tuple(args.families) if args.families else None,
        noises=tuple(args.noises) if args.noises else None,
        schedulers=tuple(args.schedulers) if args.schedulers else None,
        steps=args.steps,
        budget=args.budget,
        tune_seeds=args.tune_seeds,
        eval_seeds=args.eval_seeds,
    )
    out = args.out or DEFAULT_OUT
    command = shlex.join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    study = run_study(config, n_jobs=args.n_jobs)
    run = {"command": command, "n_jobs": args.n_jobs, "wall_s": time.perf_counter() - start}
    print(write_outputs(study, out, run, rerendered=False))
    print(f"wrote {out}/report.md, results.json, noisy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
