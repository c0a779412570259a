"""GreedyLR: a loss-reactive learning-rate scheduler, as a PyTorch ``LRScheduler``.

GreedyLR raises the learning rate (divides it by ``factor``) after more than
``patience`` consecutive improvements of the metric and lowers it (multiplies by
``factor``) after more than ``patience`` consecutive non-improvements, within
``[min_lr, max_lr]``. After ``reset_start`` reductions attempted while every group
already sits at its ``min_lr``, it restarts from the initial learning rates.

For the same keyword arguments and metric sequence, :class:`GreedyLR` produces the
same learning rates as the GreedyLR scheduler of Hugging Face transformers (5.x):
the parameter names, defaults and the order of the comparisons are the same, and
the compatibility test in ``tests/test_greedylr.py`` checks it on random inputs.

:func:`greedylr_reference` is a plain single-group implementation that reads top to
bottom; :func:`replay_greedylr` replays one metric sequence into many parameter sets at
once (numpy, vectorised over rows), which is what the distillation fitter
(``lrrl.agents.greedylr_fit``) searches with. Tests check all three agree step by step.

:func:`load_greedylr` reads the ``greedylr.json`` that ``python -m lrrl.distill`` writes.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, SupportsFloat

import numpy as np
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "GREEDYLR_DEFAULTS",
    "GREEDYLR_SCHEMA",
    "DistilledGreedyLR",
    "GreedyLR",
    "greedylr_reference",
    "load_greedylr",
    "replay_greedylr",
]

#: Keyword arguments of :class:`GreedyLR` and their defaults (those of transformers).
GREEDYLR_DEFAULTS: dict[str, Any] = {
    "mode": "min",
    "factor": 0.95,
    "patience": 10,
    "threshold": 1e-6,
    "threshold_mode": "abs",
    "cooldown": 0,
    "warmup": 0,
    "min_lr": 1e-3,
    "max_lr": 1.0,
    "eps": 1e-8,
    "verbose": False,
    "smooth": False,
    "window_size": 50,
    "reset_start": 500,
}


def _check_args(
    mode: str,
    factor: float,
    patience: int,
    threshold_mode: str,
    cooldown: int,
    warmup: int,
    window_size: int,
    reset_start: int,
) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
    if not 0.0 < factor < 1.0:
        raise ValueError(f"factor must lie in (0, 1), got {factor!r}")
    for name, value in (("patience", patience), ("cooldown", cooldown), ("warmup", warmup)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if window_size < 1:
        raise ValueError(f"window_size must be >= 1, got {window_size!r}")
    if reset_start < 1:
        raise ValueError(f"reset_start must be >= 1, got {reset_start!r}")


def _per_group(value: float | Sequence[float], n_groups: int, name: str) -> list[float]:
    if isinstance(value, Sequence):
        if len(value) != n_groups:
            raise ValueError(f"expected {n_groups} {name}s (one per param group), got {len(value)}")
        return [float(v) for v in value]
    return [float(value)] * n_groups


def _is_better(
    current: float, best: float, mode: str, threshold: float, threshold_mode: str
) -> bool:
    # The exact expressions matter: replays compare bit for bit with transformers.
    if mode == "min":
        if threshold_mode == "rel":
            return current < best * (1.0 - threshold)
        return current < best - threshold
    if threshold_mode == "rel":
        return current > best * (1.0 + threshold)
    return current > best + threshold


class GreedyLR(LRScheduler):
    """Loss-reactive scheduler: raise the lr while the metric improves, lower it on plateaus.

    Call ``step(metric)`` once per evaluation (an epoch, or in lrrl once per decision)
    with the metric observed *after* training at the current learning rate.

    Args:
        optimizer: the wrapped optimizer; its current ``lr`` per group is the start
            (and the value restored by a reset).
        mode: ``"min"`` (the metric should fall, e.g. a loss) or ``"max"``.
        factor: in (0, 1); the lr is multiplied by it on a plateau, divided by it on
            improvement.
        patience: the lr changes once the run of improving (or non-improving) steps is
            longer than ``patience``.
        threshold: how much better than the best so far a metric must be to count.
        threshold_mode: ``"abs"`` (best - threshold) or ``"rel"`` (best * (1 - threshold)).
        cooldown: steps to ignore the metric after a reduction.
        warmup: steps to ignore the metric after an increase.
        min_lr: lower bound, one float or one per param group.
        max_lr: upper bound, one float or one per param group.
        eps: a change smaller than this is not applied.
        verbose: print each change.
        smooth: feed the metric through a rolling mean of ``window_size`` values.
        window_size: length of that rolling mean.
        reset_start: number of reductions attempted while all groups sit at ``min_lr``
            after which the scheduler restarts from the initial learning rates.

    Use inside :class:`~torch.optim.lr_scheduler.SequentialLR` or
    :class:`~torch.optim.lr_scheduler.ChainedScheduler`: those call ``step()`` without a
    metric, so hand the metric over first with :meth:`observe`; a ``step()`` with no
    metric and none observed leaves the learning rates and counters as they are.
    GreedyLR acts on the current ``lr`` of each group (it is chainable), so in a
    ``ChainedScheduler`` it composes with multiplicative schedulers.

    ``state_dict`` holds the scheduler's state (not the optimizer's); ``load_state_dict``
    restores it and, as transformers' GreedyLR does, puts the saved learning rates back into
    the optimizer's groups.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        mode: str = "min",
        factor: float = 0.95,
        patience: int = 10,
        threshold: float = 1e-6,
        threshold_mode: str = "abs",
        cooldown: int = 0,
        warmup: int = 0,
        min_lr: float | Sequence[float] = 1e-3,
        max_lr: float | Sequence[float] = 1.0,
        eps: float = 1e-8,
        verbose: bool = False,
        smooth: bool = False,
        window_size: int = 50,
        reset_start: int = 500,
    ) -> None:
        _check_args(
            mode, factor, patience, threshold_mode, cooldown, warmup, window_size, reset_start
        )
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        n_groups = len(optimizer.param_groups)
        self.min_lrs = _per_group(min_lr, n_groups, "min_lr")
        self.max_lrs = _per_group(max_lr, n_groups, "max_lr")
        for i, (lo, hi) in enumerate(zip(self.min_lrs, self.max_lrs, strict=True)):
            if not 0.0 <= lo <= hi:
                raise ValueError(f"param group {i}: need 0 <= min_lr <= max_lr, got {lo!r}, {hi!r}")
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.warmup = int(warmup)
        self.eps = float(eps)
        self.verbose = bool(verbose)
        self.smooth = bool(smooth)
        self.window_size = int(window_size)
        self.reset_start = int(reset_start)
        self.reset_start_original = int(reset_start)
        self._init_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self._pending_metric: float | None = None
        self._clear_state()
        # Sets ``initial_lr``/``base_lrs`` for composite schedulers and takes the
        # initial metric-less step, which changes nothing (last_epoch becomes 0).
        super().__init__(optimizer)

    def _clear_state(self) -> None:
        self.best = float("inf") if self.mode == "min" else float("-inf")
        self.num_bad_epochs = 0
        self.num_good_epochs = 0
        self.cooldown_counter = 0
        self.warmup_counter = 0
        self.reset_start = self.reset_start_original
        self._window: list[float] = []
        self._window_sum = 0.0

    def observe(self, metrics: SupportsFloat) -> None:
        """Hold a metric for the next ``step()`` called without one (composite schedulers)."""
        self._pending_metric = float(metrics)

    def step(self, metrics: SupportsFloat | None = None, epoch: int | None = None) -> None:  # type: ignore[override]
        """Update the learning rates from the metric observed after the current lr."""
        self._step_count = getattr(self, "_step_count", 0) + 1
        if metrics is None:
            metrics, self._pending_metric = self._pending_metric, None
        self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
        if metrics is not None:
            self._update(float(metrics))
        self._last_lr = self.get_lr()

    def _update(self, current: float) -> None:
        if self.smooth:
            current = self._smoothed(current)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
            self.num_good_epochs = 0
            return
        if self.warmup_counter > 0:
            self.warmup_counter -= 1
            self.num_bad_epochs = 0
            self.num_good_epochs = 0
            return
        if _is_better(current, self.best, self.mode, self.threshold, self.threshold_mode):
            self.best = current
            self.num_bad_epochs = 0
            self.num_good_epochs += 1
        else:
            self.num_bad_epochs += 1
            self.num_good_epochs = 0
        if self.num_good_epochs > self.patience:
            self._increase_lr()
            self.warmup_counter = self.warmup
            self.num_good_epochs = 0
        elif self.num_bad_epochs > self.patience:
            self._reduce_lr()
            # Set after a possible reset on purpose: a reset is followed by the cooldown.
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0

    def _smoothed(self, value: float) -> float:
        # Running sum updated in this order so the result matches transformers bit for bit.
        self._window.append(value)
        self._window_sum += value
        if len(self._window) > self.window_size:
            self._window_sum -= self._window.pop(0)
        return self._window_sum / len(self._window)

    def _set_lr(self, i: int, lr: float) -> None:
        group = self.optimizer.param_groups[i]
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr

    def _reduce_lr(self) -> None:
        all_at_min = True
        for i, group in enumerate(self.optimizer.param_groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                self._set_lr(i, new_lr)
                if self.verbose:
                    print(f"GreedyLR step {self.last_epoch}: group {i} lr lowered to {new_lr:.4e}")
            if float(group["lr"]) > self.min_lrs[i]:
                all_at_min = False
        if all_at_min:
            self.reset_start -= 1
            if self.reset_start <= 0:
                self._reset()

    def _increase_lr(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            old_lr = float(group["lr"])
            new_lr = min(old_lr / self.factor, self.max_lrs[i])
            if new_lr - old_lr > self.eps:
                self._set_lr(i, new_lr)
                if self.verbose:
                    print(f"GreedyLR step {self.last_epoch}: group {i} lr raised to {new_lr:.4e}")
        self.reset_start = self.reset_start_original

    def _reset(self) -> None:
        for i, lr in enumerate(self._init_lrs):
            self._set_lr(i, lr)
        self._clear_state()
        if self.verbose:
            print(f"GreedyLR step {self.last_epoch}: restarted from the initial learning rates")

    def get_lr(self) -> list[float | Tensor]:
        """The current learning rates (GreedyLR changes them in ``step`` only)."""
        return [
            g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"]
            for g in self.optimizer.param_groups
        ]

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state (not the optimizer's), safe to serialise with ``torch.save``."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state returned by :meth:`state_dict`, learning rates included.

        Like transformers' GreedyLR (and unlike most PyTorch schedulers) this also sets each
        group's ``lr`` to the saved one, so a restored scheduler continues where it stopped
        even on a freshly built optimizer.
        """
        self.__dict__.update(copy.deepcopy(state_dict))
        for i, lr in enumerate(self._last_lr):
            self._set_lr(i, float(lr))


#: ``schema`` of the ``greedylr.json`` files ``python -m lrrl.distill`` writes.
GREEDYLR_SCHEMA = "lrrl.greedylr/v1"


@dataclass(frozen=True)
class DistilledGreedyLR:
    """How to run a distilled GreedyLR (a ``greedylr.json``) in another training loop.

    Attributes:
        params: keyword arguments for :class:`GreedyLR` and for transformers'
            ``get_scheduler("greedy", ..., scheduler_specific_kwargs=params)`` /
            ``TrainingArguments(lr_scheduler_type="greedy", lr_scheduler_kwargs=params)``.
        initial_lr: the optimizer's starting learning rate (not a scheduler argument).
        steps_per_action: optimizer steps per ``step(metric)`` in the env it was fitted in.
    """

    params: dict[str, Any]
    initial_lr: float
    steps_per_action: int

    def rescaled(self, lr: float) -> DistilledGreedyLR:
        """The same schedule started at ``lr``: initial_lr, min_lr and max_lr x lr / initial_lr.

        GreedyLR only multiplies and divides the lr, so its path is scale-free but for the
        clamps; moving them with the start keeps the distilled shape on a model whose good
        learning rates differ from the env's (an NMF schedule's lrs are far too large for AdamW).
        """
        if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
            raise ValueError(f"lr={lr!r} is invalid: expected a positive finite float")
        ratio = float(lr) / self.initial_lr
        params = dict(self.params)
        for key in ("min_lr", "max_lr"):
            if key in params:
                value = params[key]
                params[key] = (
                    [float(v) * ratio for v in value]
                    if isinstance(value, (list, tuple))
                    else float(value) * ratio
                )
        return replace(self, params=params, initial_lr=float(lr))


def load_greedylr(path: str | Path) -> DistilledGreedyLR:
    """Read and check a ``greedylr.json``; anything wrong is one ``ValueError`` naming the file."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read a greedylr.json: {err}") from None
    if not isinstance(spec, dict) or spec.get("schema") != GREEDYLR_SCHEMA:
        found = spec.get("schema") if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"{path}: schema={found!r} is invalid: expected {GREEDYLR_SCHEMA!r}")
    params, initial_lr, steps = (
        spec.get("params"),
        spec.get("initial_lr"),
        spec.get("steps_per_action"),
    )
    if not isinstance(params, dict) or not set(params) <= set(GREEDYLR_DEFAULTS):
        raise ValueError(
            f"{path}: params={params!r} is invalid: expected GreedyLR keyword arguments "
            f"(names from {sorted(GREEDYLR_DEFAULTS)})"
        )
    if isinstance(initial_lr, bool) or not (
        isinstance(initial_lr, (int, float)) and 0 < initial_lr < math.inf
    ):
        raise ValueError(f"{path}: initial_lr={initial_lr!r} is invalid: expected a positive float")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{path}: steps_per_action={steps!r} is invalid: expected an integer >= 1")
    return DistilledGreedyLR(dict(params), float(initial_lr), steps)


def greedylr_reference(
    metrics: Iterable[float],
    lr: float,
    *,
    mode: str = "min",
    factor: float = 0.95,
    patience: int = 10,
    threshold: float = 1e-6,
    threshold_mode: str = "abs",
    cooldown: int = 0,
    warmup: int = 0,
    min_lr: float = 1e-3,
    max_lr: float = 1.0,
    eps: float = 1e-8,
    smooth: bool = False,
    window_size: int = 50,
    reset_start: int = 500,
) -> list[float]:
    """Reference GreedyLR for one param group: the lr after each ``step(metric)``.

    Plain Python with every rule spelled out in order, to check the faster
    implementations against. ``lr`` is the starting learning rate; entry ``s`` of the
    result is the learning rate in effect after the ``s``-th metric.
    """
    best = float("inf") if mode == "min" else float("-inf")
    num_bad = num_good = cooldown_counter = warmup_counter = 0
    resets_left = reset_start
    window: list[float] = []
    window_sum = 0.0
    initial_lr = lr
    out = []
    for metric in metrics:
        current = float(metric)
        # 1. optional rolling mean of the last window_size metrics
        if smooth:
            window.append(current)
            window_sum += current
            if len(window) > window_size:
                window_sum -= window.pop(0)
            current = window_sum / len(window)
        # 2. after a change, ignore the metric for a while
        if cooldown_counter > 0:
            cooldown_counter -= 1
            num_bad = num_good = 0
        elif warmup_counter > 0:
            warmup_counter -= 1
            num_bad = num_good = 0
        else:
            # 3. count consecutive improvements / non-improvements
            if _is_better(current, best, mode, threshold, threshold_mode):
                best = current
                num_bad = 0
                num_good += 1
            else:
                num_bad += 1
                num_good = 0
            # 4. raise the lr after a long enough run of improvements ...
            if num_good > patience:
                new_lr = min(lr / factor, max_lr)
                if new_lr - lr > eps:
                    lr = new_lr
                resets_left = reset_start
                warmup_counter = warmup
                num_good = 0
            # 5. ... lower it after a long enough plateau, restart when stuck at min_lr
            elif num_bad > patience:
                new_lr = max(lr * factor, min_lr)
                if lr - new_lr > eps:
                    lr = new_lr
                if not lr > min_lr:
                    resets_left -= 1
                    if resets_left <= 0:
                        lr = initial_lr
                        best = float("inf") if mode == "min" else float("-inf")
                        num_good = warmup_counter = 0
                        resets_left = reset_start
                        window, window_sum = [], 0.0
                cooldown_counter = cooldown
                num_bad = 0
        out.append(lr)
    return out


def replay_greedylr(metrics: Any, initial_lr: Any, **params: Any) -> np.ndarray:
    """GreedyLR's learning rate after each ``step(metric)``, for many parameter sets at once.

    Args:
        metrics: shape ``(S,)`` (one sequence for every row) or ``(R, S)`` (one per row).
        initial_lr: the starting learning rate, a scalar or shape ``(R,)``.
        **params: any GreedyLR keyword argument (``mode``, ``factor``, ``patience``,
            ``threshold``, ``threshold_mode``, ``cooldown``, ``warmup``, ``min_lr``,
            ``max_lr``, ``eps``, ``smooth``, ``window_size``, ``reset_start``) as a scalar
            or an array of shape ``(R,)``; missing ones take GreedyLR's defaults.
            ``mode``/``threshold_mode`` take strings or string arrays.

    Returns:
        float64 array ``(R, S)``: entry ``[r, s]`` is the learning rate of row ``r`` after
        its ``s``-th metric. It equals, bit for bit, a single-group
        :class:`lrrl.schedulers.GreedyLR` driven by the same metrics (the loop runs over
        time once, every operation vectorised over rows).
    """
    unknown = set(params) - set(GREEDYLR_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown GreedyLR parameters {sorted(unknown)}")
    p = {**GREEDYLR_DEFAULTS, **params}
    m = np.asarray(metrics, dtype=np.float64)
    if m.ndim not in (1, 2):
        raise ValueError(f"metrics must have shape (S,) or (R, S), got {m.shape}")
    m = np.atleast_2d(m)
    arrays = {
        "initial_lr": np.asarray(initial_lr, dtype=np.float64),
        "is_min": np.asarray(p["mode"]) == "min",
        "rel": np.asarray(p["threshold_mode"]) == "rel",
        "smooth": np.asarray(p["smooth"], dtype=bool),
        **{
            k: np.asarray(p[k], dtype=np.float64)
            for k in ("factor", "threshold", "min_lr", "max_lr", "eps")
        },
        **{
            k: np.asarray(p[k], dtype=np.int64)
            for k in ("patience", "cooldown", "warmup", "window_size", "reset_start")
        },
    }
    for name in ("mode", "threshold_mode"):
        allowed = ("min", "max") if name == "mode" else ("abs", "rel")
        bad = set(np.unique(np.asarray(p[name])).tolist()) - set(allowed)
        if bad:
            raise ValueError(f"{name} must be one of {allowed}, got {sorted(bad)}")
    n_rows = np.broadcast_shapes(m.shape[:1], *(a.shape for a in arrays.values()))[0]
    a = {k: np.broadcast_to(v, (n_rows,)) for k, v in arrays.items()}
    m = np.broadcast_to(m, (n_rows, m.shape[1]))
    rows = np.arange(n_rows)
    n_steps = m.shape[1]

    worst = np.where(a["is_min"], np.inf, -np.inf)
    lr = a["initial_lr"].copy()
    best = worst.copy()
    num_bad = np.zeros(n_rows, np.int64)
    num_good = np.zeros(n_rows, np.int64)
    cooldown_counter = np.zeros(n_rows, np.int64)
    warmup_counter = np.zeros(n_rows, np.int64)
    resets_left = a["reset_start"].copy()
    window_start = np.zeros(n_rows, np.int64)  # first metric in the rolling window
    window_sum = np.zeros(n_rows)
    out = np.empty((n_rows, n_steps))
    with np.errstate(invalid="ignore", over="ignore"):
        for s in range(n_steps):
            current = m[:, s]
            # rolling mean: add, then drop the value that fell out (same order as GreedyLR)
            count = s - window_start + 1
            new_sum = window_sum + current
            drops = count > a["window_size"]
            dropped = m[rows, np.maximum(s - a["window_size"], 0)]
            new_sum = np.where(drops, new_sum - dropped, new_sum)
            window_sum = np.where(a["smooth"], new_sum, window_sum)
            current = np.where(a["smooth"], new_sum / np.minimum(count, a["window_size"]), current)

            in_cooldown = cooldown_counter > 0
            in_warmup = ~in_cooldown & (warmup_counter > 0)
            active = ~in_cooldown & ~in_warmup
            cooldown_counter = np.where(in_cooldown, cooldown_counter - 1, cooldown_counter)
            warmup_counter = np.where(in_warmup, warmup_counter - 1, warmup_counter)

            thr = a["threshold"]
            better = np.where(
                a["is_min"],
                np.where(a["rel"], current < best * (1.0 - thr), current < best - thr),
                np.where(a["rel"], current > best * (1.0 + thr), current > best + thr),
            )
            better &= active
            best = np.where(better, current, best)
            num_bad = np.where(active & ~better, num_bad + 1, 0)
            num_good = np.where(better, num_good + 1, 0)

            raise_lr = num_good > a["patience"]
            lower_lr = ~raise_lr & (num_bad > a["patience"])

            up = np.minimum(lr / a["factor"], a["max_lr"])
            lr = np.where(raise_lr & (up - lr > a["eps"]), up, lr)
            resets_left = np.where(raise_lr, a["reset_start"], resets_left)
            warmup_counter = np.where(raise_lr, a["warmup"], warmup_counter)
            num_good = np.where(raise_lr, 0, num_good)

            down = np.maximum(lr * a["factor"], a["min_lr"])
            lr = np.where(lower_lr & (lr - down > a["eps"]), down, lr)
            at_min = lower_lr & ~(lr > a["min_lr"])
            resets_left = np.where(at_min, resets_left - 1, resets_left)
            reset = at_min & (resets_left <= 0)
            lr = np.where(reset, a["initial_lr"], lr)
            best = np.where(reset, worst, best)
            num_good = np.where(reset, 0, num_good)
            warmup_counter = np.where(reset, 0, warmup_counter)
            resets_left = np.where(reset, a["reset_start"], resets_left)
            window_start = np.where(reset, s + 1, window_start)
            window_sum = np.where(reset, 0.0, window_sum)
            cooldown_counter = np.where(lower_lr, a["cooldown"], cooldown_counter)
            num_bad = np.where(lower_lr, 0, num_bad)

            out[:, s] = lr
    return out
