"""The README's result tables, computed from the run directories of a sweep.

    python -m lrrl.train -m env=nmf seed=0,1,2,3,4,5,6,7,8,9 logger=none \\
        hydra/launcher=lrrl_joblib hydra.launcher.n_jobs=2 hydra.sweep.dir=multirun/nmf_default
    python -m lrrl.evaluate env=nmf schedulers=[] eval.headroom=true hydra.run.dir=outputs/headroom
    python experiments/report.py multirun/nmf_default --shared outputs/headroom \
        --label nmf --readme README.md

Reads every run's ``episodes.csv`` (one row per scheduler x instance x episode seed) and
``metrics.json`` below the sweep dir. Every run of a sweep plays the same test episodes (the
evaluation seed does not depend on the training seed), so the agents of all training seeds are
paired with the baselines on identical instances and seeds. Statistics (``lrrl.stats``):

* per scheduler, the mean ``log(loss_T / loss_0)`` with its interval, the agent's
  geometric-mean final-loss ratio to it (below 1: the agent is better) and the probability that
  the agent improves on it, with intervals from rliable's stratified bootstrap over instances
  and over the runs on each (training seeds x episode seeds), and the stability figures (loss
  spikes per episode, mean ``|delta log lr|`` per decision, divergence rate);
* per instance family, the agent's ratio to the best tuned heuristic, to ``follow_bound`` and
  to the best unclipped schedule, and, when the runs (or a ``--shared`` evaluation of the same
  test episodes) carry hindsight references (``eval.headroom=true``), how much the per-episode
  hindsight-best schedule beats the best tuned heuristic and the share of that the agent
  captured.

Schedulers that do not depend on the agent (baselines, hindsight references) are the same in
every run of a sweep; ``--shared DIR`` adds such rows from an evaluation directory instead of
recomputing them in every run.

``--against NAME=SWEEP_DIR`` adds another sweep's agent as scheduler ``NAME``, its run k paired
with run k of this sweep (the same number of training seeds): a searched configuration against
the default, say, on the same test episodes.

With ``--readme`` the tables replace the text between ``<!-- report:LABEL -->`` and
``<!-- /report:LABEL -->`` in that file, preceded by the command that produced them, so no
figure in the README is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from readme_output import replace_between

from lrrl import stats
from lrrl.agents.baselines import BASELINES


def read_shared(folder: Path) -> list[dict[str, str]]:
    """The per-episode rows of an evaluation whose schedulers every run shares."""
    path = folder / "episodes.csv"
    if not path.is_file():
        raise SystemExit(f"report: error: --shared {folder} has no episodes.csv")
    return list(csv.DictReader(path.open()))


def read_runs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every finished run below ``sweep_dir``: its metrics and per-episode rows, by seed."""
    runs = []
    for metrics_path in sorted(sweep_dir.rglob("metrics.json")):
        if metrics_path.parent.parent.name == "eval":
            continue  # re-evaluations live inside run dirs
        rows = list(csv.DictReader((metrics_path.parent / "episodes.csv").open()))
        runs.append({"metrics": json.loads(metrics_path.read_text()), "rows": rows})
    if not runs:
        raise SystemExit(f"report: error: no finished run (metrics.json) below {sweep_dir}")
    return sorted(runs, key=lambda r: r["metrics"]["seed"])


def _score(row: dict[str, str]) -> float:
    return float(stats.scores([float(row["log_loss_ratio"])])[0])


class Sweep:
    """Per scheduler a ``(runs, instances)`` score matrix, rows = training seed x episode seed."""

    def __init__(
        self,
        runs: list[dict[str, Any]],
        shared: list[dict[str, str]] = (),
        against: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        first = runs[0]["metrics"]
        self.subject: str = first["subject"]
        self.env_id: str = first["env_id"]
        self.seeds = [r["metrics"]["seed"] for r in runs]
        by: dict[str, dict[tuple[int, str, int], dict[str, str]]] = defaultdict(dict)
        for k, run in enumerate(runs):
            for row in run["rows"]:
                by[row["scheduler"]][(k, row["instance"], int(row["seed"]))] = row
        for name, other in (against or {}).items():  # another sweep's agent, run k with run k
            if len(other) != len(runs):
                raise SystemExit(
                    f"report: error: --against {name}: {len(other)} runs, expected {len(runs)} "
                    "(one per training seed of the sweep)"
                )
            if name in by:
                raise SystemExit(f"report: error: --against {name}: the sweep has that scheduler")
            for k, run in enumerate(other):
                for row in run["rows"]:
                    if row["scheduler"] == run["metrics"]["subject"]:
                        by[name][(k, row["instance"], int(row["seed"]))] = row
        self.against = list(against or {})
        in_runs = set(by)
        for row in shared:  # the same in every run: recorded once, as run 0's
            if row["scheduler"] not in in_runs:
                by[row["scheduler"]][(0, row["instance"], int(row["seed"]))] = row
        self.names = list(by)
        keys = sorted(by[self.subject])
        self.instances = sorted({inst for _, inst, _ in keys})
        self.family = {row["instance"]: row["family"] for row in by[self.subject].values()}
        episode_seeds = sorted({(inst, s) for _, inst, s in keys})
        per_instance = len(episode_seeds) // len(self.instances)
        self.scores: dict[str, np.ndarray] = {}
        self.rows = by
        for name, table in by.items():
            m = np.full((len(runs) * per_instance, len(self.instances)), np.nan)
            for (k, inst, seed), row in table.items():
                j = self.instances.index(inst)
                i = k * per_instance + sorted(s for x, s in episode_seeds if x == inst).index(seed)
                m[i, j] = _score(row)
            if np.isnan(m).any():  # a baseline the runs share: the same episodes in every run
                filled = m[:per_instance]
                if np.isnan(filled).any():
                    raise SystemExit(f"report: error: {name} lacks episodes in the first run")
                m = np.tile(filled, (len(runs), 1))
            self.scores[name] = m

    def stability(self, name: str) -> dict[str, float]:
        rows = list(self.rows[name].values())
        return {
            "spikes": float(np.mean([float(r["spikes"]) for r in rows])),
            "jitter": float(np.mean([float(r["lr_jitter"]) for r in rows])),
            "diverged": float(np.mean([float(r["diverged"]) for r in rows])),
        }

    def columns(self, family: str | None) -> np.ndarray:
        return np.array([family is None or self.family[i] == family for i in self.instances])


def best(sweep: Sweep, names: list[str]) -> str | None:
    return min(names, key=lambda n: float(sweep.scores[n].mean()), default=None)


def _fmt(x: float, ci: list[float] | None = None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    out = f"{x:.{digits}f}"
    return out + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def scheduler_table(sweep: Sweep, samples: int) -> tuple[str, dict[str, Any]]:
    """Markdown: every scheduler against the agent, best mean first."""
    agent = sweep.scores[sweep.subject]
    lines = [
        f"| scheduler | mean log(L_T/L_0) [95% CI] | {sweep.subject} / scheduler, final loss "
        f"[95% CI] | P({sweep.subject} better) [95% CI] | loss spikes / episode | "
        "mean \\|Δ log lr\\| | diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    data: dict[str, Any] = {}
    order = sorted(sweep.names, key=lambda n: float(sweep.scores[n].mean()))
    for name in order:
        x = sweep.scores[name]
        described = stats.describe(x, samples)
        row: dict[str, Any] = {"mean": described["mean"], "mean_ci": described["mean_ci"]}
        if name != sweep.subject:
            row.update(stats.ratio(agent - x, samples))
            row.update(stats.probability_of_improvement(agent, x, samples))
        row.update(sweep.stability(name))
        data[name] = row
        bold = "**" if name == sweep.subject else ""
        lines.append(
            f"| {bold}{name}{bold} | {_fmt(row['mean'], row['mean_ci'])} | "
            + (
                f"{_fmt(row['ratio'], row['ratio_ci'])} | "
                f"{_fmt(row['probability_of_improvement'], row['probability_of_improvement_ci'])} | "
                if name != sweep.subject
                else " | | "
            )
            + f"{row['spikes']:.2f} | {row['jitter']:.3f} | {row['diverged']:.1%} |"
        )
    return "\n".join(lines), data


def family_table(sweep: Sweep, samples: int) -> tuple[str, dict[str, Any]]:
    """Markdown: per family, the agent against the references that make the claims."""
    names = sweep.names
    tuned = [n for n in names if n in BASELINES and n != sweep.subject]
    top = best(sweep, tuned)
    # without tuned baselines (two agents compared): the best of the other sweeps' agents
    reference, kind = (top, "best tuned") if top is not None else (best(sweep, sweep.against), "")
    free = best(sweep, [n for n in names if n.endswith("@unclipped")])
    hind = [n for n in names if n.startswith("hindsight_")]
    agent = sweep.scores[sweep.subject]
    families = sorted({f for f in sweep.family.values() if f})  # DNN instances have none
    if reference is None:
        raise SystemExit("report: error: nothing to compare the agent with (no tuned baseline)")
    headers = [f"{sweep.subject} / {reference}" + (f" ({kind})" if kind else "")]
    if "follow_bound" in names:
        headers.append(f"{sweep.subject} / follow_bound")
    if free:
        headers.append(f"{sweep.subject} / {free} (best unclipped)")
    if hind:
        headers += ["hindsight / best tuned", "headroom captured"]
    lines = ["| family | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    data: dict[str, Any] = {}
    for family in [*families, None]:
        cols = sweep.columns(family)
        label = family or "**all**"

        def ratio_to(other: str, cols: np.ndarray = cols) -> dict[str, Any]:
            return stats.ratio(agent[:, cols] - sweep.scores[other][:, cols], samples)

        row: dict[str, Any] = {"vs_best": ratio_to(reference)}
        cells = [_fmt(row["vs_best"]["ratio"], row["vs_best"]["ratio_ci"])]
        if "follow_bound" in names:
            row["vs_follow_bound"] = ratio_to("follow_bound")
            cells.append(_fmt(row["vs_follow_bound"]["ratio"], row["vs_follow_bound"]["ratio_ci"]))
        if free:
            row["vs_unclipped"] = ratio_to(free)
            cells.append(_fmt(row["vs_unclipped"]["ratio"], row["vs_unclipped"]["ratio_ci"]))
        if hind and top is not None:
            # the better hindsight reference on each episode
            h = np.minimum.reduce([sweep.scores[n][:, cols] for n in hind])
            gain = float(np.mean(h - sweep.scores[top][:, cols]))
            got = float(np.mean(agent[:, cols] - sweep.scores[top][:, cols]))
            row["hindsight_over_best"] = math.exp(gain)
            row["captured"] = got / gain if gain < 0 else math.nan
            cells += [_fmt(row["hindsight_over_best"]), _fmt(row["captured"])]
        data[family or "all"] = row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    figures = {"best_tuned": top, "reference": reference, "best_unclipped": free}
    return "\n".join(lines), {**figures, "families": data}


def per_seed_line(sweep: Sweep, top: str | None) -> str:
    """The subject's mean score per training seed, and on how many seeds it beats ``top``."""
    runs = len(sweep.seeds)
    agent = sweep.scores[sweep.subject].reshape(runs, -1)
    out = f"{sweep.subject} mean log(L_T/L_0) per training seed: " + ", ".join(
        f"{v:.3f}" for v in agent.mean(axis=1)
    )
    if top is not None:
        other = sweep.scores[top].reshape(runs, -1)
        wins = int(np.sum(agent.mean(axis=1) < other.mean(axis=1)))
        out += f"; below {top} ({other.mean():.3f}) on {wins} of {runs} seeds"
    return out


def replace_section(path: Path, label: str, text: str) -> None:
    """Put ``text`` between the README markers ``<!-- report:LABEL -->`` (which must exist)."""
    replace_between(path, "report", label, text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--shared",
        type=Path,
        action="append",
        default=[],
        help="an evaluation dir of the same test episodes whose schedulers every run shares",
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="NAME=SWEEP_DIR",
        help="another sweep's agent as scheduler NAME, its run k paired with this sweep's run k "
        "(the same number of training seeds; e.g. a searched config against the default)",
    )
    parser.add_argument("--label", default="results", help="README section label")
    parser.add_argument("--readme", type=Path, help="replace this label's section in the file")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap samples")
    args = parser.parse_args(argv)
    runs = read_runs(args.sweep_dir)
    against = {}
    for entry in args.against:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--against {entry!r} is invalid: expected NAME=SWEEP_DIR")
        against[name] = read_runs(Path(folder))
    shared = [row for folder in args.shared for row in read_shared(folder)]
    sweep = Sweep(runs, shared, against)
    schedulers, sched_data = scheduler_table(sweep, args.samples)
    families, fam_data = family_table(sweep, args.samples)
    n_inst = len(sweep.instances)
    per_instance = sweep.scores[sweep.subject].shape[0] // len(runs)
    command = "python experiments/report.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    text = "\n".join(
        [
            f"`{command}`: {len(runs)} training seeds ({', '.join(map(str, sweep.seeds))}), "
            f"{n_inst} held-out {sweep.env_id} instances x {per_instance} episode seeds.",
            "",
            schedulers,
            "",
            families,
            "",
            per_seed_line(sweep, fam_data["reference"]) + ".",
        ]
    )
    print(text)
    if args.readme:
        replace_section(args.readme, args.label, text)
    figures = {"schedulers": sched_data, **fam_data, "seeds": sweep.seeds, "instances": n_inst}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return figures


if __name__ == "__main__":
    main()
