"""Hydra launchers: parallel sweeps with joblib, submitit's local executor, the presets."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from hydra import compose, initialize_config_module

from lrrl.cli import ConfigError, check_launcher

RUN_FILES = ("model.zip", "schedule.json", "metrics.json", "schedules.png", ".hydra/config.yaml")


def run_sweep(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    sweep = tmp_path / "sweep"
    done = run_cli("-m", "seed=0,1", "debug=smoke", f"hydra.sweep.dir={sweep}", *args, cwd=tmp_path)
    return done, sweep


def assert_two_complete_runs(sweep: Path) -> None:
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("__")[0] for p in jobs] == ["0", "1"]
    seeds = []
    for job in jobs:
        for name in RUN_FILES:
            assert (job / name).is_file(), f"{name} missing in {job}"
        metrics = json.loads((job / "metrics.json").read_text())
        schedule = json.loads((job / "schedule.json").read_text())
        assert schedule["seed"] == metrics["seed"]
        seeds.append(metrics["seed"])
    assert seeds == [0, 1]  # one run per job, none overwriting another


def test_joblib_preset_runs_jobs_in_parallel_into_separate_dirs(tmp_path):
    done, sweep = run_sweep(tmp_path, "hydra/launcher=lrrl_joblib", "hydra.launcher.n_jobs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr  # joblib launched them
    assert_two_complete_runs(sweep)


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done, sweep = run_sweep(tmp_path, "hydra/launcher=lrrl_submitit_local")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (sweep / ".submitit").is_dir()
    assert_two_complete_runs(sweep)


@pytest.mark.parametrize(
    ("launcher", "target", "key"),
    [
        ("lrrl_slurm", "SlurmLauncher", "timeout_min"),
        ("lrrl_submitit_local", "LocalLauncher", "timeout_min"),
        ("lrrl_joblib", "JoblibLauncher", "n_jobs"),
    ],
)
def test_presets_extend_the_plugins_typed_configs(launcher, target, key):
    """A preset extends its plugin's schema: the plugin's keys take overrides, others fail."""
    from hydra.errors import ConfigCompositionException

    def compose_with(*overrides: str):
        with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
            return compose(
                config_name="train",
                overrides=[f"hydra/launcher={launcher}", *overrides],
                return_hydra_config=True,
            )

    cfg = compose_with(f"hydra.launcher.{key}=7")
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.hydra.launcher[key] == 7
    with pytest.raises(ConfigCompositionException):
        compose_with("hydra.launcher.no_such_option=1")


def test_missing_launcher_plugin_is_a_one_line_error(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is not None:
        pytest.skip("the Ray launcher is installed here")
    with pytest.raises(ConfigError, match=r"lrrl\[ray\]"):
        check_launcher(["-m", "hydra/launcher=lrrl_ray"])
    check_launcher(["hydra/launcher=lrrl_joblib", "seed=0"])  # installed: accepted
    done = subprocess.run(
        [sys.executable, "-m", "lrrl.train", "-m", "hydra/launcher=lrrl_ray", "debug=smoke"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "pip install" in done.stderr
