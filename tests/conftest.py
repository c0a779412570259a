"""Shared by test modules: a real (smoke-sized) training run directory; importable examples."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

# The example scripts of experiments/ (hf_trainer, lightning_example) are tested by import.
sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``lrrl.train`` run dir (``debug=smoke``) after ``lrrl.distill``: about 20 s, once.

    It holds ``.hydra/config.yaml``, ``model.zip``, ``schedule.json`` and ``greedylr.json``.
    The agent acts relative to the clip (``env.action_mode=bound``), so outside its env
    ``PolicyScheduler`` picks lrs between ``lr_floor`` and 1 times ``reference_lr`` that
    move with the losses; a ``log_lr`` agent's absolute NMF learning rates would all be
    capped at a language model's small reference lr.
    """
    from lrrl.distill import distill
    from lrrl.pipeline import run_experiment

    os.environ.setdefault("WANDB_MODE", "disabled")
    run_dir = tmp_path_factory.mktemp("smoke_run")
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        train_cfg = compose(
            "train", overrides=["debug=smoke", "logger=none", "env.action_mode=bound"]
        )
        distill_cfg = compose("distill", overrides=[f"run_dir={run_dir}", "fit.budget=500"])
    config = OmegaConf.to_container(train_cfg, resolve=True)
    run_experiment(config, run_dir)  # type: ignore[arg-type]
    # Hydra writes .hydra/ when it runs a job; PolicyScheduler and distill read it from there.
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    distill(OmegaConf.to_container(distill_cfg, resolve=True))  # type: ignore[arg-type]
    return run_dir
