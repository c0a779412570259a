"""The comparison behind ``lrrl.train`` and ``lrrl.evaluate``: tune, play, summarise.

Baselines are tuned on the tuning instances, then every scheduler (trained agents, tuned
baselines, optional unclipped baselines, hindsight references and learning-rate-free
references) is played on the same test instances with the same episode seeds, and summarised:
per scheduler its score with intervals, stability (loss spikes, learning-rate jitter,
divergences) and a breakdown by instance family; per pair with the subject (the first agent)
the geometric-mean final-loss ratio, the probability of improvement and the paired win rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrrl import stats
from lrrl.agents.baselines import Constant, ScheduleController, unavailable
from lrrl.config import REFERENCES, EnvSpec, EvalConfig, tune_split
from lrrl.envs.registration import env_options, make_env
from lrrl.rollout import Controller, Episode, episode_seeds, jobs_for, run_jobs
from lrrl.tuning import hindsight, tune

UNCLIPPED = "unclipped"
#: Baselines whose per-episode best candidate is the headroom reference.
HINDSIGHT = {"hindsight_constant": "constant", "hindsight_step_decay": "step_decay"}


@dataclass
class Comparison:
    """Every scheduler's test episodes, how each was set up, and the statistics."""

    split: str
    subject: str | None
    episodes: dict[str, list[Episode]]
    details: dict[str, dict[str, Any]]
    skipped: dict[str, str]
    references: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def schedulers(self) -> dict[str, dict[str, Any]]:
        """The ``schedulers`` mapping of ``metrics.json``: summary plus set-up details."""
        return {name: {**self.summaries[name], **self.details[name]} for name in self.summaries}


def unclipped_env(env: EnvSpec) -> EnvSpec | None:
    """The env without its clip (``bound="none"``), or ``None`` if it has no such option."""
    if "bound" not in env_options(env.id):
        return None
    return env.replace(bound="none", action_mode="log_lr")


def compare(
    env: EnvSpec,
    ev: EvalConfig,
    agents: Mapping[str, Controller] | None = None,
    log: Callable[[str], None] = print,
    show_progress: bool = False,
) -> Comparison:
    """Tune each baseline on the tuning split, then play everyone on the test split."""
    agents = dict(agents or {})
    probe = make_env(env.id, **env.options)
    try:
        probe.reset(seed=ev.seed)  # so that properties like the clip are defined
        u = probe.unwrapped
        test_runs = episode_seeds(u.instances(ev.split), ev.episodes_per_instance, ev.seed + 1)
        split_for_tuning = tune_split(u, ev)
        tune_runs = episode_seeds(
            u.instances(split_for_tuning), ev.tune_episodes_per_instance, ev.seed + 2
        )
        skipped: dict[str, str] = {}
        names = {}
        for name in ev.baselines:
            reason = unavailable(name, probe)
            if reason is not None:
                skipped[name] = reason
                log(reason)
            else:
                names[name] = name
        free = unclipped_env(env) if ev.unclipped and math.isfinite(u.clip) else None
        if ev.unclipped and free is None:
            for name in ev.unclipped:
                skipped[f"{name}@{UNCLIPPED}"] = f"{name}@{UNCLIPPED} skipped: the env has no clip"
        unclipped = {f"{name}@{UNCLIPPED}": name for name in ev.unclipped} if free else {}
        headroom = HINDSIGHT if ev.headroom else {}
        references = _references(env, ev, skipped, log)
    finally:
        probe.close()

    k_tune, k_test = len(tune_runs), len(test_runs)
    grid_size = ev.tune_budget or 20
    total = (len(names) + len(unclipped)) * grid_size * k_tune + k_test * (
        len(agents) + len(names) + len(unclipped) + len(references) + grid_size * len(headroom)
    )
    details: dict[str, dict[str, Any]] = {}
    episodes: dict[str, list[Episode]] = {}
    with _progress(show_progress, total) as advance:
        tuned = tune(env, names, tune_runs, ev, advance)
        if free is not None and unclipped:
            tuned.update(tune(free, unclipped, tune_runs, ev, advance))
        for row, outcome in tuned.items():
            log(f"tuned {row}: {outcome.candidates} candidates, best {outcome.controller.params}")
            details[row] = outcome.details(split_for_tuning)
        for name, agent in agents.items():
            details[name] = {"params": dict(getattr(agent, "params", {"kind": "agent"}))}
        # Everyone in the env itself plays together: one batched rollout.
        here = [*agents.values(), *(tuned[row].controller for row in names)]
        flat = run_jobs(
            env.id, env.options, jobs_for(here, test_runs), ev.n_jobs, advance, ev.chunk
        )
        for i, controller in enumerate(here):
            episodes[controller.name] = flat[i * k_test : (i + 1) * k_test]
        if free is not None and unclipped:
            there = [tuned[row].controller for row in unclipped]
            flat = run_jobs(
                free.id, free.options, jobs_for(there, test_runs), ev.n_jobs, advance, ev.chunk
            )
            for i, controller in enumerate(there):
                episodes[controller.name] = flat[i * k_test : (i + 1) * k_test]
        for name, (spec, controller) in references.items():
            episodes[name] = run_jobs(
                spec.id, spec.options, jobs_for([controller], test_runs), ev.n_jobs, advance
            )
            details[name] = {
                "params": {
                    "kind": "reference",
                    "optimizer": REFERENCES[name][0],
                    "lr": REFERENCES[name][1],
                }
            }
        for row, eps in hindsight(env, headroom, test_runs, ev, advance).items():
            episodes[row] = eps
            details[row] = {"params": {"kind": "hindsight", "family": HINDSIGHT[row]}}

    instances = {inst.name: inst for inst, _ in test_runs}
    refs = _reference_losses(instances.values()) if ev.reference else {}
    subject = next(iter(agents), None)
    result = Comparison(ev.split, subject, episodes, details, skipped, refs)
    result.summaries = summarise_all(episodes, subject, refs, ev)
    return result


def _references(
    env: EnvSpec, ev: EvalConfig, skipped: dict[str, str], log: Callable[[str], None]
) -> dict[str, tuple[EnvSpec, Controller]]:
    """Learning-rate-free references: the env's inner optimizer swapped, a constant lr."""
    out = {}
    for name in ev.references:
        reason = None
        if "optimizer" not in env_options(env.id):
            reason = f"{name} skipped: {env.id} has no inner-optimizer option"
        else:
            try:  # e.g. the optimizer's package is not installed
                spec = env.replace(optimizer=REFERENCES[name][0])
            except ValueError as err:
                reason = f"{name} skipped: {err}"
        if reason is not None:
            skipped[name] = reason
            log(reason)
        else:
            out[name] = (spec, ScheduleController(name, Constant(REFERENCES[name][1])))
    return out


def _reference_losses(instances: Any) -> dict[str, float]:
    """Batch-NMF reference losses per instance name, where instances expose their matrix."""
    instances = list(instances)
    if not all(hasattr(inst, "matrix") and hasattr(inst, "rank") for inst in instances):
        return {}
    return {inst.name: stats.reference_loss(inst) for inst in instances}


# -- summaries -----------------------------------------------------------------------------


def _keys(episodes: Sequence[Episode]) -> list[tuple[str, int]]:
    return [(e.instance, e.seed) for e in episodes]


def _score_matrix(episodes: Sequence[Episode]) -> tuple[np.ndarray, list[str]]:
    values = stats.scores([e.log_loss_ratio for e in episodes])
    return stats.matrix(_keys(episodes), values)


def summarise(
    episodes: Sequence[Episode],
    references: Mapping[str, float] | None = None,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """One scheduler's summary: score statistics, stability, families, per-episode results."""
    references = references or {}
    x, _ = _score_matrix(episodes)
    described = stats.describe(x, samples, confidence, seed)
    finals = np.array([e.final_loss for e in episodes])
    ratios = np.array([e.log_loss_ratio for e in episodes])
    gaps = [
        stats.optimality_gap(e.final_loss, e.loss_0, references[e.instance])
        if e.instance in references
        else math.nan
        for e in episodes
    ]
    families: dict[str, list[float]] = {}
    for e, s in zip(episodes, stats.scores(ratios), strict=True):
        families.setdefault(e.family, []).append(float(s))
    out: dict[str, Any] = {
        "log_loss_ratio": described["mean"],
        "log_loss_ratio_ci": described["mean_ci"],
        "log_loss_ratio_median": described["median"],
        "log_loss_ratio_iqm": described["iqm"],
        "log_loss_ratio_iqm_ci": described["iqm_ci"],
        "final_loss": float(np.mean(finals)),
        "divergence_rate": float(np.mean([e.diverged for e in episodes])),
        "clip_rate": float(np.mean([e.clip_rate for e in episodes])),
        "spikes_per_episode": float(np.mean([e.spikes for e in episodes])),
        "lr_jitter": float(np.mean([e.lr_jitter for e in episodes])),
        "episodes": len(episodes),
        "instances": x.shape[1],
        "confidence": confidence,
        "families": {name: float(np.mean(v)) for name, v in sorted(families.items())},
        "per_instance": {
            f"{e.instance}@{e.seed}": {
                "final_loss": e.final_loss,
                "log_loss_ratio": e.log_loss_ratio,
                **({"gap": g} if not math.isnan(g) else {}),
            }
            for e, g in zip(episodes, gaps, strict=True)
        },
    }
    if references:
        finite = [g for g in gaps if not math.isnan(g)]
        out["gap_iqm"] = stats.iqm(np.array(finite)) if finite else None
    return out


def paired(
    a: Sequence[Episode],
    b: Sequence[Episode],
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    by_family: bool = True,
) -> dict[str, Any]:
    """A against B on the same episodes: final-loss ratio A/B, P(A < B), win rate, families."""
    kb = {(e.instance, e.seed): e for e in b}
    pairs = [(e, kb[(e.instance, e.seed)]) for e in a if (e.instance, e.seed) in kb]
    if not pairs:
        return {}
    sa = stats.scores([p[0].log_loss_ratio for p in pairs])
    sb = stats.scores([p[1].log_loss_ratio for p in pairs])
    keys = [(p[0].instance, p[0].seed) for p in pairs]
    xa, _ = stats.matrix(keys, sa)
    xb, _ = stats.matrix(keys, sb)
    out = {
        **stats.ratio(xa - xb, samples, confidence, seed),
        **stats.probability_of_improvement(xa, xb, samples, confidence, seed),
        "win_rate": stats.win_rate(sa, sb),
    }
    if by_family:
        fams: dict[str, list[int]] = {}
        for i, (ea, _) in enumerate(pairs):
            fams.setdefault(ea.family, []).append(i)
        out["families"] = {}
        for fam, idx in sorted(fams.items()):
            d, _ = stats.matrix([keys[i] for i in idx], (sa - sb)[idx])
            out["families"][fam] = stats.ratio(d, samples, confidence, seed)
    return out


def summarise_all(
    episodes: Mapping[str, Sequence[Episode]],
    subject: str | None,
    references: Mapping[str, float],
    ev: EvalConfig,
) -> dict[str, dict[str, Any]]:
    """Every scheduler's summary; the subject's paired statistics against every other."""
    samples, confidence, seed = ev.bootstrap_samples, ev.confidence, ev.seed
    out = {
        name: summarise(eps, references, samples, confidence, seed)
        for name, eps in episodes.items()
    }
    if subject is not None:
        for name, eps in episodes.items():
            if name != subject:
                out[name]["vs_subject"] = paired(episodes[subject], eps, samples, confidence, seed)
    return out


class _progress:
    """A rich progress bar on stderr (or nothing) yielding an ``advance(n)`` callback."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.show:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self._bar = Progress(console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("evaluating", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
