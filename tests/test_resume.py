"""Checkpoints, resuming a killed run, the run-dir lock, determinism and unique run dirs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config as config
from stable_baselines3 import PPO
from test_train import assert_complete

from lrrl import checkpoint
from lrrl.cli import ConfigError
from lrrl.pipeline import run_experiment

TRAIN = [sys.executable, "-m", "lrrl.train"]


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled"}


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != checkpoint.LOCK
    }


@pytest.mark.slow
def test_same_seed_same_schedule_file(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_experiment(config(), a)
    run_experiment(config(), b)
    assert (a / "schedule.json").read_bytes() == (b / "schedule.json").read_bytes()
    for name in ("constant", "step_decay", "follow_bound"):
        path = Path("schedules") / f"{name}.json"
        assert (a / path).read_bytes() == (b / path).read_bytes()
    # and the seed matters: another seed gives another schedule
    run_experiment(config("seed=1"), tmp_path / "c")
    assert (a / "schedule.json").read_bytes() != (tmp_path / "c" / "schedule.json").read_bytes()


def test_checkpoint_is_written_during_and_after_training(tmp_path):
    metrics = run_experiment(
        config("agent.total_timesteps=512", "agent.checkpoint_every=128"), tmp_path
    )
    manifest = json.loads((tmp_path / "checkpoint" / checkpoint.MANIFEST).read_text())
    assert manifest["format"] == checkpoint.FORMAT
    assert manifest["timesteps"] == metrics["train"]["timesteps"] >= 512
    assert manifest["episodes"] == metrics["train"]["episodes"]
    # only the files of the last checkpoint remain, and they are the ones the manifest names
    names = {p.name for p in (tmp_path / "checkpoint").iterdir()}
    assert names == {checkpoint.MANIFEST, *manifest["files"].values()}
    model = PPO.load(tmp_path / "checkpoint" / manifest["files"]["model"], device="cpu")
    assert model.num_timesteps == manifest["timesteps"]


@pytest.mark.parametrize("vec_env", ["dummy", "batched"])
def test_resume_from_a_checkpoint_is_deterministic(tmp_path, vec_env):
    """Two resumes of one checkpoint give the same run; training reaches the new budget."""
    first = tmp_path / "first"
    kind = f"agent.vec_env={vec_env}"
    run_experiment(config("agent.total_timesteps=256", "agent.checkpoint_every=128", kind), first)
    longer = config("agent.total_timesteps=512", "agent.checkpoint_every=128", kind)
    results = []
    for name in ("b", "c"):
        target = tmp_path / name
        shutil.copytree(first / "checkpoint", target / "checkpoint")
        metrics = run_experiment(longer, target, resume=True)
        assert metrics["train"]["resumed_from"] == 256
        assert metrics["train"]["timesteps"] >= 512
        results.append(target)
    b, c = results
    assert (b / "schedule.json").read_bytes() == (c / "schedule.json").read_bytes()
    pb = PPO.load(b / "model.zip", device="cpu").policy.state_dict()
    pc = PPO.load(c / "model.zip", device="cpu").policy.state_dict()
    assert all(torch.equal(pb[k], pc[k]) for k in pb)
    # the baselines do not depend on the agent: same as in the run that was never resumed
    for name in ("constant", "step_decay", "follow_bound"):
        path = Path("schedules") / f"{name}.json"
        assert (b / path).read_bytes() == (first / path).read_bytes()


def test_corrupt_checkpoint_is_refused(tmp_path):
    run_experiment(config("agent.checkpoint_every=128"), tmp_path / "run")
    folder = tmp_path / "run" / "checkpoint"
    manifest = json.loads((folder / checkpoint.MANIFEST).read_text())
    model = folder / manifest["files"]["model"]
    model.write_bytes(model.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="corrupt"):
        checkpoint.read_manifest(folder)
    (folder / checkpoint.MANIFEST).write_text("{")
    with pytest.raises(ConfigError, match="corrupt checkpoint manifest"):
        checkpoint.read_manifest(folder)


def test_a_finished_run_dir_is_not_overwritten_by_a_new_run(tmp_path):
    run_experiment(config(), tmp_path)
    before = _files(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        run_experiment(config(), tmp_path)
    assert _files(tmp_path) == before


def test_run_dir_lock_is_exclusive_and_released(tmp_path):
    busy = pytest.raises(ConfigError, match=f"in use by another process \\(pid {os.getpid()}")
    with checkpoint.lock_run_dir(tmp_path), busy, checkpoint.lock_run_dir(tmp_path):
        pass
    with checkpoint.lock_run_dir(tmp_path):  # released on exit
        pass


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    checkpoint.atomic_write_bytes(tmp_path / "x.bin", b"old")
    checkpoint.atomic_write_bytes(tmp_path / "x.bin", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert (tmp_path / "x.bin").read_bytes() == b"new"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkilled_run_resumes_to_its_budget(tmp_path):
    run_dir = tmp_path / "run"
    budget = 4000
    proc = subprocess.Popen(
        [
            *TRAIN,
            "debug=smoke",
            f"hydra.run.dir={run_dir}",
            f"agent.total_timesteps={budget}",
            "agent.checkpoint_every=512",
        ],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(run_dir / "checkpoint" / checkpoint.MANIFEST, proc)
        # while it runs, a second process cannot write into its dir
        busy = subprocess.run(
            [*TRAIN, f"resume={run_dir}"], env=_env(), capture_output=True, text=True
        )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    assert busy.returncode == 2 and "in use by another process" in busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
    manifest = json.loads((run_dir / "checkpoint" / checkpoint.MANIFEST).read_text())
    assert manifest["timesteps"] < budget  # killed mid-training
    assert not (run_dir / "metrics.json").exists()

    done = subprocess.run(
        [*TRAIN, f"resume={run_dir}"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = assert_complete(run_dir)
    assert metrics["train"]["resumed_from"] >= manifest["timesteps"]
    assert metrics["train"]["timesteps"] >= budget
    assert metrics["train"]["episodes"] > manifest["episodes"]
    assert PPO.load(run_dir / "model.zip", device="cpu").num_timesteps >= budget
    assert (run_dir / "schedules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resuming a finished run: one line, nothing touched
    before = _files(run_dir)
    again = subprocess.run(
        [*TRAIN, f"resume={run_dir}"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0
    assert again.stderr.strip().splitlines() == [
        f"lrrl.train: {run_dir} is already finished; nothing to do"
    ]
    assert _files(run_dir) == before


@pytest.mark.slow
def test_concurrent_runs_get_different_dirs(tmp_path):
    """Two runs started at once resolve different run dirs (the pid is part of the name)."""
    procs = [
        subprocess.Popen(
            [*TRAIN, "debug=smoke", "--cfg", "all", "--resolve"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    dirs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        line = next(x for x in out.splitlines() if x.strip().startswith("dir: outputs/"))
        dirs.append(line.split("dir:", 1)[1].strip())
        assert dirs[-1].endswith(f"-{proc.pid}")
    assert dirs[0] != dirs[1]


def test_resume_restores_the_envs_generators(tmp_path):
    """The first observation after a resume comes from the saved env generators, not the seed."""
    import pickle

    from stable_baselines3.common.env_util import make_vec_env

    from lrrl.config import EnvSpec
    from lrrl.envs.registration import make_env

    cfg = config("agent.total_timesteps=128", "agent.checkpoint_every=64", "agent.vec_env=dummy")
    run_experiment(cfg, tmp_path)
    folder = tmp_path / "checkpoint"
    manifest = checkpoint.read_manifest(folder)
    saved = pickle.loads((folder / manifest["files"]["rng"]).read_bytes())
    spec = EnvSpec.from_dict(cfg["env"])
    env_id, kwargs = spec.id, spec.options

    def venv():
        return make_vec_env(lambda: make_env(env_id, **kwargs), n_envs=2, seed=cfg["seed"])

    model, state = checkpoint.load_checkpoint(folder, PPO, venv(), "cpu")
    assert state.timesteps == manifest["timesteps"] and state.episodes == manifest["episodes"]
    for i, generator in enumerate(saved["envs"]):
        env = make_env(env_id, **kwargs)
        env.unwrapped.np_random = generator
        obs, _ = env.reset()
        assert (model._last_obs[i] == obs).all()
    fresh = venv().reset()
    assert not (fresh == model._last_obs).all()
    # and the global generators are the saved ones
    assert torch.equal(torch.get_rng_state(), saved["torch"])


def test_resume_without_a_checkpoint_trains_from_the_start(tmp_path, capsys):
    """A run killed before its first checkpoint (or run with checkpoint_every=0) starts over."""
    from omegaconf import OmegaConf

    from lrrl.train import resume

    cfg = config("agent.checkpoint_every=0")
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / ".hydra" / "config.yaml")
    resume(str(tmp_path), [])
    assert "has no checkpoint; training from the start" in capsys.readouterr().err
    metrics = assert_complete(tmp_path)
    assert metrics["train"]["resumed_from"] is None
    assert not (tmp_path / "checkpoint").exists()
    with pytest.raises(ConfigError, match="takes no other overrides"):
        resume(str(tmp_path), ["seed=3"])
