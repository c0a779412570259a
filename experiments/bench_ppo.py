"""PPO training throughput (env steps per second, end to end) by ``agent.vec_env``.

Trains stable-baselines3 PPO on ``lrrl/NMF-v0`` with the training pipeline's env builder
(:func:`lrrl.agents.vec.make_training_vec_env`) for ``dummy``, ``subproc`` and ``batched``
(in the training process, and split across two env worker processes: ``agent.env_workers=2``,
the default) at a few ``n_envs``, with the default agent hyperparameters (``n_steps`` scaled
so one rollout holds 512 transitions).

    python experiments/bench_ppo.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch
from stable_baselines3 import PPO

import lrrl  # noqa: F401
from lrrl.agents.vec import make_training_vec_env


def throughput(
    kind: str,
    n_envs: int,
    env_kwargs: dict,
    timesteps: int,
    device: str,
    compile_: bool = False,
    workers: int = 1,
) -> float:
    venv = make_training_vec_env("lrrl/NMF-v0", env_kwargs, n_envs, 0, kind, workers)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=max(8, 512 // n_envs),
        batch_size=128,
        n_epochs=10,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0},
        seed=0,
        device=device,
        verbose=0,
    )
    if compile_:  # the policy's networks (SB3 calls several methods of the policy itself)
        for module in (model.policy.mlp_extractor, model.policy.action_net, model.policy.value_net):
            module.compile()
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps)
    wall = time.perf_counter() - start
    venv.close()
    return model.num_timesteps / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer settings, shorter runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (main process)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    torch.set_num_threads(args.threads)
    problems = {
        "default suite": dict(),
        "small 30x24 r4": dict(families=("base",), shape=(30, 24), rank=4, batch_size=None),
    }
    n_envs_list = [4, 16] if args.quick else [4, 16, 64, 256]
    timesteps = 2048 if args.quick else 8192
    print(f"device={args.device} (policy and env) threads={args.threads} timesteps={timesteps}")
    print(
        f"{'problem':>24} {'n_envs':>6} {'dummy':>8} {'subproc':>8} {'batched':>8}"
        f" {'+compile':>8} {'batched2':>8}"
    )
    for name, problem in problems.items():
        env_kwargs = dict(problem, device=args.device)
        for n_envs in n_envs_list:
            cells = []
            for kind in ("dummy", "subproc", "batched", "compiled", "workers"):
                # subproc: one process per env, not on a few cores; dummy: slow at 256
                if (kind == "subproc" and n_envs > 16) or (kind == "dummy" and n_envs > 64):
                    cells.append(f"{'-':>8}")
                    continue
                compiled = kind == "compiled"
                rate = throughput(
                    "batched" if kind in ("compiled", "workers") else kind,
                    n_envs,
                    env_kwargs,
                    timesteps,
                    args.device,
                    compiled,
                    workers=2 if kind == "workers" else 1,
                )
                cells.append(f"{rate:8.0f}")
            print(f"{name:>24} {n_envs:6d} " + " ".join(cells), flush=True)
    print(
        "(env steps per second of PPO.learn, rollouts and updates; higher is better;"
        " batched2: the batched env in two worker processes)"
    )


if __name__ == "__main__":
    main()
