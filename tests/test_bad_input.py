"""Bad input through the real command lines: one line on stderr, exit status 2, nothing lost.

Each case runs a CLI in a subprocess (a few seconds each), so the table holds what the
in-process tests (``test_train.py``, ``test_schedule_file.py``) cannot see: Hydra's own
errors, the entry points' pre-checks and what is left on disk afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config as config
from omegaconf import OmegaConf

from lrrl import checkpoint
from lrrl.pipeline import run_experiment
from lrrl.schedule import SCHEMA_NAME
from lrrl.schedulers import ScheduleReplay


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished smoke run with the files ``python -m lrrl.train`` leaves."""
    run_dir = tmp_path_factory.mktemp("finished")
    cfg = config("agent.checkpoint_every=128")
    run_experiment(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    return run_dir


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != checkpoint.LOCK
    }


def _cli(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"lrrl.{tool}", *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line_error(done: subprocess.CompletedProcess, tool: str, needle: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"lrrl.{tool}: error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("env.rnak=8", "env.rnak"),
        ("+foo=1", "foo"),
        ("seed=abc", "seed='abc'"),
        ("env.rank=ten", "rank='ten'"),
        ("env.bound_scale=-1", "bound_scale=-1"),
        ("agent.total_timesteps=0", "total_timesteps=0"),
        ("agent.checkpoint_every=-1", "checkpoint_every=-1"),
    ],
)
def test_bad_train_config_fails_before_the_run_dir_exists(tmp_path, override, needle):
    run_dir = tmp_path / "run"
    done = _cli("train", "debug=smoke", override, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    _one_line_error(done, "train", needle)
    assert not run_dir.exists()
    assert not (tmp_path / "outputs").exists()


def test_bad_value_in_a_sweep_fails_before_any_job(tmp_path):
    sweep_dir = tmp_path / "sweep"
    done = _cli(
        "train", "-m", "debug=smoke", "env.rank=2,500", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    _one_line_error(done, "train", "rank=500")
    assert not sweep_dir.exists()


def _corrupt_config(run_dir: Path) -> None:
    path = run_dir / ".hydra" / "config.yaml"
    path.write_text(path.read_text()[:100] + "\n  : [unbalanced\n")


def _truncate_model(run_dir: Path) -> None:
    path = run_dir / "model.zip"
    path.write_bytes(path.read_bytes()[:1000])


def _unfinished_with_corrupt_manifest(run_dir: Path) -> None:
    (run_dir / "metrics.json").unlink()
    (run_dir / "checkpoint" / checkpoint.MANIFEST).write_text('{"format": ')


CASES = [
    # (tool, args with RUN for the run dir copy, how to damage the copy, expected text)
    ("train", ["resume=MISSING"], None, "resume="),
    ("train", ["resume=RUN", "env.rank=3"], None, "takes no other overrides"),
    ("train", ["resume=RUN"], _unfinished_with_corrupt_manifest, "corrupt checkpoint manifest"),
    ("train", ["debug=smoke", "hydra.run.dir=RUN"], None, "already holds a run"),
    ("evaluate", ["run_dir=MISSING"], None, "run_dir="),
    ("evaluate", ["run_dir=RUN"], _corrupt_config, "cannot read the run's config"),
    ("evaluate", ["run_dir=RUN"], _truncate_model, "not a saved agent"),
    ("distill", [], None, "run_dir is required"),
    ("distill", ["run_dir=MISSING"], None, "no such directory"),
    ("distill", ["run_dir=RUN"], _corrupt_config, "cannot read the run's config"),
    ("distill", ["run_dir=RUN"], _truncate_model, "not a saved agent"),
    # below the fit's smallest budget: refused before the rollouts, not after them
    ("distill", ["run_dir=RUN", "fit.budget=150"], None, "fit.budget=150 is invalid"),
]


@pytest.mark.parametrize(("tool", "args", "damage", "needle"), CASES)
def test_bad_run_dirs_are_refused_and_left_as_they_were(
    finished_run, tmp_path, tool, args, damage, needle
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    if damage is not None:
        damage(run_dir)
    before = _files(run_dir)
    args = [
        a.replace("MISSING", str(tmp_path / "missing")).replace("RUN", str(run_dir)) for a in args
    ]
    done = _cli(tool, *args, cwd=tmp_path)
    _one_line_error(done, tool, needle)
    assert _files(run_dir) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing created beside it


def _schedule(tmp_path: Path, finished_run: Path, edit) -> Path:
    text = (finished_run / "schedule.json").read_text()
    path = tmp_path / "schedule.json"
    path.write_text(edit(text))
    return path


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda t: t[: len(t) // 3], "not valid JSON"),
        (lambda t: t.replace('"lr": [', '"lr": ["x", ', 1), "invalid"),
        (lambda t: t.replace(SCHEMA_NAME, "lrrl.schedule/v2"), "unsupported version"),
        (lambda t: json.dumps(json.loads(t)["lr"]), "not an lrrl schedule file"),
        (lambda t: "", "not valid JSON"),
    ],
)
def test_bad_schedule_files_are_one_line_value_errors(finished_run, tmp_path, edit, needle):
    import torch

    path = _schedule(tmp_path, finished_run, edit)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=needle) as err:
        ScheduleReplay(opt, path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
