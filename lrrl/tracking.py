"""Experiment tracking: Weights & Biases (offline by default) or nothing.

Trackers are plain objects with ``log(metrics, step)``, ``summary(metrics)`` and
``finish()``; :class:`TrackingCallback` is the one place SB3 training reports through.
"""

from __future__ import annotations

import math
import os
from typing import Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

WANDB_MODES = ("offline", "online", "disabled")


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def summary(self, metrics: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing (``logger=none``)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One wandb run per job, with the resolved config attached.

    The ``WANDB_MODE`` environment variable, when set, wins over the configured ``mode``, so
    ``WANDB_MODE=disabled`` silences every run (as the tests do).
    """

    def __init__(
        self,
        run_dir: str,
        config: dict[str, Any],
        name: str,
        project: str = "lrrl",
        mode: str = "offline",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", mode)
        if mode not in WANDB_MODES:
            raise ValueError(f"logger.mode={mode!r} is invalid: expected one of {WANDB_MODES}")
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            tags=list(tags or []),
            name=name,
            dir=run_dir,
            mode=mode,
            config=config,
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self._run.summary[key] = value

    def finish(self) -> None:
        self._run.finish()


def make_tracker(
    logger_cfg: dict[str, Any], run_dir: str, config: dict[str, Any], name: str
) -> Tracker:
    """Build the tracker a ``conf/logger/*.yaml`` asks for."""
    kind = logger_cfg.get("name", "none")
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        options = {k: v for k, v in logger_cfg.items() if k != "name"}
        return WandbTracker(run_dir, config, name, **options)
    raise ValueError(f"logger={kind!r} is invalid: expected one of ['none', 'wandb']")


class TrackingCallback(BaseCallback):
    """Logs each finished training episode: return, final loss, learning rates, divergences."""

    def __init__(self, tracker: Tracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.episodes = 0
        self.divergences = 0
        self._lrs: dict[int, list[float]] = {}

    def _on_step(self) -> bool:
        for i, (info, done) in enumerate(
            zip(self.locals["infos"], self.locals["dones"], strict=True)
        ):
            self._lrs.setdefault(i, []).append(float(info.get("lr", math.nan)))
            if not done:
                continue
            self.episodes += 1
            self.divergences += bool(info.get("diverged", False))
            lrs = np.array(self._lrs.pop(i))
            metrics = {
                "charts/final_loss": float(info.get("loss", math.nan)),
                "charts/mean_log_lr": float(np.nanmean(np.log(lrs)))
                if np.isfinite(lrs).any()
                else math.nan,
                "charts/divergence_rate": self.divergences / self.episodes,
            }
            if "episode" in info:
                metrics["charts/episodic_return"] = float(info["episode"]["r"])
            self.tracker.log(metrics, step=self.num_timesteps)
        return True
