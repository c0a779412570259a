"""lrrl's schedulers inside transformers' ``Trainer``, each through the Trainer's own mechanism.

    python -m lrrl.train env=nmf env.action_mode=bound hydra.run.dir=outputs/nmf_bound
    python -m lrrl.distill run_dir=outputs/nmf_bound
    python experiments/hf_trainer.py outputs/nmf_bound            # about a minute on 2 cores

Trains a tiny GPT-2 built from a config (no download) on bytes of the Python standard
library's source (``stdlib_text.py``) with the ``Trainer``, once per scheduler, with the same
seed, data and AdamW settings, and prints each run's final evaluation loss:

* ``greedy``: ``lr_scheduler_type="greedy"`` with the distilled ``RUN_DIR/greedylr.json``
  parameters; the Trainer steps its GreedyLR with ``eval_loss`` after every evaluation
  (``--eval-steps``), never per optimizer step.
* ``replay``: ``ScheduleReplay(RUN_DIR/schedule.json)`` passed as
  ``optimizers=(optimizer, scheduler)``; the Trainer calls ``step()`` after every optimizer
  step. The schedule is stretched to ``--steps`` and scaled so its peak is ``--lr``.
* ``policy``: the trained agent, ``PolicyScheduler(RUN_DIR)``, passed the same way and fed
  each step's training loss by :class:`lrrl.integrations.hf.TrainingLossCallback`.
* ``cosine``: ``lr_scheduler_type="cosine"``, the reference.

Learning rates move between problems: an NMF schedule's are far too large for AdamW on a
language model. ``--lr`` sets the scale: the distilled GreedyLR starts there (its clamps move
with it), the replay peaks there and the policy's stand-in clip is there (agents trained with
``env.action_mode=bound`` then choose between ``lr_floor`` and 1 times ``--lr``; ``log_lr``
agents' absolute choices are capped at it).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from stdlib_text import VOCAB_SIZE, train_eval_blocks
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from lrrl.integrations.hf import TrainingLossCallback
from lrrl.schedule import load_schedule
from lrrl.schedulers import PolicyScheduler, ScheduleReplay, load_greedylr

SCHEDULERS = ("greedy", "replay", "policy", "cosine")


def tiny_gpt2(block_size: int, seed: int) -> GPT2LMHeadModel:
    """A two-layer GPT-2 over bytes, built from a config (random weights, nothing downloaded)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=block_size,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config)


def replay_scale(schedule_json: Path, lr: float) -> float:
    """The factor that puts the recorded schedule's highest learning rate at ``lr``."""
    return lr / max(load_schedule(schedule_json).lr)


def make_trainer(
    scheduler: str,
    run_dir: Path,
    out_dir: Path,
    steps: int = 300,
    lr: float = 1e-3,
    eval_steps: int = 10,
    batch_size: int = 16,
    block_size: int = 64,
    seed: int = 0,
    greedy_params: dict[str, Any] | None = None,
    save_steps: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    """A ``Trainer`` whose learning rate comes from ``scheduler`` (one of :data:`SCHEDULERS`).

    ``greedy_params`` replaces the distilled GreedyLR parameters (after rescaling to ``lr``);
    ``save_steps`` writes a checkpoint (model, optimizer, scheduler state) that often, to
    resume from with ``trainer.train(resume_from_checkpoint=...)``.
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler={scheduler!r} is invalid: expected one of {SCHEDULERS}")
    train_set, eval_set = train_eval_blocks(block_size, steps * batch_size, 4 * batch_size, seed)
    model = tiny_gpt2(block_size, seed)
    common: dict[str, Any] = {
        "output_dir": str(out_dir),
        "max_steps": steps,
        "per_device_train_batch_size": batch_size,
        "per_device_eval_batch_size": batch_size,
        "learning_rate": lr,
        "weight_decay": 0.0,
        "logging_steps": 1,  # every step's loss and applied lr in trainer.state.log_history
        "eval_strategy": "steps",
        "eval_steps": eval_steps,
        "save_strategy": "no" if save_steps is None else "steps",
        "save_steps": save_steps or 500,
        "report_to": "none",
        "use_cpu": True,
        "seed": seed,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    extra: dict[str, Any] = {}
    if scheduler == "greedy":
        spec = load_greedylr(run_dir / "greedylr.json").rescaled(lr)
        # The Trainer builds transformers' GreedyLR from these and steps it with
        # metric_for_best_model (default: eval_loss) after each evaluation.
        args = TrainingArguments(
            **common,
            lr_scheduler_type="greedy",
            lr_scheduler_kwargs=greedy_params if greedy_params is not None else spec.params,
        )
    elif scheduler == "cosine":
        args = TrainingArguments(**common, lr_scheduler_type="cosine")
    else:
        args = TrainingArguments(**common)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        if scheduler == "replay":
            schedule = run_dir / "schedule.json"
            sched: Any = ScheduleReplay(
                optimizer, schedule, total_steps=steps, scale=replay_scale(schedule, lr)
            )
        else:
            sched = PolicyScheduler(optimizer, run_dir, total_steps=steps, reference_lr=lr)
            extra["callbacks"] = [TrainingLossCallback(sched)]
        extra["optimizers"] = (optimizer, sched)
    extra["callbacks"] = [*extra.get("callbacks", []), *callbacks]
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, **extra
    )
    # Every step is logged (logging_steps=1): keep it in trainer.state.log_history only.
    trainer.remove_callback(PrinterCallback)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a lrrl.train run dir with greedylr.json")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3, help="the learning-rate scale")
    parser.add_argument("--eval-steps", type=int, default=10, help="GreedyLR steps per eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"tiny GPT-2 on stdlib bytes, AdamW, {args.steps} steps, lr scale {args.lr:g}")
    with tempfile.TemporaryDirectory() as out:
        for name in args.schedulers:
            start = time.perf_counter()
            trainer = make_trainer(
                name,
                args.run_dir,
                Path(out) / name,
                steps=args.steps,
                lr=args.lr,
                eval_steps=args.eval_steps,
                seed=args.seed,
            )
            trainer.train()
            final = trainer.evaluate()["eval_loss"]
            lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
            print(
                f"{name:>7}: final eval loss {final:.4f}  lr {lrs[0]:.2e} -> {lrs[-1]:.2e} "
                f"(min {min(lrs):.2e}, max {max(lrs):.2e})  {time.perf_counter() - start:.1f} s"
            )
            assert math.isfinite(final)


if __name__ == "__main__":
    main()
