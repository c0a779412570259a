"""lrrl's schedulers in transformers' ``Trainer`` apply the lrs lrrl computes, step by step.

Each test trains the tiny GPT-2 of ``experiments/hf_trainer.py`` for a few dozen steps,
records the learning rate in the optimizer right before every optimizer step (what the
step applies), and compares it with a fresh lrrl scheduler driven by the same inputs
outside the Trainer (the eval losses, the training losses, or nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hf_trainer
import pytest
import torch
from expected_lrs import greedy_lrs, policy_lrs, replay_lrs
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.optimization import GreedyLR as HFGreedyLR

from lrrl.integrations.hf import TrainingLossCallback
from lrrl.schedule import load_schedule
from lrrl.schedulers import load_greedylr

STEPS, LR = 40, 1e-3
SMALL = {"steps": STEPS, "lr": LR, "batch_size": 8, "block_size": 32}


class LrProbe(TrainerCallback):
    """Records group 0's lr right before each optimizer step: the lr that step applies."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append(float(kwargs["optimizer"].param_groups[0]["lr"]))


def _train(name: str, run_dir: Path, tmp_path: Path, **options: Any) -> tuple[Any, LrProbe]:
    torch.set_num_threads(1)
    probe = LrProbe()
    trainer = hf_trainer.make_trainer(
        name, run_dir, tmp_path, callbacks=[probe], **{**SMALL, **options}
    )
    trainer.train()
    assert len(probe.lrs) == STEPS
    # The Trainer's own log of the lr agrees with what the optimizer held.
    logged = [e["learning_rate"] for e in trainer.state.log_history if "loss" in e]
    assert logged == probe.lrs
    return trainer, probe


def test_greedy_scheduler_type_steps_on_each_eval_loss(smoke_run: Path, tmp_path: Path) -> None:
    spec = load_greedylr(smoke_run / "greedylr.json").rescaled(LR)
    params = {**spec.params, "patience": 1}  # 20 evaluations then move the lr several times
    trainer, probe = _train("greedy", smoke_run, tmp_path, eval_steps=2, greedy_params=params)
    assert isinstance(trainer.lr_scheduler, HFGreedyLR)  # the Trainer built its own GreedyLR

    eval_loss = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    assert sorted(eval_loss) == list(range(2, STEPS + 1, 2))
    # lrrl's GreedyLR, stepped after each evaluation (never between them), agrees.
    expected = greedy_lrs(spec.initial_lr, params, eval_loss, STEPS)
    assert probe.lrs == expected
    assert len(set(expected)) > 2


def test_schedule_replay_passed_as_optimizers(smoke_run: Path, tmp_path: Path) -> None:
    _, probe = _train("replay", smoke_run, tmp_path)

    schedule = load_schedule(smoke_run / "schedule.json")
    scale = LR / max(schedule.lr)
    assert probe.lrs == replay_lrs(smoke_run / "schedule.json", STEPS, scale)
    # The file's first and last decisions start and end the stretched run, at the scale asked.
    assert probe.lrs[0] == pytest.approx(schedule.lr[0] * scale, rel=1e-12)
    assert probe.lrs[-1] == pytest.approx(schedule.lr[-1] * scale, rel=1e-12)
    assert max(probe.lrs) <= LR * (1 + 1e-12) and len(set(probe.lrs)) > 1


def test_policy_scheduler_fed_each_training_loss(smoke_run: Path, tmp_path: Path) -> None:
    trainer, probe = _train("policy", smoke_run, tmp_path)

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS
    expected = policy_lrs(smoke_run, losses, LR)
    assert probe.lrs == expected
    assert len(set(expected)) > 1  # the agent reacted to the losses it was fed


def test_policy_run_resumes_from_a_trainer_checkpoint(smoke_run: Path, tmp_path: Path) -> None:
    """The Trainer reloads scheduler.pt with weights_only=True; the run continues unchanged."""
    _, whole = _train("policy", smoke_run, tmp_path / "whole", save_steps=STEPS // 2)
    checkpoint = tmp_path / "whole" / f"checkpoint-{STEPS // 2}"
    assert (checkpoint / "scheduler.pt").is_file()

    probe = LrProbe()
    resumed = hf_trainer.make_trainer(
        "policy", smoke_run, tmp_path / "resumed", callbacks=[probe], **SMALL
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert probe.lrs == whole.lrs[STEPS // 2 :]
    assert len(set(probe.lrs)) > 1


def test_training_loss_callback_needs_every_step_logged(tmp_path: Path) -> None:
    callback = TrainingLossCallback(scheduler=None)  # type: ignore[arg-type]
    args = TrainingArguments(output_dir=str(tmp_path), logging_steps=5, report_to="none")
    with pytest.raises(ValueError, match=r"logging_steps=5 is invalid: .*logging_steps=1"):
        callback.on_train_begin(args, TrainerState(), TrainerControl())


@pytest.mark.slow
def test_example_runs_all_four_schedulers(smoke_run: Path) -> None:
    done = subprocess.run(
        [sys.executable, hf_trainer.__file__, str(smoke_run), "--steps", "20"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split(":")[0].strip() for line in done.stdout.splitlines() if "eval loss" in line]
    assert lines == list(hf_trainer.SCHEDULERS)
