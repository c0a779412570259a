"""lrrl's schedulers in a ``LightningModule`` apply the lrs lrrl computes, step by step.

Each test trains the byte GRU of ``experiments/lightning_example.py`` for a few dozen steps,
records the learning rate right before every optimizer step and the losses Lightning saw,
and compares with a fresh lrrl scheduler driven by the same inputs (``expected_lrs``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import lightning_example
import pytest
import torch
from expected_lrs import greedy_lrs, policy_lrs, replay_lrs

from lrrl.schedule import load_schedule
from lrrl.schedulers import GreedyLR, PolicyScheduler, load_greedylr

STEPS, LR = 40, 3e-3
SMALL = {"steps": STEPS, "lr": LR, "batch_size": 8, "block_size": 32}


class Probe(L.Callback):
    """The lr each optimizer step applies, each step's training loss, each validation loss."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.val_loss: dict[int, float] = {}

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.val_loss[trainer.global_step] = float(trainer.callback_metrics["val_loss"])


def _fit(name: str, run_dir: Path, **options: Any) -> tuple[L.Trainer, Probe]:
    torch.set_num_threads(1)
    probe = Probe()
    trainer, _ = lightning_example.fit(name, run_dir, callbacks=[probe], **{**SMALL, **options})
    assert len(probe.lrs) == len(probe.losses) == STEPS
    return trainer, probe


def test_greedylr_steps_on_each_validation_loss(smoke_run: Path) -> None:
    spec = load_greedylr(smoke_run / "greedylr.json").rescaled(LR)
    params = {**spec.params, "patience": 1}  # 20 validations then move the lr several times
    trainer, probe = _fit("greedy", smoke_run, eval_steps=2, greedy_params=params)
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, GreedyLR)

    assert sorted(probe.val_loss) == list(range(2, STEPS + 1, 2))
    expected = greedy_lrs(spec.initial_lr, params, probe.val_loss, STEPS)
    assert probe.lrs == expected
    assert len(set(expected)) > 2


def test_schedule_replay_steps_every_optimizer_step(smoke_run: Path) -> None:
    _, probe = _fit("replay", smoke_run)
    scale = LR / max(load_schedule(smoke_run / "schedule.json").lr)
    assert probe.lrs == replay_lrs(smoke_run / "schedule.json", STEPS, scale)
    assert len(set(probe.lrs)) > 1


def test_policy_scheduler_gets_the_monitored_training_loss(smoke_run: Path) -> None:
    trainer, probe = _fit("policy", smoke_run)
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, PolicyScheduler)
    expected = policy_lrs(smoke_run, probe.losses, LR)
    assert probe.lrs == expected
    assert len(set(expected)) > 1  # the agent reacted to the losses it was fed


def test_validation_interval_must_divide_the_run(smoke_run: Path) -> None:
    with pytest.raises(ValueError, match=r"eval_steps=3 is invalid: expected a divisor of 40"):
        lightning_example.fit("cosine", smoke_run, eval_steps=3, **SMALL)


@pytest.mark.slow
def test_example_runs_all_four_schedulers(smoke_run: Path) -> None:
    done = subprocess.run(
        [sys.executable, lightning_example.__file__, str(smoke_run), "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split(":")[0].strip() for line in done.stdout.splitlines() if "val loss" in line]
    assert lines == list(lightning_example.SCHEDULERS)
