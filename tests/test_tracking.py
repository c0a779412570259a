"""Trackers: what each one writes (TensorBoard event files, an offline wandb run), sweep groups."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib
import pytest
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from lrrl.tracking import LOGGERS, NullTracker, make_tracker, sweep_group

matplotlib.use("Agg")


@pytest.fixture
def png(tmp_path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "schedules.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_writes_scalars_config_and_images(tmp_path: Path, png: Path) -> None:
    tracker = make_tracker(
        {"name": "tensorboard", "subdir": "tb"}, str(tmp_path), {"seed": 7}, "nmf__ppo__7"
    )
    tracker.log({"charts/final_loss": 0.5}, step=256)
    tracker.log({"charts/final_loss": 0.25})  # no step: continues after the last one
    tracker.summary({"test/ppo/log_loss_ratio": -3.5})
    tracker.image("plots/schedules", png)
    tracker.finish()

    events = _events(tmp_path / "tb")
    scalars = events.Scalars("charts/final_loss")
    assert [(s.step, s.value) for s in scalars] == [(256, 0.5), (257, 0.25)]
    assert [s.value for s in events.Scalars("test/ppo/log_loss_ratio")] == [-3.5]
    (image,) = events.Images("plots/schedules")
    assert (image.width, image.height) == (100, 75)  # the PNG's own size
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0]
    assert b'"seed": 7' in config_text and b"nmf__ppo__7" in config_text


def test_tensorboard_refuses_what_is_not_a_number(tmp_path: Path) -> None:
    tracker = make_tracker({"name": "tensorboard"}, str(tmp_path), {}, "run")
    with pytest.raises(ValueError, match=r"metric note='text' is invalid"):
        tracker.log({"note": "text"})
    with pytest.raises(ValueError, match=r"image path=.*missing.png.* is invalid"):
        tracker.image("plots/x", tmp_path / "missing.png")
    tracker.finish()


def test_unknown_logger_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"logger='mlflow' is invalid: expected one of"):
        make_tracker({"name": "mlflow"}, str(tmp_path), {}, "run")
    assert isinstance(make_tracker({"name": "none"}, str(tmp_path), {}, "run"), NullTracker)
    assert set(LOGGERS) == {"none", "tensorboard", "wandb"}


@pytest.fixture
def hydra_job(tmp_path: Path) -> Iterator[Callable[[RunMode, str], None]]:
    """Make this process look like a running Hydra job (single run or one job of a sweep)."""

    def enter(mode: RunMode, sweep_dir: str) -> None:
        with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=["debug=smoke", f"hydra.sweep.dir={sweep_dir}"],
                return_hydra_config=True,
            )
        with open_dict(cfg):
            cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)

    yield enter
    HydraConfig.instance().cfg = None


def test_sweep_group_is_the_sweep_dir_only_under_multirun(hydra_job) -> None:
    assert sweep_group() is None  # no Hydra job at all
    hydra_job(RunMode.RUN, "multirun/unused")
    assert sweep_group() is None
    hydra_job(RunMode.MULTIRUN, "multirun/nmf_default")
    assert sweep_group() == "multirun/nmf_default"


def test_wandb_offline_run_gets_the_sweep_group_and_images(
    tmp_path: Path, png: Path, hydra_job, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    hydra_job(RunMode.MULTIRUN, "multirun/sweep-42")
    config = {"seed": 1}
    tracker = make_tracker({"name": "wandb", "project": "lrrl"}, str(tmp_path), config, "job")
    tracker.log({"charts/final_loss": 0.5}, step=3)
    tracker.image("plots/schedules", png)
    tracker.finish()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list((run / "files" / "media" / "images" / "plots").glob("schedules_*.png"))
    assert b"multirun/sweep-42" in next(run.glob("*.wandb")).read_bytes()


@pytest.mark.slow
def test_logger_tensorboard_from_the_command_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "lrrl.train", "debug=smoke", "logger=tensorboard"]
        + [f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    events = _events(run_dir / "tensorboard")
    tags = events.Tags()["scalars"]
    assert "charts/final_loss" in tags and "eval/ppo/lr" in tags
