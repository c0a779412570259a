"""Helpers shared by the tests: small configs, composed Hydra configs, a finished tiny run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lrrl  # noqa: F401  (registers the environments)

os.environ.setdefault("WANDB_MODE", "disabled")

#: A small NMF suite: three families (synthetic, full gradients, real data), small matrices.
SMALL_NMF: dict[str, Any] = {
    "shape": (30, 24),
    "rank": 4,
    "steps_per_action": 3,
    "batch_size": 8,
    "horizon": 6,
    "families": ("base", "exact", "digits"),
    "n_train": 2,
    "n_tune": 1,
    "n_test": 2,
}


def compose(*overrides: str, config_name: str = "train") -> dict[str, Any]:
    """A composed, resolved config of an entry point, as the CLI would build it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


#: Overrides that shrink a train run to seconds (on top of ``debug=smoke``).
TINY = (
    "debug=smoke",
    "logger=none",
    "progress_bar=false",
    "agent.checkpoint_every=0",
    "eval.unclipped=[constant]",
    "eval.baselines=[constant,step_decay,greedylr_default,follow_bound]",
)


def tiny_config(*overrides: str) -> dict[str, Any]:
    """The composed config of a train run that takes seconds."""
    return compose(*TINY, *overrides)


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Save a composed config where Hydra would (``RUN_DIR/.hydra/config.yaml``)."""
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny NMF train run, as the CLI leaves it (shared; tests only read it)."""
    from lrrl.pipeline import run_experiment

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    config = tiny_config()
    write_run_config(run_dir, config)
    run_experiment(config, run_dir)
    return run_dir


# The example scripts of experiments/ (hf_trainer, lightning_example) are tested by import.
sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))


@pytest.fixture(scope="session")
def smoke_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of :func:`tiny_run` after ``lrrl.distill``: it also holds ``greedylr.json``.

    The agent acts relative to the clip (``action_mode=bound``, the default), so outside its
    env ``PolicyScheduler`` picks lrs between ``lr_floor`` and 1 times ``reference_lr`` that
    move with the losses.
    """
    import shutil

    from lrrl.distill import distill

    run_dir = tmp_path_factory.mktemp("smoke_run") / "run"
    shutil.copytree(tiny_run, run_dir)
    distill(compose(f"run_dir={run_dir}", "fit.budget=500", config_name="distill"))
    return run_dir


def run_cli(
    *args: str, cwd: Path, mode: str = "disabled", tool: str = "lrrl.train"
) -> subprocess.CompletedProcess:
    """Run an lrrl entry point (``python -m TOOL ARGS``) as a user would, output captured."""
    return subprocess.run(
        [sys.executable, "-m", tool, *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": mode},
        capture_output=True,
        text=True,
        timeout=600,
    )


#: Two optimizers whose good rates are a decade apart, one task, short episodes.
TINY_DNN = {
    "tasks": ["digits"],
    "optimizers": ["sgd", "adam"],
    "batch_sizes": [16],
    "n_train": 2,
    "n_test": 1,
    "n_heldout": 1,
    "steps_per_action": 2,
    "horizon": 4,
}


@pytest.fixture(scope="session")
def dnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DNN run directory with an untrained agent (what PolicyScheduler reads: its config
    and model)."""
    import torch
    from stable_baselines3 import PPO

    from lrrl.config import EnvSpec
    from lrrl.envs.registration import make_env

    torch.manual_seed(0)
    config = compose("debug=smoke", "logger=none", "env=dnn")
    config["env"].update(TINY_DNN)
    run_dir = tmp_path_factory.mktemp("dnn_run") / "run"
    write_run_config(run_dir, config)
    spec = EnvSpec.from_dict(config["env"])
    env = make_env(spec.id, **spec.options)
    PPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [8]}, device="cpu").save(
        run_dir / "model.zip"
    )
    env.close()
    return run_dir
