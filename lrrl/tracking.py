"""Experiment tracking: Weights & Biases (offline by default), TensorBoard, or nothing.

Trackers are plain objects with ``log(metrics, step)``, ``summary(metrics)``,
``image(key, path)`` and ``finish()``; :class:`TrackingCallback` is the one place SB3
training reports through. :func:`make_tracker` builds the one a ``conf/logger/*.yaml`` names.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

if TYPE_CHECKING:
    from lrrl.sweeper import TrialLink

WANDB_MODES = ("offline", "online", "disabled")
#: The ``logger=`` choices (``conf/logger/<name>.yaml``).
LOGGERS = ("none", "tensorboard", "wandb")


class Tracker(Protocol):
    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def summary(self, metrics: dict[str, Any]) -> None: ...

    def image(self, key: str, path: str | Path) -> None: ...

    def finish(self) -> None: ...


def _image_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image path={str(path)!r} is invalid: expected an existing image file")
    return path


class NullTracker:
    """Tracks nothing (``logger=none``)."""

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def image(self, key: str, path: str | Path) -> None:
        pass

    def finish(self) -> None:
        pass


def sweep_group() -> str | None:
    """The sweep dir of the Hydra job running this process under ``-m``, else ``None``.

    Every job of one sweep (also across joblib/submitit workers, which share the resolved
    ``hydra.sweep.dir``) gets the same value, so it groups a sweep's runs in wandb.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return str(hydra_cfg.sweep.dir)


class WandbTracker:
    """One wandb run per job, with the resolved config attached.

    The ``WANDB_MODE`` environment variable, when set, wins over the configured ``mode``, so
    ``WANDB_MODE=disabled`` silences every run (as the tests do). ``group=None`` puts the
    jobs of one Hydra sweep in one group (:func:`sweep_group`); a single run has none.
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
        self._wandb = wandb
        self._run = wandb.init(
            project=project,
            entity=entity,
            group=group if group is not None else sweep_group(),
            tags=list(tags or []),
            name=name,
            dir=run_dir,
            mode=mode,  # type: ignore[arg-type]  # checked against WANDB_MODES above
            config=config,
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self._run.summary[key] = value

    def image(self, key: str, path: str | Path) -> None:
        """Log a PNG (a plot the run wrote) under ``key``, at the current step."""
        self._run.log({key: self._wandb.Image(str(_image_file(path)))})

    def finish(self) -> None:
        self._run.finish()


class TensorBoardTracker:
    """TensorBoard event files in ``RUN_DIR/<subdir>`` (``logger=tensorboard``), no wandb needed.

    Metrics are scalars; a ``log`` without ``step`` continues one step after the last, as
    wandb's own counter does. The config is written once as text (``config``), ``summary``
    values as scalars at the last step, images as RGB(A) images. View with
    ``tensorboard --logdir RUN_DIR`` (or the sweep dir, to see every job of a sweep).
    """

    def __init__(
        self, run_dir: str, config: dict[str, Any], name: str, subdir: str = "tensorboard"
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError(
                "logger=tensorboard needs the tensorboard package: pip install 'lrrl[tensorboard]'"
            ) from None
        self.log_dir = Path(run_dir) / subdir
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        self._step = 0
        # Markdown code block: TensorBoard's text plugin renders the JSON as written.
        text = json.dumps({"name": name, "config": config}, indent=2, default=str)
        self._writer.add_text("config", f"```\n{text}\n```", global_step=0)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        step = self._step if step is None else int(step)
        for key, value in metrics.items():
            self._writer.add_scalar(key, _number(key, value), global_step=step)
        self._step = step + 1

    def summary(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, _number(key, value), global_step=self._step)

    def image(self, key: str, path: str | Path) -> None:
        """Log a PNG (a plot the run wrote) under ``key``, at the current step."""
        import matplotlib.image

        pixels = matplotlib.image.imread(_image_file(path))  # float in [0, 1], H x W x 3 or 4
        self._writer.add_image(key, pixels, global_step=self._step, dataformats="HWC")

    def finish(self) -> None:
        self._writer.close()


def _number(key: str, value: Any) -> float:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise ValueError(f"metric {key}={value!r} is invalid: TensorBoard logs numbers only")


def make_tracker(
    logger_cfg: dict[str, Any], run_dir: str, config: dict[str, Any], name: str
) -> Tracker:
    """Build the tracker a ``conf/logger/*.yaml`` asks for."""
    kind = logger_cfg.get("name", "none")
    options = {k: v for k, v in logger_cfg.items() if k != "name"}
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(run_dir, config, name, **options)
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir, config, name, **options)
    raise ValueError(f"logger={kind!r} is invalid: expected one of {list(LOGGERS)}")


class TrialReporter:
    """A search trial's progress, reported to its optuna study (see ``lrrl.sweeper``, Pruning).

    Every ``report_every`` env steps it reports the mean negated return of the training
    episodes that ended since the last report, at step ``k * report_every``, so trials with
    different rollout sizes report at the same steps; it raises ``optuna.TrialPruned`` when
    the study's pruner says so.
    """

    def __init__(self, link: TrialLink) -> None:
        self.link = link
        self.trial = link.open()
        self.next_step = link.report_every
        self._returns: list[float] = []

    def episode(self, episode_return: float) -> None:
        self._returns.append(episode_return)

    def step(self, num_timesteps: int) -> None:
        import optuna

        if num_timesteps < self.next_step:
            return
        step = num_timesteps // self.link.report_every * self.link.report_every
        self.next_step = step + self.link.report_every
        finite = [r for r in self._returns if math.isfinite(r)]
        self._returns = []
        if not finite:
            return
        value = -float(np.mean(finite))
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"at step {step}: mean -return {value:.4g}")


class TrackingCallback(BaseCallback):
    """Logs each finished training episode: return, final loss, learning rates, divergences.

    In a search trial (``reporter``) each episode's return also goes to the trial's study.
    """

    def __init__(self, tracker: Tracker, reporter: TrialReporter | None = None) -> None:
        super().__init__()
        self.tracker = tracker
        self.reporter = reporter
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
                if self.reporter is not None:
                    self.reporter.episode(metrics["charts/episodic_return"])
            self.tracker.log(metrics, step=self.num_timesteps)
        if self.reporter is not None:
            self.reporter.step(self.num_timesteps)
        return True
