"""One training run of a noisy-training problem under one learning-rate scheduler.

Schedulers (:data:`SCHEDULERS`), every one run for exactly ``steps`` optimizer steps:

* ``cosine``: cosine annealing from a peak ``lr`` to ``min_ratio * lr`` over the run, after a
  linear warmup over the first ``warmup`` fraction of it (torch ``LambdaLR``).
* ``greedy_step``: :class:`lrrl.schedulers.GreedyLR` stepped with the minibatch training loss
  after every optimizer step (its authors' use).
* ``greedy_eval``: the same scheduler stepped once per evaluation with the full-batch training
  loss (how transformers' ``Trainer`` steps it, on its evaluation loss).

GreedyLR's parameters are ``lr`` (the starting rate), ``factor``, ``patience``,
``min_lr_ratio`` and ``max_lr_ratio`` (its ``min_lr``/``max_lr`` as multiples of ``lr``),
``smooth`` and ``window_size``; the rest keep GreedyLR's defaults.

The loss is evaluated on the full training data every ``eval_every`` steps, before that
step's update, and once more after the last one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from lrrl.schedulers import GreedyLR
from noisy.problems import (
    FAMILIES,
    NoiseStrengths,
    Trainee,
    build_family_optimizer,
    build_trainee,
    check_problem,
    stream,
)

SCHEDULERS = ("cosine", "greedy_step", "greedy_eval")
#: A run whose full-batch loss exceeds this multiple of its initial loss has diverged.
DIVERGENCE_RATIO = 1e3


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run: problem, scheduler and its parameters, seed, size."""

    family: str
    noise: str
    scheduler: str
    params: Mapping[str, Any]
    seed: int
    steps: int
    eval_every: int
    strengths: NoiseStrengths = field(default_factory=NoiseStrengths)

    def __post_init__(self) -> None:
        check_problem(self.family, self.noise)
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"scheduler={self.scheduler!r} is invalid: expected one of {SCHEDULERS}"
            )
        if self.eval_every < 1 or self.steps < 2 * self.eval_every:
            raise ValueError(
                f"steps={self.steps!r}, eval_every={self.eval_every!r} are invalid: expected "
                "eval_every >= 1 and steps >= 2 * eval_every"
            )
        if self.steps % self.eval_every:
            raise ValueError(
                f"steps={self.steps!r} is invalid: expected a multiple of eval_every={self.eval_every}"
            )

    @property
    def problem(self) -> str:
        return f"{self.family}/{self.noise}"

    @property
    def event_step(self) -> int | None:
        """The step at which the spike or the shift happens (on the evaluation grid)."""
        if self.noise not in ("spike", "shift"):
            return None
        at = int(self.strengths.event_at * self.steps) // self.eval_every * self.eval_every
        return max(self.eval_every, at)


@dataclass
class RunResult:
    """What one run produced: the loss at every evaluation and the lr of every step."""

    family: str
    noise: str
    scheduler: str
    params: dict[str, Any]
    seed: int
    steps: int
    eval_steps: list[int]
    loss: list[float]  # full-batch loss on the targets as the run sees them
    clean_loss: list[float]  # the same on the clean targets
    lr: list[float]  # the learning rate of each optimizer step
    optimizer_steps: int  # counted by an optimizer hook, not by the loop
    diverged: bool
    event_step: int | None
    event_loss: float | None  # spike runs: the loss right after the perturbation
    wall_s: float
    cpu_s: float  # this process's CPU time: what the run costs on one free core

    @property
    def problem(self) -> str:
        return f"{self.family}/{self.noise}"

    @property
    def final_loss(self) -> float:
        return math.inf if self.diverged else self.loss[-1]

    @property
    def clean_final_loss(self) -> float:
        return math.inf if self.diverged else self.clean_loss[-1]

    @property
    def best_loss(self) -> float:
        finite = [x for x in self.loss if math.isfinite(x)]
        return min(finite) if finite else math.inf

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite losses as null), summary numbers beside the traces."""
        out = asdict(self)
        for key in ("loss", "clean_loss"):
            out[key] = [_finite_or_none(x) for x in out[key]]
        out.update(
            problem=self.problem,
            final_loss=_finite_or_none(self.final_loss),
            best_loss=_finite_or_none(self.best_loss),
            clean_final_loss=_finite_or_none(self.clean_final_loss),
        )
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> RunResult:
        """The run back from :meth:`to_json`'s dict (JSON nulls in the traces were non-finite)."""
        names = {f.name for f in fields(cls)}
        missing = names - set(record)
        if missing:
            raise ValueError(f"run record lacks {sorted(missing)}: expected a to_json() dict")
        values = {k: record[k] for k in names}
        for key in ("loss", "clean_loss"):
            values[key] = [math.inf if x is None else float(x) for x in values[key]]
        return cls(**values)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def cosine_factor(step: int, steps: int, warmup: float, min_ratio: float) -> float:
    """The multiple of the peak lr that cosine annealing with linear warmup uses at ``step``."""
    warmup_steps = int(round(warmup * steps))
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(
    scheduler: str, params: Mapping[str, Any], optimizer: torch.optim.Optimizer, steps: int
) -> LRScheduler:
    """The scheduler named ``scheduler`` with the study's parameters (see the module doc)."""
    if scheduler == "cosine":
        warmup, min_ratio = float(params["warmup"]), float(params["min_ratio"])
        return LambdaLR(optimizer, lambda t: cosine_factor(t, steps, warmup, min_ratio))
    lr = float(params["lr"])
    return GreedyLR(
        optimizer,
        factor=float(params["factor"]),
        patience=int(params["patience"]),
        min_lr=lr * float(params["min_lr_ratio"]),
        max_lr=lr * float(params["max_lr_ratio"]),
        smooth=bool(params["smooth"]),
        window_size=int(params["window_size"]),
    )


def _perturb(trainee: Trainee, scale: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in trainee.parameters():
            rms = p.square().mean().sqrt()
            p.add_(scale * rms * torch.randn(p.shape, generator=gen))
    trainee.project()


def _diverged(loss: float, initial: float) -> bool:
    return not math.isfinite(loss) or loss > DIVERGENCE_RATIO * initial


def train(spec: RunSpec) -> RunResult:
    """Run ``spec`` and record its losses and learning rates (stops early on divergence)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    strengths = spec.strengths
    trainee = build_trainee(spec.family, spec.noise, spec.seed, strengths)
    optimizer = build_family_optimizer(spec.family, trainee, float(spec.params["lr"]))
    taken = [0]
    optimizer.register_step_post_hook(lambda *_: taken.__setitem__(0, taken[0] + 1))
    scheduler = make_scheduler(spec.scheduler, spec.params, optimizer, spec.steps)
    batches, grad_gen = stream(spec.seed, "batches"), stream(spec.seed, "gradient")
    batch_size = FAMILIES[spec.family].batch_size
    event_step = spec.event_step
    grad_scale: list[torch.Tensor] | None = None
    eval_steps: list[int] = []
    losses: list[float] = []
    clean: list[float] = []
    lrs: list[float] = []
    event_loss = None
    diverged = False

    def evaluate(step: int) -> bool:
        observed, clean_loss = trainee.losses()
        eval_steps.append(step)
        losses.append(observed)
        clean.append(clean_loss)
        return _diverged(observed, losses[0])

    for step in range(spec.steps):
        if step % spec.eval_every == 0:
            if evaluate(step):
                diverged = True
                break
            if spec.scheduler == "greedy_eval" and step > 0:
                scheduler.step(losses[-1])
        if step == event_step:
            if spec.noise == "spike":
                _perturb(trainee, strengths.spike_scale, stream(spec.seed, "spike"))
                event_loss = trainee.losses()[0]
            else:
                trainee.shift()
        index = torch.randint(trainee.n_samples, (batch_size,), generator=batches)
        loss = trainee.batch_loss(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if spec.noise == "gradient":
            if grad_scale is None:
                # The first minibatch gradient sets each tensor's noise scale for the run.
                grad_scale = [p.grad.square().mean().sqrt() for p in trainee.parameters()]
            for p, s in zip(trainee.parameters(), grad_scale, strict=True):
                p.grad.add_(strengths.gradient_std * s * torch.randn(p.shape, generator=grad_gen))
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        trainee.project()
        batch_loss = loss.item()
        if not math.isfinite(batch_loss):
            diverged = True
            break
        if spec.scheduler == "greedy_step":
            scheduler.step(batch_loss)
        elif spec.scheduler == "cosine":
            scheduler.step()
    if not diverged:
        diverged = evaluate(spec.steps)
    return RunResult(
        family=spec.family,
        noise=spec.noise,
        scheduler=spec.scheduler,
        params=dict(spec.params),
        seed=spec.seed,
        steps=spec.steps,
        eval_steps=eval_steps,
        loss=losses,
        clean_loss=clean,
        lr=lrs,
        optimizer_steps=taken[0],
        diverged=diverged,
        event_step=event_step,
        event_loss=event_loss,
        wall_s=time.perf_counter() - start,
        cpu_s=time.process_time() - start_cpu,
    )
