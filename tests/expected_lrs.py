"""The learning rates lrrl's schedulers set for given inputs, computed outside any trainer.

Trainer tests (transformers, Lightning) compare what the trainer applied before each
optimizer step with these: a fresh scheduler on a one-parameter optimizer, driven by the
inputs the trainer saw (its evaluation losses, its training losses, or nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lrrl.schedulers import GreedyLR, PolicyScheduler, ScheduleReplay


def _run(optimizer: torch.optim.Optimizer, steps: int, after_step: Any) -> list[float]:
    lrs = []
    for step in range(1, steps + 1):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()  # no gradient: changes nothing, keeps torch's step-order check quiet
        after_step(step)
    return lrs


def _optimizer(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def greedy_lrs(
    initial_lr: float, params: Mapping[str, Any], eval_loss: Mapping[int, float], steps: int
) -> list[float]:
    """GreedyLR stepped with ``eval_loss[s]`` right after optimizer step ``s`` (1-based)."""
    optimizer = _optimizer(initial_lr)
    scheduler = GreedyLR(optimizer, **params)
    return _run(
        optimizer, steps, lambda s: scheduler.step(eval_loss[s]) if s in eval_loss else None
    )


def replay_lrs(schedule: Path, steps: int, scale: float) -> list[float]:
    """ScheduleReplay stretched to ``steps``, stepped after every optimizer step."""
    optimizer = _optimizer(1.0)
    scheduler = ScheduleReplay(optimizer, schedule, total_steps=steps, scale=scale)
    return _run(optimizer, steps, lambda s: scheduler.step())


def policy_lrs(run_dir: Path, losses: Sequence[float], reference_lr: float) -> list[float]:
    """PolicyScheduler fed ``losses[s - 1]`` after optimizer step ``s``."""
    optimizer = _optimizer(reference_lr)
    scheduler = PolicyScheduler(
        optimizer, run_dir, total_steps=len(losses), reference_lr=reference_lr
    )
    return _run(optimizer, len(losses), lambda s: scheduler.step(losses[s - 1]))
