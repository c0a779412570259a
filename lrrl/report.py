"""How a comparison is shown: the terminal table, the per-episode CSV, the interval plot.

Shared by ``lrrl.train`` (its end-of-run comparison) and ``lrrl.evaluate``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from lrrl import stats
from lrrl.agents.baselines import GRIDS, SPACES
from lrrl.harness import Episode

#: Columns of the per-episode CSV, one row per scheduler x instance x episode seed.
CSV_COLUMNS = (
    "scheduler",
    "instance",
    "seed",
    "loss_0",
    "final_loss",
    "log_loss_ratio",
    "gap",
    "diverged",
    "clip_rate",
    "mean_lr",
    "final_lr",
)


def _num(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{fmt}}"


def _interval(point: Any, ci: Sequence[float] | None, fmt: str = ".3g") -> str:
    if ci is None:
        return _num(point, fmt)
    return f"{_num(point, fmt)}\n[{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


def table(
    summaries: Mapping[str, Mapping[str, Any]],
    details: Mapping[str, Mapping[str, Any]],
    split: str,
    subject: str | None = None,
) -> Table:
    """The comparison as a rich table, best mean ``log(loss_T/loss_0)`` first.

    Columns: the mean and the IQM of ``log(loss_T/loss_0)`` over instances x episode seeds,
    the IQM optimality gap (NMF), the subject's paired win rate against each row, the
    divergence rate and the tuned parameters. Intervals are percentile-bootstrap intervals
    where the summaries carry them; ``subject``
    (the trained agent, by default the first scheduler) is the one every row's paired win
    rate is measured against.
    """
    names = list(summaries)
    subject = subject if subject in summaries else (names[0] if names else None)
    confidence = next((s["confidence"] for s in summaries.values() if "confidence" in s), 0.95)
    has_gap = any(summaries[n].get("gap") is not None for n in names)
    t = Table(
        title=f"{split} instances: log(loss_T/loss_0), lower is better [{confidence:.0%} CI]",
        caption="gap: (loss_T - loss*) / (loss_0 - loss*) against scikit-learn's batch NMF"
        if has_gap
        else None,
    )
    columns = ["scheduler", "mean", "IQM"]
    if has_gap:
        columns.append("gap IQM")
    if subject is not None and len(names) > 1:
        columns.append(f"{subject} wins")
    columns += ["div.", "params"]
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
        shown = "\n".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )
        row = [
            name,
            _interval(s["log_loss_ratio"], s.get("log_loss_ratio_ci"), ".2f"),
            _interval(s.get("log_loss_ratio_iqm"), s.get("log_loss_ratio_iqm_ci"), ".2f"),
        ]
        if has_gap:
            row.append(_interval(s.get("gap_iqm"), s.get("gap_iqm_ci"), ".2f"))
        if subject is not None and len(names) > 1:
            rate = summaries[subject].get("win_rate", {}).get(name)
            row.append("" if name == subject else _num(rate, ".0%"))
        row += [f"{s['divergence_rate']:.0%}", shown]
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
                        e.instance,
                        e.seed,
                        repr(e.loss_0),
                        repr(e.final_loss),
                        repr(e.log_loss_ratio),
                        repr(gap) if gap != "" else "",
                        int(e.diverged),
                        repr(e.clip_rate),
                        repr(float(np.mean(e.lr))) if e.lr else "",
                        repr(e.lr[-1]) if e.lr else "",
                    ]
                )
    return path


def plot_intervals(
    path: str | Path, summaries: Mapping[str, Mapping[str, Any]], title: str
) -> Path:
    """Per scheduler: IQM of ``log(loss_T/loss_0)`` and, where known, of the gap, with CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("log_loss_ratio", "log(loss_T / loss_0)")]
    if any(s.get("gap_iqm") is not None for s in summaries.values()):
        panels.append(("gap", "optimality gap to sklearn NMF"))
    order = sorted(summaries, key=lambda n: -summaries[n]["log_loss_ratio"])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels), 0.45 * len(order) + 1.6), squeeze=False
    )
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        y = np.arange(len(order))
        point = np.array([_finite(summaries[n].get(f"{key}_iqm")) for n in order])
        ci = np.array([summaries[n].get(f"{key}_iqm_ci") or [math.nan] * 2 for n in order])
        ci = np.where(np.isfinite(ci), ci, np.nan).astype(float)
        err = np.abs(np.stack([point - ci[:, 0], ci[:, 1] - point]))
        ax.errorbar(point, y, xerr=np.nan_to_num(err), fmt="o", color="C0", capsize=3)
        ax.set_yticks(y, order)
        ax.set(xlabel=f"IQM {label} (95% CI)", title=label)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=10)
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
    keys = {"lr", *GRIDS.get(kind, {}), *SPACES.get(kind, {})}
    return {k: v for k, v in params.items() if k in keys}


def _finite(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(value) else math.nan
