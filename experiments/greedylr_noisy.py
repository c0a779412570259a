"""Tuned GreedyLR against tuned cosine annealing on small problems with and without noise.

    python experiments/greedylr_noisy.py                 # the full study (see notes/noisy.md)
    python experiments/greedylr_noisy.py --quick         # about a minute, for development
    python experiments/greedylr_noisy.py --out DIR --n-jobs 2

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

from lrrl.noisy.problems import FAMILIES, NOISES  # noqa: E402
from lrrl.noisy.study import PRESETS, StudyResult, run_study, with_overrides  # noqa: E402
from lrrl.noisy.summary import LABELS, markdown, recovery_steps, summarise  # noqa: E402
from lrrl.noisy.training import SCHEDULERS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small study for development")
    parser.add_argument("--out", type=Path, default=Path("outputs/greedylr_noisy"))
    parser.add_argument("--n-jobs", type=int, default=2, help="joblib worker processes")
    parser.add_argument("--families", nargs="+", choices=tuple(FAMILIES))
    parser.add_argument("--noises", nargs="+", choices=NOISES)
    parser.add_argument("--schedulers", nargs="+", choices=SCHEDULERS)
    parser.add_argument("--steps", type=int, help="optimizer steps per run")
    parser.add_argument("--budget", type=int, help="tuning candidates per scheduler and problem")
    parser.add_argument("--tune-seeds", type=int)
    parser.add_argument("--eval-seeds", type=int)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.argv[0]).as_posix(), *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    study = run_study(config, n_jobs=args.n_jobs)
    summary = summarise(study.runs, config.variants)
    wall = time.perf_counter() - start
    header = (
        f"Command: `python {command}` ({args.n_jobs} worker(s)); wall time {wall:.0f} s "
        f"(tuning {study.wall_s['tuning']:.0f} s, evaluation {study.wall_s['evaluation']:.0f} s); "
        f"CPU time of all runs {sum(study.cpu_s.values()):.0f} s. "
        f"{len(config.families)} families x {len(config.noises)} conditions, {config.steps} "
        f"optimizer steps per run, {config.budget} tuning candidates x {config.tune_seeds} "
        f"tuning seeds per scheduler and problem, {config.eval_seeds} evaluation seeds.\n\n"
    )
    table = markdown(summary)
    (args.out / "report.md").write_text(header + table)
    payload = {
        "command": command,
        "n_jobs": args.n_jobs,
        "wall_s": {**study.wall_s, "total_with_report": wall},
        "cpu_s": study.cpu_s,
        "config": {
            **{k: v for k, v in vars(config).items() if k != "strengths"},
            "strengths": vars(config.strengths),
        },
        "summary": summary,
        "tuning": study.tuning,
        "runs": run_records(study),
    }
    (args.out / "results.json").write_text(json.dumps(_json_safe(payload), indent=1))
    plot(study, summary, args.out / "noisy.png")
    print(header + table)
    print(f"wrote {args.out}/report.md, results.json, noisy.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
