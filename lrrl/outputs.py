"""What a run leaves on disk: JSON written atomically, the schedule export, the plots."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrrl.harness import Episode

SCHEDULE_SCHEMA = "lrrl.schedule/v1"


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
    env_id: str,
    env_config: Mapping[str, Any],
    seed: int,
    steps_per_action: int,
) -> dict[str, Any]:
    """The ``schedule.json`` document: the first episode at top level, all under ``episodes``."""
    first = episodes[0].to_json()
    return {
        "schema": SCHEDULE_SCHEMA,
        "env_id": env_id,
        "env": dict(env_config),
        "scheduler": episodes[0].scheduler,
        "seed": seed,
        "steps_per_action": steps_per_action,
        "instance": first["instance"],
        "lr": first["lr"],
        "loss": first["loss"],
        "lr_bound": first["lr_bound"],
        "episodes": [e.to_json() for e in episodes],
    }


def plot_schedules(path: str | Path, by_scheduler: Mapping[str, Episode], title: str) -> Path:
    """Learning rate (with the bound) and loss per decision, one line per scheduler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for i, (name, episode) in enumerate(by_scheduler.items()):
        color = f"C{i}"
        t = np.arange(len(episode.lr))
        ax_lr.plot(t, episode.lr, color=color, label=name, lw=2 if name == "ppo" else 1.2)
        bound = np.array(episode.lr_bound, dtype=float)
        if np.isfinite(bound).any() and name == "ppo":
            ax_lr.plot(t, bound, color="k", ls="--", lw=1, label="lr_bound (ppo run)")
        ax_loss.plot(np.arange(len(episode.loss)), episode.loss, color=color, label=name)
    ax_lr.set(yscale="log", xlabel="decision", ylabel="learning rate", title="learning rate")
    ax_loss.set(yscale="log", xlabel="decision", ylabel="loss", title="loss")
    ax_lr.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
