"""What a comparison leaves on disk, written in one place for ``lrrl.train`` and ``lrrl.evaluate``.

=========================== =================================================================
file                        holds
=========================== =================================================================
``metrics.json``            ``objective``, the subject, every scheduler's summary (statistics,
                            stability, families, paired statistics against the subject, tuned
                            parameters), skipped schedulers, plus what the caller adds
                            (training statistics, versions, the command line)
``schedule.json``           the subject's episodes (``lrrl.schedule/v1``); train runs only
``schedules/<name>.json``   every other scheduler's episodes (evaluate: every scheduler's)
``episodes.csv``            one row per scheduler x instance x episode seed
``schedules.png``           learning rate (with the bound) and loss per decision, one instance
``intervals.png``           every scheduler's final-loss ratio to the subject, with intervals
=========================== =================================================================

JSON is written through a temporary file and ``os.replace``, so a reader never sees half a
file, and ``metrics.json`` last, so its presence means the run finished.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrrl import report
from lrrl.comparison import UNCLIPPED, Comparison
from lrrl.config import EnvSpec
from lrrl.rollout import Episode
from lrrl.schedule import SCHEMA_NAME


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write JSON through a temporary file and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(payload), f, indent=2, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def schedule_payload(
    episodes: Sequence[Episode],
    env: EnvSpec,
    seed: int,
    steps_per_action: int,
) -> dict[str, Any]:
    """The ``schedule.json`` document: the first episode at top level, all under ``episodes``."""
    first = episodes[0].to_json()
    return {
        "schema": SCHEMA_NAME,
        "env_id": env.id,
        "env": dict(env.options),
        "scheduler": episodes[0].scheduler,
        "seed": seed,
        "steps_per_action": steps_per_action,
        "instance": first["instance"],
        "lr": first["lr"],
        "loss": first["loss"],
        "lr_bound": first["lr_bound"],
        "episodes": [e.to_json() for e in episodes],
    }


def metrics_document(
    comparison: Comparison, env: EnvSpec, seed: int, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``metrics.json`` of a comparison (plus the caller's ``extra`` keys)."""
    summaries = comparison.summaries
    subject = comparison.subject or next(iter(summaries))
    return {
        "objective": summaries[subject]["log_loss_ratio"],
        "objective_name": (
            f"mean log(loss_T/loss_0) of {subject} on the {comparison.split} instances"
        ),
        "env_id": env.id,
        "env": dict(env.options),
        "seed": seed,
        "split": comparison.split,
        "subject": subject,
        "headline": report.headline(comparison.summaries, subject),
        "schedulers": comparison.schedulers(),
        "skipped": comparison.skipped,
        "reference_loss": comparison.references,
        **dict(extra or {}),
    }


def write_outputs(
    out_dir: Path,
    comparison: Comparison,
    env: EnvSpec,
    seed: int,
    steps_per_action: int,
    extra: Mapping[str, Any] | None = None,
    subject_file: str | None = None,
) -> dict[str, Any]:
    """Write every file of a comparison into ``out_dir`` (see the module docstring).

    ``subject_file`` (e.g. ``schedule.json``) puts the subject's schedule at the top of the
    directory; everyone else's goes into ``schedules/``. Returns the metrics written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    subject = comparison.subject or next(iter(comparison.episodes))
    for name, eps in comparison.episodes.items():
        target = (
            out_dir / subject_file
            if subject_file and name == subject
            else out_dir / "schedules" / f"{name}.json"
        )
        write_json(target, schedule_payload(eps, env, seed, steps_per_action))
    report.write_csv(out_dir / "episodes.csv", comparison.episodes, comparison.references)
    first = {
        name: eps[0]
        for name, eps in comparison.episodes.items()
        if not name.endswith(f"@{UNCLIPPED}")  # the same schedules again, without the clip
    }
    plot_schedules(
        out_dir / "schedules.png",
        first,
        subject,
        f"{env.id} · {first[subject].instance} · seed {first[subject].seed}",
    )
    report.plot_ratios(
        out_dir / "intervals.png",
        comparison.summaries,
        subject,
        f"{env.id} · {comparison.split} instances · "
        f"{len(comparison.episodes[subject])} episodes per scheduler",
    )
    metrics = metrics_document(comparison, env, seed, extra)
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def run_info(argv: Sequence[str] | None) -> dict[str, Any]:
    """What a run records of how it was started: the command line and the versions."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("lrrl", "torch", "gymnasium", "stable-baselines3", "numpy", "hydra-core"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {"argv": list(argv or []), "python": platform.python_version(), "packages": packages}


def plot_schedules(
    path: str | Path, by_scheduler: Mapping[str, Episode], subject: str, title: str
) -> Path:
    """Learning rate (with the subject's bound) and loss per decision, one line per scheduler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (name, episode) in enumerate(by_scheduler.items()):
        color = f"C{i % 10}"
        t = np.arange(len(episode.lr))
        width = 2 if name == subject else 1.2
        ax_lr.plot(t, episode.lr, color=color, label=name, lw=width)
        bound = np.array(episode.lr_bound, dtype=float)
        if name == subject and np.isfinite(bound).any():
            ax_lr.plot(t, bound, color="k", ls="--", lw=1, label=f"lr_bound ({name} run)")
        ax_loss.plot(np.arange(len(episode.loss)), episode.loss, color=color, label=name)
    ax_lr.set(yscale="log", xlabel="decision", ylabel="learning rate", title="learning rate")
    ax_loss.set(yscale="log", xlabel="decision", ylabel="loss", title="loss")
    ax_lr.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
