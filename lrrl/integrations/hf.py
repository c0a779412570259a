"""Feed transformers' ``Trainer`` training loss to a loss-driven lrrl scheduler.

The Trainer steps every scheduler but ``ReduceLROnPlateau`` and its own ``GreedyLR`` with
``step()`` and no argument after each optimizer step, so :class:`~lrrl.schedulers.PolicyScheduler`
(or :class:`~lrrl.schedulers.GreedyLR` reacting to the training loss) would never see a loss.
:class:`TrainingLossCallback` closes that gap with the Trainer's own callback mechanism::

    scheduler = PolicyScheduler(optimizer, run_dir, total_steps=args.max_steps)
    trainer = Trainer(model, args, optimizers=(optimizer, scheduler),
                      callbacks=[TrainingLossCallback(scheduler)], ...)

Needs ``pip install 'lrrl[hf]'``.
"""

from __future__ import annotations

from typing import Any, Protocol

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # an optional dependency: say which extra installs it
    raise ImportError("lrrl.integrations.hf needs transformers: pip install 'lrrl[hf]'") from None


class LossDriven(Protocol):
    """A scheduler that takes the loss of the optimizer step just taken."""

    def step(self, loss: float, /) -> None: ...


class TrainingLossCallback(TrainerCallback):
    """Calls ``scheduler.step(loss)`` with the Trainer's training loss after every optimizer step.

    The loss is the one the Trainer logs for the step (``logs["loss"]``, over all its
    gradient-accumulation micro-batches), read in ``on_log``, which the Trainer calls after
    the optimizer and its own argument-less ``scheduler.step()`` and before the next
    optimizer step; so the lr the scheduler sets applies from the next step on, as in a
    plain loop that calls ``step(loss.item())`` after ``optimizer.step()``. That needs a log
    every step: ``TrainingArguments(logging_steps=1)`` (checked at the start of training).
    The argument-less ``step()`` calls change nothing in lrrl's loss-driven schedulers.
    """

    def __init__(self, scheduler: LossDriven) -> None:
        self.scheduler = scheduler

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if args.logging_strategy != "steps" or args.logging_steps != 1:
            raise ValueError(
                f"logging_strategy={str(args.logging_strategy)!r}, "
                f"logging_steps={args.logging_steps!r} is invalid: TrainingLossCallback needs "
                "the training loss of every step (logging_strategy='steps', logging_steps=1)"
            )

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        # Evaluation and end-of-training logs carry eval_loss / train_loss, not loss.
        if logs and "loss" in logs:
            self.scheduler.step(float(logs["loss"]))
