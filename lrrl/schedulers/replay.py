"""Replay an exported ``schedule.json`` in any PyTorch training loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from lrrl.schedule import load_schedule, stretch_log_lr


class ScheduleReplay(LRScheduler):
    """Sets the learning rates a recorded schedule used, one optimizer step per ``step()``.

    Decision ``t`` of the schedule applied ``lr[t]`` for ``steps_per_action`` steps; the
    replay does the same, so after ``k`` calls to ``step()`` the learning rate is the one the
    schedule used at optimizer step ``k`` (the last one is held past the end). With
    ``total_steps`` the per-step schedule is stretched (or shrunk) to that many steps by
    linear interpolation of the log learning rate over training progress.

    Args:
        optimizer: the wrapped optimizer; every param group gets the schedule's lr times
            its ``scale``.
        path: a ``schedule.json`` (see :mod:`lrrl.schedule`); a bad file raises ``ValueError``.
        total_steps: the length of the run to fit the schedule to; ``None`` keeps the
            recorded length (``len(lr) * steps_per_action``).
        episode: which recorded episode to replay (an index into ``episodes``); ``None`` for
            the headline one at the top level of the file.
        scale: multiplier of the recorded learning rate, one float or one per param group
            (a schedule learned on one problem rarely has the right absolute scale on another).
        last_epoch: as for any ``LRScheduler`` (resume from a checkpoint).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        path: str | Path,
        total_steps: int | None = None,
        episode: int | None = None,
        scale: float | Sequence[float] = 1.0,
        last_epoch: int = -1,
    ) -> None:
        schedule = load_schedule(path)
        if episode is None:
            chosen = schedule.episode
        else:
            n = len(schedule.episodes)
            if isinstance(episode, bool) or not isinstance(episode, int) or not 0 <= episode < n:
                raise ValueError(f"episode={episode!r} is invalid: expected an index below {n}")
            chosen = schedule.episodes[episode]
        step_lrs = chosen.step_lrs(schedule.steps_per_action)
        if total_steps is not None:
            step_lrs = stretch_log_lr(step_lrs, total_steps)
        n_groups = len(optimizer.param_groups)
        scales = list(scale) if isinstance(scale, Sequence) else [scale] * n_groups
        if len(scales) != n_groups or not all(float(s) > 0 for s in scales):
            raise ValueError(
                f"scale={scale!r} is invalid: expected a positive float or {n_groups} of them"
            )
        self.schedule = schedule
        self.lrs = [float(x) for x in step_lrs]
        self.scales = [float(s) for s in scales]
        super().__init__(optimizer, last_epoch)

    @property
    def total_steps(self) -> int:
        """Optimizer steps the replay covers."""
        return len(self.lrs)

    def _lr_at(self, step: int) -> list[float]:
        lr = self.lrs[min(max(step, 0), len(self.lrs) - 1)]
        return [lr * s for s in self.scales]

    def get_lr(self) -> list[float | Tensor]:
        """The learning rates of optimizer step ``last_epoch``."""
        return list(self._lr_at(self.last_epoch))

    def _get_closed_form_lr(self) -> list[float | Tensor]:
        return list(self._lr_at(self.last_epoch))

    def state_dict(self) -> dict[str, Any]:
        """The replay's position and per-step lrs, in types ``torch.load(weights_only=True)`` reads.

        The parsed file (``schedule``) stays out: transformers' Trainer and Lightning resume
        from checkpoints with ``weights_only=True``, which refuses arbitrary classes.
        """
        state = super().state_dict()
        state.pop("schedule", None)
        return state
