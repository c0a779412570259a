"""Cost of a ``lrrl/DNN-v0`` step against the bare training steps it performs.

For one instance the env plays an episode at a constant learning rate; a bare loop then
trains the same model (same initial parameters) on the same number of minibatches with the
same optimizer and evaluates the same validation set once per decision, with no env around
it. The overhead is ``env time / bare time - 1``: what the env adds (observation,
bookkeeping, gradient norm, Gymnasium wrappers) on top of the work any training loop does.

    python experiments/dnn_overhead.py                  # the table: every configuration below
    python experiments/dnn_overhead.py --only default   # one row
    python experiments/dnn_overhead.py --task mnist --model cnn --steps-per-action 50

Wall-clock figures depend on the machine and its load: env and bare episodes alternate, and
both the median and the minimum over the repeats are shown (the minimum is the least
disturbed by other processes). ``reset`` is the env's reset (instance data, initial
parameters, the probe and a first validation), paid once per episode.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch

import lrrl  # noqa: F401  (registers the environments)
from lrrl.envs.dnn_models import build_optimizer, prediction_loss
from lrrl.envs.registration import make_env

#: name -> (task, model, optimizer, batch size, steps per action, lr, episodes, decisions)
CONFIGS: dict[str, tuple[str, str, str, int, int, float, int, int]] = {
    "default": ("digits", "mlp", "sgd", 32, 10, 0.05, 10, 20),
    "default-adam": ("digits", "mlp", "adam", 32, 10, 5e-3, 10, 20),
    "blobs": ("blobs", "mlp", "sgd", 128, 10, 0.05, 10, 20),
    "mnist-mlp": ("mnist", "mlp", "sgd", 32, 50, 0.05, 4, 6),
    "mnist-cnn": ("mnist", "cnn", "adam", 32, 50, 3e-3, 3, 6),
    "text-gru": ("text", "gru", "adam", 32, 50, 1e-2, 3, 4),
    "text-attention": ("text", "attention", "sgd", 32, 50, 0.3, 3, 4),
}


def bare_loop(env: Any, state: dict, order_seed: int, lr: float, decisions: int) -> float:
    """The env's training work without the env: returns seconds."""
    u = env.unwrapped
    net, data, inst = u.model, u.data, u.instance
    net.load_state_dict(state)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = build_optimizer(u.inner_optimizer, params, lr, u.cfg.momentum, u.cfg.weight_decay)
    gen = torch.Generator().manual_seed(order_seed)
    n, size = len(data.y_train), min(inst.batch_size, len(data.y_train))
    order, cursor = torch.randperm(n, generator=gen), 0
    start = time.perf_counter()
    for _ in range(decisions):
        net.train()
        for _ in range(u.steps_per_action):
            if cursor + size > n:
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + size]
            cursor += size
            opt.zero_grad(set_to_none=True)
            loss = prediction_loss(net(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            float(prediction_loss(net(data.x_val), data.y_val))
    return time.perf_counter() - start


def env_episode(env: Any, instance: str, seed: int, lr: float) -> tuple[float, float, int, dict]:
    """One episode at constant ``lr``: seconds in reset, seconds in ``step``, decisions, and
    the initial parameters."""
    start = time.perf_counter()
    env.reset(seed=seed, options={"instance": instance})
    reset = time.perf_counter() - start
    state = copy.deepcopy(env.unwrapped.model.state_dict())
    action = env.unwrapped.action_for_lr(lr)
    decisions, done = 0, False
    start = time.perf_counter()
    while not done:
        env.unwrapped.request_lr(lr)
        _, _, terminated, truncated, _ = env.step(action)
        decisions += 1
        done = terminated or truncated
    return reset, time.perf_counter() - start, decisions, state


def measure(
    task: str,
    model: str,
    optimizer: str,
    batch_size: int,
    steps_per_action: int,
    lr: float,
    episodes: int,
    horizon: int,
) -> dict[str, float]:
    """Per-decision env and bare times (median and min) and the median reset, in seconds."""
    env = make_env(
        "lrrl/DNN-v0",
        tasks=[task],
        models=[model],
        optimizers=[optimizer],
        batch_sizes=[batch_size],
        steps_per_action=steps_per_action,
        horizon=horizon,
    )
    instance = env.unwrapped.instances("train")[0].name
    env_episode(env, instance, 0, lr)  # warm-up: data loading, model building
    env_times, bare_times, resets = [], [], []
    for k in range(episodes):
        t_reset, t_env, decisions, state = env_episode(env, instance, k, lr)
        t_bare = bare_loop(env, state, k + 12345, lr, decisions)
        resets.append(t_reset)
        env_times.append(t_env / decisions)
        bare_times.append(t_bare / decisions)
    env.close()
    return {
        "env_median": statistics.median(env_times),
        "bare_median": statistics.median(bare_times),
        "env_min": min(env_times),
        "bare_min": min(bare_times),
        "reset": statistics.median(resets),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append")
    parser.add_argument("--task")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps-per-action", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--horizon", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.task is not None:
        rows = {
            "custom": (
                args.task,
                args.model,
                args.optimizer,
                args.batch_size,
                args.steps_per_action,
                args.lr,
                args.episodes,
                args.horizon,
            )
        }
    else:
        rows = {name: CONFIGS[name] for name in (args.only or CONFIGS)}
    print(
        f"{'config':>15} {'instance':>22} {'steps':>5} {'env ms':>8} {'bare ms':>8} "
        f"{'overhead':>8} {'min ovh':>8} {'reset ms':>8}"
    )
    for name, row in rows.items():
        task, model, optimizer, batch, spa = row[:5]
        m = measure(*row)
        print(
            f"{name:>15} {f'{task}-{model}-{optimizer}-b{batch}':>22} {spa:>5} "
            f"{m['env_median'] * 1e3:8.2f} {m['bare_median'] * 1e3:8.2f} "
            f"{100 * (m['env_median'] / m['bare_median'] - 1):7.1f}% "
            f"{100 * (m['env_min'] / m['bare_min'] - 1):7.1f}% {m['reset'] * 1e3:8.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
