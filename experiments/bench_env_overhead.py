"""How much an ``lrrl/NMF-v0`` step costs beyond the SGD it runs (target: <= 15 % overhead).

The raw inner compute is what any training loop at this learning rate would do in one
decision: draw the minibatches and noise, run ``steps_per_action`` projected SGD steps
(``nmf_ops.inner_step``, with the safeguard when the env uses it) and evaluate the loss once.
The env step adds the stability bound, the observation, the reward and the info dict.

    python experiments/bench_env_overhead.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import lrrl  # noqa: F401
from lrrl.envs import nmf_ops
from lrrl.envs.nmf import NMFEnv

SIZES = [(100, 100, 10), (200, 150, 10), (500, 500, 20)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_env(env: NMFEnv, repeats: int, device: str) -> float:
    """Seconds per ``env.step`` (resets excluded)."""
    action = np.array([0.5], dtype=np.float32)
    env.reset(seed=0, options={"instance": 0})
    total, count = 0.0, 0
    while count < repeats:
        _sync(device)
        start = time.perf_counter()
        _, _, term, trunc, _ = env.step(action)
        _sync(device)
        total += time.perf_counter() - start
        count += 1
        if term or trunc or env._t >= env.horizon:
            env.reset(options={"instance": 0})
    return total / count


def time_raw(env: NMFEnv, repeats: int, device: str) -> float:
    """Seconds per decision of the bare SGD steps on the same problem and learning rate."""
    env.reset(seed=0, options={"instance": 0})
    V, W0, H0 = env._V, env._W, env._H
    lr = torch.tensor(env.clip * 0.5, dtype=env.dtype, device=env.device)
    cap = env.bound_scale if env.safeguard else None
    gen = torch.Generator(device=env.device).manual_seed(0)
    total = 0.0
    for _ in range(repeats):
        W, H = W0, H0
        _sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            draws = nmf_ops.draw(
                gen,
                env.steps_per_action,
                tuple(V.shape),
                env.rank,
                env.batch_size,
                env.noise_std,
                env.dtype,
                env.device,
            )
            for k in range(env.steps_per_action):
                W, H, _ = nmf_ops.inner_step(
                    V,
                    W,
                    H,
                    lr,
                    cap,
                    columns=None if draws.columns is None else draws.columns[k],
                    noise_w=None if draws.noise_w is None else draws.noise_w[k],
                    noise_h=None if draws.noise_h is None else draws.noise_h[k],
                )
            float(nmf_ops.loss_from_residual(nmf_ops.residual(V, W, H)))
        _sync(device)
        total += time.perf_counter() - start
    return total / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(args.threads)
    repeats, rounds = (20, 3) if args.quick else (40, 10)
    sizes = SIZES if not args.quick else [SIZES[0], SIZES[2]]
    variants = {
        "full gradient": dict(batch_size=None),
        "minibatch 16 + noise": dict(batch_size=16, noise_std=0.01),
        "full, no safeguard": dict(batch_size=None, safeguard=False),
    }
    print(f"device={args.device} threads={args.threads} float32 steps_per_action=10")
    print(f"{'m x n, r':>14} {'variant':>22} {'raw ms':>8} {'env ms':>8} {'overhead':>9}")
    for m, n, r in sizes:
        for name, extra in variants.items():
            env = NMFEnv(
                shape=(m, n),
                rank=r,
                steps_per_action=10,
                suite="synthetic",
                device=args.device,
                horizon=10_000,
                **extra,
            )
            time_env(env, 5, args.device)  # warm-up
            # Interleaved rounds, best of each: a shared machine's load hits both alike.
            raw, step = math.inf, math.inf
            for _ in range(rounds):
                raw = min(raw, time_raw(env, repeats, args.device))
                step = min(step, time_env(env, repeats, args.device))
            print(
                f"{f'{m}x{n}, {r}':>14} {name:>22} {raw * 1e3:8.3f} {step * 1e3:8.3f} "
                f"{(step / raw - 1) * 100:8.1f}%"
            )


if __name__ == "__main__":
    main()
