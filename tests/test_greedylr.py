"""GreedyLR: parity with transformers, reference vs vectorised replay, torch composition."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import ChainedScheduler, ExponentialLR, LinearLR, SequentialLR

from lrrl.schedulers import GREEDYLR_DEFAULTS, GreedyLR, greedylr_reference, replay_greedylr

transformers_optimization = pytest.importorskip("transformers.optimization")
HFGreedyLR = transformers_optimization.GreedyLR


def _optimizer(lr: float | list[float]) -> torch.optim.Optimizer:
    lrs = lr if isinstance(lr, list) else [lr]
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": x} for x in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _random_kwargs(rng: random.Random) -> dict[str, Any]:
    min_lr = 10 ** rng.uniform(-4, -1)
    return {
        "mode": rng.choice(["min", "max"]),
        "factor": rng.uniform(0.3, 0.99),
        "patience": rng.randint(0, 6),
        "threshold": rng.choice([0.0, 1e-6, 1e-3, 0.05]),
        "threshold_mode": rng.choice(["abs", "rel"]),
        "cooldown": rng.randint(0, 3),
        "warmup": rng.randint(0, 3),
        "min_lr": min_lr,
        "max_lr": min_lr * 10 ** rng.uniform(0.5, 3),
        "eps": rng.choice([1e-8, 1e-12]),
        "smooth": rng.random() < 0.5,
        "window_size": rng.randint(1, 8),
        "reset_start": rng.randint(1, 6),
    }


def _random_metrics(rng: random.Random, n: int) -> list[float]:
    """Improving stretches, plateaus and jumps, so raises, cuts and restarts all happen."""
    value, out = 1.0, []
    for _ in range(n):
        regime = rng.random()
        if regime < 0.45:
            value *= rng.uniform(0.8, 1.0)
        elif regime < 0.8:
            value *= rng.uniform(0.999, 1.001)
        else:
            value *= rng.uniform(1.0, 1.5)
        out.append(value)
    return out


def _drive(scheduler: Any, optimizer: torch.optim.Optimizer, metrics: list[float]) -> list[list]:
    out = []
    for m in metrics:
        scheduler.step(m)
        out.append([float(g["lr"]) for g in optimizer.param_groups])
    return out


@pytest.mark.parametrize("case", range(200))
def test_same_lrs_as_transformers(case: int) -> None:
    rng = random.Random(case)
    kwargs = _random_kwargs(rng)
    metrics = _random_metrics(rng, 120)
    lr0 = 10 ** rng.uniform(-3, 0)
    ours_opt, theirs_opt = _optimizer(lr0), _optimizer(lr0)
    ours, theirs = GreedyLR(ours_opt, **kwargs), HFGreedyLR(theirs_opt, **kwargs)
    for m in metrics:
        ours.step(m)
        theirs.step(m)
        assert ours.get_last_lr() == theirs.get_last_lr()
        assert ours.best == theirs.best and ours.last_epoch == theirs.last_epoch


@pytest.mark.parametrize("case", range(40))
def test_state_dict_round_trip_mid_sequence(case: int) -> None:
    rng = random.Random(1000 + case)
    kwargs = _random_kwargs(rng)
    metrics = _random_metrics(rng, 80)
    cut = rng.randint(1, 79)
    theirs_opt = _optimizer(0.1)
    theirs = HFGreedyLR(theirs_opt, **kwargs)
    expected = _drive(theirs, theirs_opt, metrics)

    first_opt = _optimizer(0.1)
    first = GreedyLR(first_opt, **kwargs)
    head = _drive(first, first_opt, metrics[:cut])
    state = first.state_dict()
    # A fresh optimizer and scheduler continue exactly where the first stopped.
    second_opt = _optimizer(0.1)
    second = GreedyLR(second_opt, **kwargs)
    second.load_state_dict(state)
    assert "optimizer" not in state
    first.step(-1e9)  # the loaded state does not alias the source's
    tail = _drive(second, second_opt, metrics[cut:])
    assert head + tail == expected


@pytest.mark.parametrize("case", range(60))
def test_reference_and_vectorised_agree_step_by_step(case: int) -> None:
    rng = random.Random(5000 + case)
    kwargs = _random_kwargs(rng)
    metrics = _random_metrics(rng, 100)
    lr0 = 10 ** rng.uniform(-3, 0)
    opt = _optimizer(lr0)
    torch_lrs = [lr[0] for lr in _drive(GreedyLR(opt, **kwargs), opt, metrics)]
    reference = greedylr_reference(metrics, lr0, **kwargs)
    vectorised = replay_greedylr(metrics, lr0, **kwargs)[0].tolist()
    assert reference == torch_lrs
    assert vectorised == torch_lrs


def test_vectorised_rows_are_independent_parameter_sets() -> None:
    rng = random.Random(7)
    sets = [_random_kwargs(rng) for _ in range(32)]
    metrics = _random_metrics(rng, 90)
    lr0 = [10 ** rng.uniform(-3, 0) for _ in sets]
    batched = {k: np.array([s[k] for s in sets]) for k in sets[0]}
    out = replay_greedylr(metrics, np.array(lr0), **batched)
    assert out.shape == (32, 90)
    for row, (kwargs, lr) in enumerate(zip(sets, lr0, strict=True)):
        assert out[row].tolist() == greedylr_reference(metrics, lr, **kwargs)
    # One metric sequence per row as well.
    per_row = np.array([_random_metrics(rng, 30) for _ in sets])
    out = replay_greedylr(per_row, np.array(lr0), **batched)
    for row, (kwargs, lr) in enumerate(zip(sets, lr0, strict=True)):
        assert out[row].tolist() == greedylr_reference(per_row[row], lr, **kwargs)


def test_per_group_bounds_match_transformers() -> None:
    rng = random.Random(11)
    for _ in range(20):
        kwargs = _random_kwargs(rng)
        kwargs["min_lr"] = [1e-4, 1e-3, 3e-2]
        kwargs["max_lr"] = [1e-2, 0.5, 0.05]
        metrics = _random_metrics(rng, 100)
        lrs = [3e-3, 1e-2, 0.04]
        ours_opt, theirs_opt = _optimizer(lrs), _optimizer(lrs)
        ours = _drive(GreedyLR(ours_opt, **kwargs), ours_opt, metrics)
        theirs = _drive(HFGreedyLR(theirs_opt, **kwargs), theirs_opt, metrics)
        assert ours == theirs
        for step in ours:
            for lr, lo, hi in zip(step, kwargs["min_lr"], kwargs["max_lr"], strict=True):
                assert lo <= lr <= hi


def test_bounds_hold_and_lr_rises_then_falls() -> None:
    opt = _optimizer(0.01)
    sched = GreedyLR(opt, factor=0.5, patience=0, min_lr=1e-3, max_lr=0.05)
    for k in range(10):  # steadily improving: raise up to max_lr
        sched.step(1.0 - 0.05 * k)
    assert sched.get_last_lr() == [0.05]
    for _ in range(20):  # flat: lower to min_lr
        sched.step(1.0)
    assert sched.get_last_lr() == [1e-3]


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="factor"):
        GreedyLR(_optimizer(0.1), factor=1.5)
    with pytest.raises(ValueError, match="threshold_mode"):
        GreedyLR(_optimizer(0.1), threshold_mode="relative")
    with pytest.raises(ValueError, match="min_lr"):
        GreedyLR(_optimizer([0.1, 0.2]), min_lr=[1e-3])
    with pytest.raises(ValueError, match="max_lr"):
        GreedyLR(_optimizer(0.1), min_lr=0.5, max_lr=0.1)
    with pytest.raises(TypeError, match="unknown GreedyLR"):
        replay_greedylr([1.0], 0.1, patiense=3)


def test_defaults_are_transformers_defaults() -> None:
    import inspect

    theirs = inspect.signature(HFGreedyLR.__init__).parameters
    ours = inspect.signature(GreedyLR.__init__).parameters
    for name, default in GREEDYLR_DEFAULTS.items():
        assert theirs[name].default == default == ours[name].default, name


def test_inside_sequential_lr_after_warmup() -> None:
    opt = _optimizer(0.1)
    warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
    greedy = GreedyLR(opt, factor=0.5, patience=1, min_lr=1e-4, max_lr=0.2)
    sched = SequentialLR(opt, [warmup, greedy], milestones=[5])
    lrs = []
    for _ in range(12):
        opt.step()
        greedy.observe(1.0)  # a plateau: GreedyLR halves the lr every other step
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[:4] == pytest.approx([0.028, 0.046, 0.064, 0.082])
    # At the milestone GreedyLR takes over from the current lr (as torch's chainable
    # schedulers do), then halves it after every second flat metric (patience=1).
    assert lrs[4:] == pytest.approx([0.082, 0.082, 0.082, 0.041, 0.041, 0.0205, 0.0205, 0.01025])


def test_inside_chained_scheduler_composes_multiplicatively() -> None:
    opt = _optimizer(0.1)
    greedy = GreedyLR(opt, factor=0.5, patience=0, min_lr=1e-6, max_lr=1.0)
    decay = ExponentialLR(opt, gamma=0.9)
    sched = ChainedScheduler([greedy, decay])
    expected = 0.1
    for k in range(6):
        opt.step()
        greedy.observe(1.0 - 0.1 * k)  # improving: GreedyLR doubles, then the decay applies
        sched.step()
        expected = min(expected / 0.5, 1.0) * 0.9
        assert sched.get_last_lr()[0] == pytest.approx(expected)
    # step() without a metric (and none observed) leaves the lr to the other schedulers.
    before = opt.param_groups[0]["lr"]
    greedy.step()
    assert opt.param_groups[0]["lr"] == before


def test_tensor_learning_rates_stay_tensors() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=torch.tensor(0.01))
    sched = GreedyLR(opt, factor=0.5, patience=0, min_lr=1e-4, max_lr=1.0)
    sched.step(1.0)
    sched.step(0.5)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.04)
