"""The report's figures, computed from per-run results and nothing else.

A *comparison* pairs a GreedyLR run with the cosine run of the same problem and seed (same
initialisation, minibatches and noise draws). GreedyLR is "as good or better" when its loss is
``<=`` cosine's; two diverged runs tie. Intervals are percentile bootstraps over *problems*
(every seed of a resampled problem comes along), because the seeds of one problem are not
independent comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from noisy.training import RunResult

#: Figures reported by the GreedyLR authors (Subramanian, Krishnamoorthy and Murthy,
#: arXiv:2512.14527 and its materials), quoted as the issue states them, for comparison only.
PUBLISHED = {
    "as_good_or_better": 0.8673,
    "as_good_or_better_comparisons": 196,
    "as_good_or_better_final_loss": "> 0.91",
    "median_final_loss_noisy": {"greedylr": 0.148, "cosine": 0.232},
    "noise_free": "behind cosine",
}
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
#: Spike recovery: the loss is back within this fraction of its value before the spike.
RECOVERY_TOLERANCE = 0.1
#: How the report names the schedulers.
LABELS = {
    "cosine": "cosine (tuned)",
    "greedy_step": "GreedyLR per step (tuned)",
    "greedy_eval": "GreedyLR per evaluation (tuned)",
}


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of a GreedyLR variant with cosine on one problem and seed."""

    problem: str
    noise: str
    seed: int
    greedy: float
    cosine: float

    @property
    def as_good(self) -> bool:
        return self.greedy <= self.cosine  # inf <= inf: both diverged is a tie

    @property
    def log_ratio(self) -> float:
        if math.isinf(self.greedy) and math.isinf(self.cosine):
            return 0.0
        with np.errstate(divide="ignore"):
            return float(np.log(self.greedy) - np.log(self.cosine))


def pair(
    results: Iterable[RunResult], variant: str, metric: Callable[[RunResult], float]
) -> list[Comparison]:
    """Every (problem, seed) that has both a ``variant`` run and a ``cosine`` run."""
    by_key: dict[tuple[str, str, int], RunResult] = {}
    for r in results:
        key = (r.scheduler, r.problem, r.seed)
        if key in by_key:
            raise ValueError(f"two runs of {key}: expected one per scheduler, problem and seed")
        by_key[key] = r
    out = []
    for (scheduler, problem, seed), r in sorted(by_key.items()):
        if scheduler != variant or ("cosine", problem, seed) not in by_key:
            continue
        c = by_key[("cosine", problem, seed)]
        out.append(Comparison(problem, r.noise, seed, metric(r), metric(c)))
    return out


def cluster_bootstrap(
    numerators: Sequence[float],
    denominators: Sequence[float],
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``sum(num) / sum(den)`` when whole clusters are resampled.

    Entry ``i`` holds cluster ``i``'s sum and count (e.g. its wins and its comparisons), so
    the statistic is the pooled fraction (or mean) over the comparisons of the clusters drawn.
    """
    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    if num.shape != den.shape or num.ndim != 1 or num.size == 0:
        raise ValueError(f"need equal-length non-empty 1-d inputs, got {num.shape}, {den.shape}")
    draws = np.random.default_rng(seed).integers(0, num.size, size=(samples, num.size))
    with np.errstate(invalid="ignore"):
        stats = num[draws].sum(axis=1) / den[draws].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    # quantiles that are resampled values (no interpolation), so a diverged run's inf stays
    # inf instead of turning an interpolation between two infs into NaN
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha], method="inverted_cdf")
    return float(lo), float(hi)


def _by_problem(comparisons: Sequence[Comparison], value: Callable[[Comparison], float]):
    problems = sorted({c.problem for c in comparisons})
    sums = [sum(value(c) for c in comparisons if c.problem == p) for p in problems]
    counts = [sum(1 for c in comparisons if c.problem == p) for p in problems]
    return sums, counts


def fraction_as_good(comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """The fraction of comparisons GreedyLR wins or ties, with its bootstrap interval."""
    if not comparisons:
        return {"value": math.nan, "ci": [math.nan, math.nan], "n": 0}
    wins, counts = _by_problem(comparisons, lambda c: float(c.as_good))
    return {
        "value": sum(wins) / sum(counts),
        "ci": list(cluster_bootstrap(wins, counts)),
        "n": len(comparisons),
    }


def geometric_mean_ratio(comparisons: Sequence[Comparison]) -> dict[str, Any]:
    """The geometric mean of GreedyLR's loss over cosine's, with its bootstrap interval."""
    if not comparisons:
        return {"value": math.nan, "ci": [math.nan, math.nan]}
    logs, counts = _by_problem(comparisons, lambda c: c.log_ratio)
    lo, hi = cluster_bootstrap(logs, counts)
    with np.errstate(over="ignore"):
        return {
            "value": float(np.exp(sum(logs) / sum(counts))),
            "ci": [float(np.exp(lo)), float(np.exp(hi))],
        }


def recovery_steps(
    eval_steps: Sequence[int],
    loss: Sequence[float],
    event_step: int,
    tolerance: float = RECOVERY_TOLERANCE,
) -> int | None:
    """Steps after ``event_step`` until the loss is within ``tolerance`` of its value there.

    The value at ``event_step`` is the one evaluated just before the spike. ``None`` when the
    loss never comes back within the run (or the run stopped).
    """
    if event_step not in eval_steps:
        raise ValueError(f"event_step={event_step} is not an evaluation step of this run")
    i = list(eval_steps).index(event_step)
    target = (1.0 + tolerance) * loss[i]
    for step, value in zip(eval_steps[i + 1 :], loss[i + 1 :], strict=True):
        if value <= target:
            return int(step - event_step)
    return None


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def _group(comparisons: Sequence[Comparison], best: Sequence[Comparison]) -> dict[str, Any]:
    return {
        "comparisons": len(comparisons),
        "problems": len({c.problem for c in comparisons}),
        "as_good_final": fraction_as_good(comparisons),
        "as_good_best": fraction_as_good(best),
        "diverged_greedy": sum(math.isinf(c.greedy) for c in comparisons),
        "diverged_cosine": sum(math.isinf(c.cosine) for c in comparisons),
        "median_final_greedy": _median([c.greedy for c in comparisons]),
        "median_final_cosine": _median([c.cosine for c in comparisons]),
        "ratio_final": geometric_mean_ratio(comparisons),
    }


def summarise(results: Sequence[RunResult], variants: Sequence[str]) -> dict[str, Any]:
    """Every figure of the report, per GreedyLR variant and group of problems.

    Groups: ``noisy`` (every noise condition pooled), each condition on its own, ``none`` (the
    noise-free problems) and ``label (clean targets)`` (label-noise runs scored on the clean
    targets). Also: per scheduler, its lr range and spike recovery; the per-problem ratios.
    """
    out: dict[str, Any] = {"published": PUBLISHED, "variants": {}}
    noises = sorted({r.noise for r in results})
    for variant in variants:
        final = pair(results, variant, lambda r: r.final_loss)
        best = pair(results, variant, lambda r: r.best_loss)
        groups: dict[str, Any] = {}
        noisy = [n for n in noises if n != "none"]
        if noisy:
            groups["noisy"] = _group(
                [c for c in final if c.noise != "none"], [c for c in best if c.noise != "none"]
            )
        for noise in noisy + (["none"] if "none" in noises else []):
            groups[noise] = _group(
                [c for c in final if c.noise == noise], [c for c in best if c.noise == noise]
            )
        if "label" in noises:
            clean = [
                c
                for c in pair(results, variant, lambda r: r.clean_final_loss)
                if c.noise == "label"
            ]
            groups["label (clean targets)"] = _group(clean, [])
        per_problem = {
            p: geometric_mean_ratio([c for c in final if c.problem == p])["value"]
            for p in sorted({c.problem for c in final})
        }
        out["variants"][variant] = {"groups": groups, "ratio_by_problem": per_problem}
    out["schedulers"] = per_scheduler(results)
    return out


def per_scheduler(results: Sequence[RunResult]) -> dict[str, Any]:
    """Per scheduler: how far its lr moves within a run, and how it came back from spikes.

    The lr range is ``max(lr) / min(lr)`` over one run's optimizer steps (median over runs).
    Spike figures, over the spike runs: the loss jump (right after / just before), how often
    and how fast the loss came back within :data:`RECOVERY_TOLERANCE`.
    """
    out: dict[str, Any] = {}
    for scheduler in sorted({r.scheduler for r in results}):
        mine = [r for r in results if r.scheduler == scheduler]
        lr_range = _median([max(r.lr) / min(r.lr) for r in mine if r.lr and min(r.lr) > 0])
        runs = [r for r in mine if r.noise == "spike"]
        if not runs:
            out[scheduler] = {"lr_range": lr_range, "runs": 0}
            continue
        steps = [
            recovery_steps(r.eval_steps, r.loss, r.event_step)
            if not r.diverged and r.event_step in r.eval_steps
            else None
            for r in runs
        ]
        recovered = [s for s in steps if s is not None]
        jumps = [
            r.event_loss / r.loss[r.eval_steps.index(r.event_step)] for r in runs if r.event_loss
        ]
        out[scheduler] = {
            "lr_range": lr_range,
            "runs": len(runs),
            "recovered": len(recovered) / len(runs),
            # never recovering counts as the longest possible wait, so the median stays honest
            "median_steps": _median([math.inf if s is None else s for s in steps]),
            "median_jump": _median(jumps),
        }
    return out


def _ci(x: dict[str, Any], fmt: str) -> str:
    lo, hi = x["ci"]
    return f"{x['value']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown(summary: dict[str, Any]) -> str:
    """The report's tables in markdown, the published figures beside ours."""
    pub = summary["published"]
    lines = [
        "| GreedyLR variant | problems | comparisons | as good or better: final loss | "
        "as good or better: best loss | median final loss GreedyLR | median final loss cosine | "
        "final-loss ratio GreedyLR/cosine (geo. mean) | diverged GreedyLR / cosine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in summary["variants"].items():
        for group, g in v["groups"].items():
            best = _ci(g["as_good_best"], ".1%") if g["as_good_best"]["n"] else "–"
            lines.append(
                f"| {LABELS[variant]}: {group} | {g['problems']} | {g['comparisons']} "
                f"| {_ci(g['as_good_final'], '.1%')} | {best} | {g['median_final_greedy']:.3g} "
                f"| {g['median_final_cosine']:.3g} | {_ci(g['ratio_final'], '.3g')} "
                f"| {g['diverged_greedy']} / {g['diverged_cosine']} |"
            )
    lines.append(
        f"| reported by the GreedyLR authors: small models | | {pub['as_good_or_better_comparisons']} "
        f"| {pub['as_good_or_better']:.2%} overall, {pub['as_good_or_better_final_loss']} on final "
        "loss | | | | | |"
    )
    med = pub["median_final_loss_noisy"]
    lines.append(
        "| reported by the GreedyLR authors: noisy suite | | | | | "
        f"{med['greedylr']} | {med['cosine']} | | |"
    )
    lines += [
        "",
        "| scheduler | lr range within a run (max/min, median) | spike runs | loss jump at the "
        f"spike (median x) | recovered to within {RECOVERY_TOLERANCE:.0%} | median steps to "
        "recover |",
        "|---|---|---|---|---|---|",
    ]
    for scheduler, r in summary["schedulers"].items():
        if not r["runs"]:
            lines.append(f"| {LABELS[scheduler]} | {r['lr_range']:.3g} | 0 | | | |")
            continue
        steps = "never" if math.isinf(r["median_steps"]) else f"{r['median_steps']:.0f}"
        lines.append(
            f"| {LABELS[scheduler]} | {r['lr_range']:.3g} | {r['runs']} | {r['median_jump']:.2f} "
            f"| {r['recovered']:.0%} | {steps} |"
        )
    variants = list(summary["variants"])
    problems = sorted({p for v in summary["variants"].values() for p in v["ratio_by_problem"]})
    families = sorted({p.split("/")[0] for p in problems})
    noises = sorted({p.split("/")[1] for p in problems}, key=lambda n: (n != "none", n))
    lines += [
        "",
        "Final-loss ratio GreedyLR/cosine per problem (geometric mean over seeds; "
        + ", ".join(LABELS[v] for v in variants)
        + "):",
        "",
        "| family | " + " | ".join(noises) + " |",
        "|---|" + "---|" * len(noises),
    ]
    for family in families:
        cells = []
        for noise in noises:
            ratios = [
                summary["variants"][v]["ratio_by_problem"].get(f"{family}/{noise}")
                for v in variants
            ]
            cells.append(" / ".join("–" if r is None else f"{r:.2f}" for r in ratios))
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
