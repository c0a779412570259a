"""Wall time of the default training run, ``python -m lrrl.train env=nmf agent=ppo logger=none``.

Runs the command in a subprocess (as a user would, in a temporary run directory) once per
``agent.vec_env`` and reports the total wall time, the PPO training part and its env steps
per second (from the run's ``metrics.json``).

    python experiments/bench_train.py [--quick] [--device cuda] [--vec-envs dummy batched]

``--quick`` adds ``debug=smoke`` (a few seconds per run) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(vec_env: str, device: str, quick: bool, workdir: Path) -> dict[str, float]:
    run_dir = workdir / f"run-{vec_env}"
    cmd = [
        sys.executable,
        "-m",
        "lrrl.train",
        "env=nmf",
        "agent=ppo",
        "logger=none",
        f"agent.vec_env={vec_env}",
        f"agent.device={device}",
        f"env.device={device}",
        "progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    if quick:
        cmd.append("debug=smoke")
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        cwd=workdir,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    train = json.loads((run_dir / "metrics.json").read_text())["train"]
    return {
        "wall": wall,
        "train": train["wall_time_s"],
        "steps": train["timesteps"],
        "rate": train["env_steps_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="debug=smoke runs")
    parser.add_argument(
        "--vec-envs",
        nargs="+",
        default=["dummy", "batched"],
        choices=["dummy", "subproc", "batched"],
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    print(
        f"device={args.device} quick={args.quick} (python -m lrrl.train env=nmf agent=ppo logger=none)"
    )
    print(f"{'vec_env':>8} {'total s':>8} {'train s':>8} {'env steps':>10} {'steps/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for vec_env in args.vec_envs:
            res = run(vec_env, args.device, args.quick, Path(tmp))
            print(
                f"{vec_env:>8} {res['wall']:8.1f} {res['train']:8.1f} {res['steps']:10.0f} "
                f"{res['rate']:8.0f}",
                flush=True,
            )
    print("(total: the whole run, baselines' tuning and the comparison included)")


if __name__ == "__main__":
    main()
