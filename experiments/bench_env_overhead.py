"""What an ``lrrl/NMF-v0`` decision costs against the bare arithmetic it wraps.

The yardstick is the decision written as a plain numpy float32 loop with single-threaded
BLAS: ``steps_per_action`` alternating projected steps on the drawn minibatches (full
gradient when ``batch_size`` is None) with additive gradient noise, the safeguard's ``r x r``
Gram eigenvalue before every block update, one full loss for the reward, and the stability
bound's arithmetic (both Gram eigenvalues and both full-gradient norms). Target: an env step
costs at most 1.15x that floor. Printed beside it, for reference:

* ``torch raw``: the same decision through :mod:`lrrl.envs.nmf_ops` without the env around it
  (what torch's per-operation cost adds on small problems is visible as ``torch/numpy``);
* ``batched/ep``: the batched env's cost per episode-decision at ``B`` sub-envs (what PPO
  and the evaluation run), against the same numpy floor;
* ``shared raw``: the workplace's reference floor (``../shared/bench/raw_nmf.py``) when it is
  there, as a cross-check of this script's own.

Each figure is the best of several interleaved rounds, so background load hits all alike.

    python experiments/bench_env_overhead.py [--quick] [--device cuda] [--batch 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import lrrl  # noqa: F401  (registers the environments)
from lrrl.envs.nmf import NMFEnv
from lrrl.envs.nmf_batched import BatchedNMFEnv

SIZES = [(100, 100, 10), (200, 150, 10), (500, 500, 20)]
VARIANTS = {"full gradient": (None, 0.0), "minibatch 16 + noise": (16, 0.01)}
STEPS = 10
SHARED_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "raw_nmf.py"


def numpy_decision(
    rng: np.random.Generator,
    V: np.ndarray,
    W: np.ndarray,
    H: np.ndarray,
    lr: float,
    batch: int | None,
    noise_std: float,
) -> float:
    """One decision in numpy float32; returns the loss (the factors are updated in place)."""
    n = V.shape[1]

    def top(G: np.ndarray) -> float:
        return float(np.linalg.eigvalsh(G)[-1])

    for _ in range(STEPS):
        cols = np.arange(n) if batch is None else rng.choice(n, size=batch, replace=False)
        scale = 1.0 if batch is None else n / batch
        Hb = H[:, cols]
        eta = min(lr, 2.0 / max(top(Hb @ Hb.T) * scale, 1e-30))
        gw = scale * ((W @ Hb - V[:, cols]) @ Hb.T)
        if noise_std:
            gw += rng.standard_normal(W.shape, dtype=np.float32) * noise_std
        np.maximum(W - eta * gw, 0, out=W)
        eta = min(lr, 2.0 / max(top(W.T @ W), 1e-30))
        gh = W.T @ (W @ Hb - V[:, cols])
        if noise_std:
            gh += rng.standard_normal(gh.shape, dtype=np.float32) * noise_std
        H[:, cols] = np.maximum(Hb - eta * gh, 0)
    R = W @ H - V
    loss = 0.5 * float(np.square(R).sum())
    lw, lh = top(H @ H.T), top(W.T @ W)
    gw2, gh2 = float(np.square(R @ H.T).sum()), float(np.square(W.T @ R).sum())
    s2 = noise_std**2 * (W.size + H.size)
    _ = 2.0 / max(lw, lh) * (gw2 + gh2) / (gw2 + gh2 + s2 + 1e-30)
    return loss


def best_of(fn: Callable[[], float], rounds: int) -> float:
    return min(fn() for _ in range(rounds))


def per_call(step: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    step()  # warm-up (and lets a fresh episode settle)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return (time.perf_counter() - start) / repeats


def shared_floor(m: int, n: int, r: int, batch: int | None) -> float:
    """Seconds per decision of ``../shared/bench/raw_nmf.py``, or NaN without it."""
    if not SHARED_RAW.is_file():
        return math.nan
    spec = importlib.util.spec_from_file_location("raw_nmf", SHARED_RAW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return float(module.seconds_per_decision(m, n, r, k=STEPS, b=batch, reps=20, bound=True))


def main() -> None:
    with threadpool_limits(1):  # numpy's BLAS single-threaded, like torch below
        _main()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and rounds")
    parser.add_argument("--batch", type=int, default=64, help="sub-envs of the batched env")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(1)
    repeats, rounds = (10, 3) if args.quick else (30, 7)

    def sync() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    print(f"device={args.device} torch threads=1, numpy BLAS threads=1, float32, {STEPS} steps")
    print(
        f"{'m x n, r':>14} {'variant':>21} {'numpy ms':>9} {'env ms':>8} {'env/np':>7}"
        f" {'torch/np':>9} {'batched/ep':>10} {'shared ms':>10}"
    )
    for m, n, r in SIZES:
        for name, (batch, noise) in VARIANTS.items():
            numpy_s, env_s, torch_s, batched_s = measure(
                (m, n, r), batch, noise, args.device, args.batch, repeats, rounds, sync
            )
            shared_s = shared_floor(m, n, r, batch)
            print(
                f"{f'{m}x{n}, {r}':>14} {name:>21} {numpy_s * 1e3:9.3f} {env_s * 1e3:8.3f}"
                f" {env_s / numpy_s:6.2f}x {torch_s / numpy_s:8.2f}x"
                f" {batched_s / numpy_s:9.2f}x {shared_s * 1e3:10.3f}"
            )


def measure(
    size: tuple[int, int, int],
    batch: int | None,
    noise: float,
    device: str,
    B: int,
    repeats: int,
    rounds: int,
    sync: Callable[[], None],
) -> tuple[float, float, float, float]:
    """Seconds per decision: numpy floor, env step, torch floor, batched env per episode."""
    m, n, r = size
    options: dict[str, Any] = dict(
        families=("base",),
        shape=(m, n),
        rank=r,
        batch_size=batch,
        noise_std=noise,
        horizon=10_000,
        n_train=1,
        device=device,
    )
    env = NMFEnv(**options)
    env.reset(seed=0)
    lr = 0.5 * env.clip
    action = env.action_for_lr(lr)
    batched = BatchedNMFEnv(B, **options)
    batched.reset(seed=0)
    actions = np.repeat(action[None], B, axis=0)
    V, W, H = (x.astype(np.float32) for x in (env.V, env.W, env.H))
    rng = np.random.default_rng(0)
    episodes, requested = env._episodes, np.array([lr])
    best = [math.inf] * 4
    for _ in range(rounds):
        times = (
            per_call(lambda: numpy_decision(rng, V, W, H, lr, batch, noise), repeats, sync),
            per_call(lambda: env.step(action), repeats, sync),
            # the env's decision without the env: the episodes' own inner steps and bound
            per_call(
                lambda: episodes._decide(np.array([0]), requested, 2 * requested, None),
                repeats,
                sync,
            ),
            per_call(lambda: batched.step(actions), max(3, repeats // 5), sync) / B,
        )
        best = [min(a, b) for a, b in zip(best, times, strict=True)]
    return best[0], best[1], best[2], best[3]


if __name__ == "__main__":
    main()
