"""Scheduler checkpoints: state dicts that ``torch.load(weights_only=True)`` reads and resume from.

transformers' Trainer and Lightning load a checkpoint's scheduler state with
``weights_only=True``; a state holding a parsed file, an SB3 agent or a user's function
fails there (or fails to pickle at all). Each scheduler here is stepped, saved halfway,
rebuilt from its constructor arguments, restored, and must continue exactly as the
uninterrupted one.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lrrl.schedulers import GreedyLR, PolicyScheduler, ScheduleReplay

STEPS = 30
LOSSES = [2.0 * math.exp(-0.05 * t) + 0.1 * math.sin(t) for t in range(STEPS)]


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)


def _drive(scheduler: Any, optimizer: torch.optim.Optimizer, losses: list[float]) -> list[float]:
    lrs = []
    for loss in losses:
        optimizer.step()
        if isinstance(scheduler, ScheduleReplay):
            scheduler.step()
        else:
            scheduler.step(loss)
        lrs.append(float(optimizer.param_groups[0]["lr"]))
    return lrs


def _factories(run_dir: Path) -> dict[str, Callable[[torch.optim.Optimizer], Any]]:
    return {
        "greedy": lambda opt: GreedyLR(opt, patience=1, min_lr=1e-4, max_lr=0.1),
        "replay": lambda opt: ScheduleReplay(opt, run_dir / "schedule.json", total_steps=STEPS),
        # A function as the bound: the state must not try to pickle it.
        "policy": lambda opt: PolicyScheduler(
            opt, run_dir, total_steps=STEPS, steps_per_decision=3, lr_bound=lambda: 0.01
        ),
    }


@pytest.mark.parametrize("name", ["greedy", "replay", "policy"])
def test_resumes_from_a_weights_only_checkpoint(smoke_run: Path, name: str) -> None:
    make = _factories(smoke_run)[name]
    optimizer = _optimizer()
    uninterrupted = _drive(make(optimizer), optimizer, LOSSES)
    assert len(set(uninterrupted)) > 1

    optimizer = _optimizer()
    first = make(optimizer)
    before = _drive(first, optimizer, LOSSES[:16])  # mid-window for the policy (16 % 3 != 0)
    buffer = io.BytesIO()
    torch.save({"scheduler": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    optimizer = _optimizer()
    resumed = make(optimizer)
    optimizer.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    after = _drive(resumed, optimizer, LOSSES[16:])
    assert before + after == uninterrupted
