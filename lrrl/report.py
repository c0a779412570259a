"""How a comparison is read: the headline figures, the terminal table, the CSV, the plot.

Shared by ``lrrl.train`` (its end-of-run comparison), ``lrrl.evaluate`` and the sweep report
(``experiments/report.py``). Ratios are the subject's final loss over the other's
(geometric mean over paired episodes): below 1 the subject is better.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from lrrl import stats
from lrrl.agents.baselines import BASELINES
from lrrl.rollout import Episode

#: Columns of the per-episode CSV, one row per scheduler x instance x episode seed.
CSV_COLUMNS = (
    "scheduler",
    "family",
    "instance",
    "seed",
    "loss_0",
    "final_loss",
    "log_loss_ratio",
    "gap",
    "diverged",
    "spikes",
    "lr_jitter",
    "clip_rate",
    "mean_lr",
    "final_lr",
)


#: Width of the tables printed to a file or pipe (a cluster job's log): one line per row.
LOG_WIDTH = 200


def output_console() -> Console:
    """The console the result tables go to: standard output, the terminal's width, or
    :data:`LOG_WIDTH` columns when it is not a terminal (rich would wrap at 80)."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH)


def tuned_baselines(summaries: Mapping[str, Any], subject: str | None) -> list[str]:
    """Tuned baselines under the env's own clip (not unclipped, not hindsight references)."""
    return [n for n in summaries if n != subject and n in BASELINES]


def unclipped_baselines(summaries: Mapping[str, Any]) -> list[str]:
    return [n for n in summaries if n.endswith("@unclipped")]  # lrrl.comparison.UNCLIPPED


def best_of(summaries: Mapping[str, Any], names: Sequence[str]) -> str | None:
    """The scheduler among ``names`` with the lowest mean score."""
    return min(names, key=lambda n: summaries[n]["log_loss_ratio"], default=None)


def headline(summaries: Mapping[str, Mapping[str, Any]], subject: str | None) -> dict[str, Any]:
    """The figures a reader looks for first: the subject against the best tuned heuristic,
    ``follow_bound``, the best unclipped schedule, and the headroom it captured per family."""
    if subject is None or subject not in summaries:
        return {}
    out: dict[str, Any] = {"subject": subject}

    def against(name: str | None) -> dict[str, Any] | None:
        if name is None or "vs_subject" not in summaries[name]:
            return None
        vs = summaries[name]["vs_subject"]
        return {
            "name": name,
            "ratio": vs["ratio"],
            "ratio_ci": vs["ratio_ci"],
            "probability_of_improvement": vs["probability_of_improvement"],
            "probability_of_improvement_ci": vs["probability_of_improvement_ci"],
            "families": {f: v["ratio"] for f, v in vs.get("families", {}).items()},
            "families_ci": {f: v["ratio_ci"] for f, v in vs.get("families", {}).items()},
            "spikes_per_episode": summaries[name]["spikes_per_episode"],
        }

    best = best_of(summaries, tuned_baselines(summaries, subject))
    out["best_baseline"] = against(best)
    out["follow_bound"] = against("follow_bound" if "follow_bound" in summaries else None)
    out["best_unclipped"] = against(best_of(summaries, unclipped_baselines(summaries)))
    out["spikes_per_episode"] = summaries[subject]["spikes_per_episode"]
    out["lr_jitter"] = summaries[subject]["lr_jitter"]
    out["divergence_rate"] = summaries[subject]["divergence_rate"]
    hind = [n for n in summaries if n.startswith("hindsight_")]
    # Paired figures exist only against an agent (a comparison of baselines alone has none).
    if best is not None and hind and all("vs_subject" in summaries[n] for n in (best, *hind)):
        out["headroom"] = headroom(summaries, subject, best, hind)
    return out


def headroom(
    summaries: Mapping[str, Mapping[str, Any]], subject: str, best: str, hindsight: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per family: how much the per-episode hindsight reference beats the best tuned
    heuristic (``hindsight/best``, geometric mean) and the share of that the subject captured
    (``log(subject/best) / log(hindsight/best)``; 1 = all of it, < 0 = worse than ``best``)."""
    vs_best = summaries[best]["vs_subject"]["families"]
    out = {}
    for family, sb in vs_best.items():
        # subject/hindsight for each hindsight family; the best reference per family
        sh = min(summaries[h]["vs_subject"]["families"][family]["ratio"] for h in hindsight)
        subject_best = sb["ratio"]
        hind_best = subject_best / sh
        gain = math.log(hind_best)
        out[family] = {
            "hindsight_over_best": hind_best,
            "subject_over_best": subject_best,
            "captured": math.log(subject_best) / gain if gain < 0 else math.nan,
        }
    return out


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}"


def _interval(point: Any, ci: Sequence[float] | None, fmt: str = ".3g") -> str:
    if ci is None:
        return _num(point, fmt)
    return f"{_num(point, fmt)} [{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


def table(
    summaries: Mapping[str, Mapping[str, Any]],
    details: Mapping[str, Mapping[str, Any]],
    split: str,
    subject: str | None = None,
) -> Table:
    """The comparison as a rich table, best mean score first.

    Columns: mean ``log(loss_T/loss_0)`` with its interval; the subject's final-loss ratio to
    the row (below 1: the subject is better) and its probability of improvement, both with
    intervals; loss spikes per episode; learning-rate jitter; divergence rate; tuned params.
    """
    confidence = next((s["confidence"] for s in summaries.values() if "confidence" in s), 0.95)
    t = Table(title=f"{split} instances: log(loss_T/loss_0), lower is better [{confidence:.0%} CI]")
    columns = ["scheduler", "mean"]
    if subject is not None and len(summaries) > 1:
        columns += [f"{subject}/row", f"P({subject} better)"]
    columns += ["spikes/ep", "|Δlog lr|", "div.", "params"]
    for column in columns:
        t.add_column(
            column,
            justify="left" if column in ("scheduler", "params") else "right",
            overflow="fold",
            no_wrap=column == "scheduler",
        )
    best = min((s["log_loss_ratio"] for s in summaries.values()), default=math.nan)
    for name, s in sorted(summaries.items(), key=lambda kv: kv[1]["log_loss_ratio"]):
        params = _tuned(details.get(name, {}).get("params") or {})
        shown = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )
        row = [name, _interval(s["log_loss_ratio"], s.get("log_loss_ratio_ci"), ".2f")]
        if subject is not None and len(summaries) > 1:
            vs = s.get("vs_subject") or {}
            row.append(_interval(vs.get("ratio"), vs.get("ratio_ci"), ".2f") if vs else "")
            row.append(
                _interval(
                    vs.get("probability_of_improvement"),
                    vs.get("probability_of_improvement_ci"),
                    ".2f",
                )
                if vs
                else ""
            )
        row += [
            f"{s['spikes_per_episode']:.2f}",
            f"{s['lr_jitter']:.2f}",
            f"{s['divergence_rate']:.0%}",
            shown,
        ]
        t.add_row(*row, style="bold green" if s["log_loss_ratio"] == best else None)
    return t


def write_csv(
    path: str | Path,
    episodes: Mapping[str, Sequence[Episode]],
    references: Mapping[str, float] | None = None,
) -> Path:
    """One row per episode (see :data:`CSV_COLUMNS`); ``gap`` empty without a reference."""
    references = references or {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for name, eps in episodes.items():
            for e in eps:
                ref = references.get(e.instance)
                gap = stats.optimality_gap(e.final_loss, e.loss_0, ref) if ref is not None else ""
                writer.writerow(
                    [
                        name,
                        e.family,
                        e.instance,
                        e.seed,
                        repr(e.loss_0),
                        repr(e.final_loss),
                        repr(e.log_loss_ratio),
                        repr(gap) if gap != "" else "",
                        int(e.diverged),
                        e.spikes,
                        repr(e.lr_jitter),
                        repr(e.clip_rate),
                        repr(float(np.mean(e.lr))) if e.lr else "",
                        repr(e.lr[-1]) if e.lr else "",
                    ]
                )
    return path


def plot_ratios(
    path: str | Path, summaries: Mapping[str, Mapping[str, Any]], subject: str, title: str
) -> Path:
    """The subject's final-loss ratio to every other scheduler with its interval (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summaries if n != subject and "vs_subject" in summaries[n]]
    names.sort(key=lambda n: summaries[n]["vs_subject"]["ratio"])
    fig, ax = plt.subplots(figsize=(6.5, 0.4 * max(len(names), 1) + 1.6))
    y = np.arange(len(names))
    point = np.array([summaries[n]["vs_subject"]["ratio"] for n in names], dtype=float)
    ci = np.array([summaries[n]["vs_subject"]["ratio_ci"] for n in names], dtype=float)
    if names:
        err = np.abs(np.stack([point - ci[:, 0], ci[:, 1] - point]))
        ax.errorbar(point, y, xerr=err, fmt="o", color="C0", capsize=3)
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y, names)
    ax.set(xlabel=f"final loss: {subject} / scheduler (geometric mean, 95% CI)", title=title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _tuned(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters worth a table cell: what tuning chose (or the agent's algorithm)."""
    kind = params.get("kind")
    if kind == "agent":
        return {k: v for k, v in params.items() if k == "algo"}
    if kind in ("reference", "hindsight"):
        return {k: v for k, v in params.items() if k != "kind"}
    return {k: v for k, v in params.items() if k not in ("kind", "factory")}
