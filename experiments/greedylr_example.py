"""GreedyLR (distilled or default) against cosine annealing in a plain PyTorch loop.

    python experiments/greedylr_example.py                       # GreedyLR's defaults
    python experiments/greedylr_example.py outputs/<run>/greedylr.json

Trains a small MLP on scikit-learn's digits (no download) with SGD, once per scheduler, with
the same seed and minibatches, and prints each run's final training and test loss. GreedyLR
steps once per ``steps_per_action`` optimizer steps (from greedylr.json; the distilled
patience and cooldown count those decisions) with the mean minibatch loss of that window.
A schedule distilled on NMF carries NMF's learning-rate scale: its ``initial_lr``,
``min_lr`` and ``max_lr`` are rescaled by ``--lr / initial_lr`` unless ``--absolute``.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lrrl.schedulers import DistilledGreedyLR, GreedyLR, load_greedylr


def data(seed: int) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=seed)
    return (
        torch.from_numpy(x_tr),
        torch.from_numpy(y_tr),
        torch.from_numpy(x_te),
        torch.from_numpy(y_te),
    )


def greedylr_spec(path: str | None, lr: float, absolute: bool) -> DistilledGreedyLR:
    """The distilled GreedyLR of a greedylr.json (or GreedyLR's defaults), started at ``lr``."""
    if path is None:
        return DistilledGreedyLR({}, lr, 10)
    spec = load_greedylr(path)
    return spec if absolute else spec.rescaled(lr)


def train(scheduler: str, spec: DistilledGreedyLR, args: argparse.Namespace) -> tuple[float, float]:
    torch.manual_seed(args.seed)
    x_tr, y_tr, x_te, y_te = data(args.seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    lr0 = spec.initial_lr if scheduler == "greedylr" else args.lr
    opt = torch.optim.SGD(model.parameters(), lr=lr0, momentum=0.9)
    if scheduler == "greedylr":
        sched: Any = GreedyLR(opt, **spec.params)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    gen = torch.Generator().manual_seed(args.seed)
    window: list[float] = []
    loss_fn = nn.CrossEntropyLoss()
    for step in range(args.steps):
        idx = torch.randint(len(x_tr), (args.batch_size,), generator=gen)
        loss = loss_fn(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler == "greedylr":
            window.append(loss.item())
            if (step + 1) % spec.steps_per_action == 0:
                sched.step(float(np.mean(window)))
                window = []
        else:
            sched.step()
    with torch.no_grad():
        return float(loss_fn(model(x_tr), y_tr)), float(loss_fn(model(x_te), y_te))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("greedylr_json", nargs="?", help="a greedylr.json from lrrl.distill")
    parser.add_argument("--lr", type=float, default=0.05, help="starting lr of both runs")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--absolute", action="store_true", help="use greedylr.json's lrs as is")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = greedylr_spec(args.greedylr_json, args.lr, args.absolute)
    source = args.greedylr_json or "GreedyLR defaults"
    print(f"digits MLP, SGD+momentum, {args.steps} steps; GreedyLR from {source}")
    for name in ("greedylr", "cosine"):
        start = time.perf_counter()
        train_loss, test_loss = train(name, spec, args)
        print(
            f"{name:>9}: final train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
            f"({time.perf_counter() - start:.1f} s)"
        )
        assert math.isfinite(train_loss)


if __name__ == "__main__":
    main()
