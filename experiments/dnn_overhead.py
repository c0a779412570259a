"""Cost of a ``lrrl/DNN-v0`` step against the bare training steps it performs.

For one instance the env plays an episode at a constant learning rate; a bare loop then
trains the same model (same initial parameters) on the same minibatches with the same
optimizer and evaluates the same validation set once per decision, with no env around it.
The overhead is ``env time / bare time - 1``: what the env adds (observation, bookkeeping,
gradient norm, Gymnasium wrappers) on top of the work any training loop does.

    python experiments/dnn_overhead.py                 # default env: digits MLP, 10 steps/decision
    python experiments/dnn_overhead.py --steps-per-action 5 --episodes 15

Wall-clock figures depend on the machine and its load: env and bare episodes alternate, and
both the median and the minimum over the repeats are shown (the minimum is the least
disturbed by other processes).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import lrrl  # noqa: F401  (registers the environments)
from lrrl.envs.dnn_models import build_optimizer
from lrrl.harness import make_env


def bare_loop(env, state: dict, order_seed: int, lr: float, decisions: int) -> float:
    """The env's training work without the env: returns seconds."""
    u = env.unwrapped
    net, data, inst = u.model, u.instance.data(), u.instance
    net.load_state_dict(state)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = build_optimizer(u.optimizer or inst.optimizer, params, lr, u.momentum, u.weight_decay)
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
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            float(F.cross_entropy(net(data.x_val), data.y_val))
    return time.perf_counter() - start


def env_episode(env, instance: str, seed: int, lr: float) -> tuple[float, int, dict]:
    """One episode at constant ``lr``: seconds in ``step``, decisions, initial parameters."""
    env.reset(seed=seed, options={"instance": instance})
    state = copy.deepcopy(env.unwrapped.model.state_dict())
    action = env.unwrapped.action_for_lr(lr)
    decisions, done = 0, False
    start = time.perf_counter()
    while not done:
        env.unwrapped.request_lr(lr)
        _, _, terminated, truncated, _ = env.step(action)
        decisions += 1
        done = terminated or truncated
    return time.perf_counter() - start, decisions, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps-per-action", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--episodes", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = make_env(
        "lrrl/DNN-v0",
        tasks=[args.task],
        models=[args.model],
        optimizers=[args.optimizer],
        batch_sizes=[args.batch_size],
        steps_per_action=args.steps_per_action,
    )
    instance = env.unwrapped.instances("train")[0].name
    env_times, bare_times = [], []
    env_episode(env, instance, 0, args.lr)  # warm-up: data loading, model building
    for k in range(args.episodes):
        t_env, decisions, state = env_episode(env, instance, k, args.lr)
        order_seed = k + 12345
        t_bare = bare_loop(env, state, order_seed, args.lr, decisions)
        env_times.append(t_env / decisions)
        bare_times.append(t_bare / decisions)
    print(f"instance {instance}, {args.steps_per_action} inner steps per decision")
    for label, pick in (("median", statistics.median), ("min", min)):
        e, b = pick(env_times), pick(bare_times)
        print(
            f"{label:6s}: env step {e * 1e3:.3f} ms, bare training {b * 1e3:.3f} ms per decision,"
            f" overhead {100 * (e / b - 1):.1f} %"
        )


if __name__ == "__main__":
    main()
