"""Env steps per second: the batched NMF env against looped and synchronous vector envs.

Compares, for ``B`` sub-envs on a small problem (target: batched >= 10x the synchronous
vector env at ``B = 64`` on a CPU):

* ``loop``: ``B`` plain ``NMFEnv`` objects stepped in a Python loop;
* ``sync``: gymnasium's ``SyncVectorEnv`` (what SB3's ``DummyVecEnv`` does, with autoreset);
* ``sb3 dummy``: SB3's ``DummyVecEnv`` as the training pipeline builds it;
* ``batched``: :class:`lrrl.envs.nmf_batched.BatchedNMFEnv`, one set of batched tensor ops.

    python experiments/bench_batched.py [--quick] [--device cuda] [--shape 30 24 --rank 4]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

import lrrl  # noqa: F401
from lrrl.agents.vec import make_training_vec_env
from lrrl.envs.nmf import NMFEnv
from lrrl.envs.nmf_batched import make_batched


def steps_per_second(step: Callable[[np.ndarray], object], B: int, decisions: int) -> float:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (decisions, B, 1)).astype(np.float32)
    step(actions[0])  # warm-up
    start = time.perf_counter()
    for a in actions:
        step(a)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return B * decisions / (time.perf_counter() - start)


def bench(B: int, kwargs: dict, decisions: int, skip_slow: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    if not skip_slow:
        envs = [NMFEnv(**kwargs) for _ in range(B)]
        for i, env in enumerate(envs):
            env.reset(seed=i)

        def loop(a: np.ndarray) -> None:
            for env, ai in zip(envs, a, strict=True):
                _, _, term, trunc, _ = env.step(ai)
                if term or env._t >= env.horizon:
                    env.reset()

        out["loop"] = steps_per_second(loop, B, decisions)
        sync = gym.make_vec(
            "lrrl/NMF-v0",
            num_envs=B,
            vectorization_mode="sync",
            max_episode_steps=kwargs["horizon"],
            **kwargs,
        )
        sync.reset(seed=0)
        out["sync"] = steps_per_second(lambda a: sync.step(a), B, decisions)
        dummy = make_training_vec_env("lrrl/NMF-v0", kwargs, B, seed=0, kind="dummy")
        dummy.reset()
        out["sb3 dummy"] = steps_per_second(lambda a: dummy.step(a), B, decisions)
    batched = make_batched(B, **kwargs)
    batched.reset(seed=0)
    out["batched"] = steps_per_second(lambda a: batched.step(a), B, decisions)
    sb3_batched = make_training_vec_env("lrrl/NMF-v0", kwargs, B, seed=0, kind="batched")
    sb3_batched.reset()
    out["sb3 batched"] = steps_per_second(lambda a: sb3_batched.step(a), B, decisions)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="B in 1, 16, 64 and fewer steps")
    parser.add_argument("--shape", type=int, nargs=2, default=(30, 24))
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps-per-action", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=None, help="minibatch columns")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(args.threads)
    kwargs = dict(
        shape=tuple(args.shape),
        rank=args.rank,
        steps_per_action=args.steps_per_action,
        batch_size=args.batch_size,
        suite="synthetic",
        horizon=50,
        device=args.device,
    )
    sizes = [1, 16, 64] if args.quick else [1, 4, 16, 64, 128, 256]
    print(
        f"device={args.device} threads={args.threads} shape={args.shape} rank={args.rank} "
        f"steps_per_action={args.steps_per_action} batch_size={args.batch_size} float32"
    )
    cols = ["loop", "sync", "sb3 dummy", "batched", "sb3 batched"]
    print(f"{'B':>5} " + " ".join(f"{c:>12}" for c in cols) + f" {'batched/sync':>13}")
    for B in sizes:
        decisions = max(10, (200 if args.quick else 600) // B)
        res = bench(B, kwargs, decisions, skip_slow=False)
        cells = " ".join(f"{res.get(c, float('nan')):12.0f}" for c in cols)
        print(f"{B:5d} {cells} {res['batched'] / res['sync']:12.1f}x")
    print("(env steps per second; higher is better)")


if __name__ == "__main__":
    main()
