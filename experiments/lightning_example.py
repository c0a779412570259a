"""lrrl's schedulers in a ``LightningModule``: its scheduler config says how each is stepped.

    python -m lrrl.train env=nmf env.action_mode=bound hydra.run.dir=outputs/nmf_bound
    python -m lrrl.distill run_dir=outputs/nmf_bound
    python experiments/lightning_example.py outputs/nmf_bound      # about a minute on 2 cores

Trains a small byte-level GRU language model (plain torch) on the Python standard library's
source (``stdlib_text.py``) with Lightning's ``Trainer``, once per scheduler, with the same
seed, data and AdamW settings, and prints each run's final validation loss. What
``configure_optimizers`` returns for each (:func:`scheduler_config`):

* ``greedy``: ``GreedyLR(**greedylr.json params)`` with ``monitor="val_loss"``,
  ``interval="step"`` and ``frequency`` = the validation interval: Lightning validates every
  ``--eval-steps`` steps and then calls ``scheduler.step(val_loss)``, the cadence transformers'
  Trainer uses. (``frequency=1`` would step it every step with a stale validation loss.)
* ``replay``: ``ScheduleReplay(schedule.json)``, ``interval="step"``: ``step()`` after every
  optimizer step.
* ``policy``: ``PolicyScheduler(RUN_DIR)`` with ``monitor="train_loss"`` (logged every step by
  ``training_step``), ``interval="step"``: ``step(train_loss)`` after every optimizer step.
* ``cosine``: ``CosineAnnealingLR``, the reference.

Lightning hands a monitored value to ``lr_scheduler_step`` only for schedulers flagged
``"reduce_on_plateau": True``; the two loss-driven configs set it. ``--lr`` sets the
learning-rate scale as in ``hf_trainer.py``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from stdlib_text import VOCAB_SIZE, train_eval_blocks
from torch import nn
from torch.utils.data import DataLoader

from lrrl.schedule import load_schedule
from lrrl.schedulers import GreedyLR, PolicyScheduler, ScheduleReplay, load_greedylr

SCHEDULERS = ("greedy", "replay", "policy", "cosine")


def scheduler_config(
    name: str,
    optimizer: torch.optim.Optimizer,
    run_dir: Path,
    steps: int,
    lr: float,
    eval_steps: int,
    greedy_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``lr_scheduler`` entry of ``configure_optimizers`` for one of :data:`SCHEDULERS`."""
    if name == "greedy":
        spec = load_greedylr(run_dir / "greedylr.json").rescaled(lr)
        params = greedy_params if greedy_params is not None else spec.params
        return {
            "scheduler": GreedyLR(optimizer, **params),
            "interval": "step",
            "frequency": eval_steps,  # right after each validation, with its val_loss
            "monitor": "val_loss",
            "reduce_on_plateau": True,  # Lightning passes the monitored value to step()
        }
    if name == "replay":
        schedule = run_dir / "schedule.json"
        scale = lr / max(load_schedule(schedule).lr)  # the recorded peak becomes lr
        replay = ScheduleReplay(optimizer, schedule, total_steps=steps, scale=scale)
        return {"scheduler": replay, "interval": "step"}
    if name == "policy":
        policy = PolicyScheduler(optimizer, run_dir, total_steps=steps, reference_lr=lr)
        return {
            "scheduler": policy,
            "interval": "step",
            "monitor": "train_loss",
            "reduce_on_plateau": True,
        }
    if name == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return {"scheduler": cosine, "interval": "step"}
    raise ValueError(f"scheduler={name!r} is invalid: expected one of {SCHEDULERS}")


class ByteLM(L.LightningModule):
    """A GRU that predicts each byte from the ones before it, with a pluggable lr scheduler."""

    def __init__(
        self, scheduler: str, run_dir: Path, steps: int, lr: float, eval_steps: int, **options: Any
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, 64)
        self.rnn = nn.GRU(64, 128, batch_first=True)
        self.head = nn.Linear(128, VOCAB_SIZE)
        self.scheduler_args = (scheduler, run_dir, steps, lr, eval_steps)
        self.options = options

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        hidden, _ = self.rnn(self.embed(ids[:, :-1]))
        logits = self.head(hidden)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), ids[:, 1:].reshape(-1))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), on_step=False, on_epoch=True)

    def configure_optimizers(self) -> dict[str, Any]:
        name, run_dir, steps, lr, eval_steps = self.scheduler_args
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.0)
        config = scheduler_config(name, optimizer, run_dir, steps, lr, eval_steps, **self.options)
        return {"optimizer": optimizer, "lr_scheduler": config}


def loaders(
    steps: int, batch_size: int = 16, block_size: int = 64, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Training batches for exactly ``steps`` optimizer steps (one epoch), and validation ones."""
    train_set, eval_set = train_eval_blocks(block_size, steps * batch_size, 4 * batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=gen)
    return train, DataLoader(eval_set, batch_size=batch_size)


def make_trainer(steps: int, eval_steps: int, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """A quiet CPU ``Trainer``: ``steps`` optimizer steps, validation every ``eval_steps``."""
    if eval_steps < 1 or steps % eval_steps:
        raise ValueError(f"eval_steps={eval_steps!r} is invalid: expected a divisor of {steps}")
    return L.Trainer(
        max_steps=steps,
        max_epochs=1,
        val_check_interval=eval_steps,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def fit(
    scheduler: str,
    run_dir: Path,
    steps: int = 300,
    lr: float = 3e-3,
    eval_steps: int = 10,
    batch_size: int = 16,
    block_size: int = 64,
    seed: int = 0,
    callbacks: Sequence[L.Callback] = (),
    **options: Any,
) -> tuple[L.Trainer, ByteLM]:
    """Train one :class:`ByteLM` for ``steps`` optimizer steps (one epoch) and return it."""
    trainer = make_trainer(steps, eval_steps, callbacks)
    L.seed_everything(seed, verbose=False)
    train, val = loaders(steps, batch_size, block_size, seed)
    model = ByteLM(scheduler, run_dir, steps, lr, eval_steps, **options)
    trainer.fit(model, train, val)
    return trainer, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a lrrl.train run dir with greedylr.json")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3, help="the learning-rate scale")
    parser.add_argument("--eval-steps", type=int, default=10, help="steps between validations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedulers", nargs="+", default=list(SCHEDULERS), choices=SCHEDULERS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-run banner
    print(f"byte GRU on stdlib bytes, AdamW, {args.steps} steps, lr scale {args.lr:g}")
    for name in args.schedulers:
        start = time.perf_counter()
        trainer, _ = fit(name, args.run_dir, args.steps, args.lr, args.eval_steps, seed=args.seed)
        final = float(trainer.callback_metrics["val_loss"])
        print(f"{name:>7}: final val loss {final:.4f}  {time.perf_counter() - start:.1f} s")
        assert math.isfinite(final)


if __name__ == "__main__":
    main()
