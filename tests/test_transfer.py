"""experiments/transfer.py at tiny scale: the plain loop, the three routes, the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import transfer
from transfer import TUNE_SEEDS, WINDOWS, Run, Setting

from lrrl.schedule import stretch_log_lr

TINY = Setting("tiny", steps=2 * WINDOWS, width=8)


def test_a_run_validates_once_per_window_and_applies_its_schedule() -> None:
    done = transfer.train(Run(TINY, "sgd", "cosine", 0.1, seed=0))
    assert len(done["curve"]) == len(done["seconds"]) == WINDOWS + 1
    assert not done["diverged"] and done["final"] == done["curve"][-1]
    # the lr at the start of each window: cosine from 0.1 towards 0
    expected = [0.05 * (1 + math.cos(math.pi * k / TINY.steps)) for k in range(0, TINY.steps, 2)]
    assert done["lrs"] == pytest.approx(expected)
    again = transfer.train(Run(TINY, "sgd", "cosine", 0.1, seed=0))
    assert again["curve"] == done["curve"]  # one seed fixes data, init and minibatch order


def test_a_diverging_run_stops_and_is_scored_at_the_cap() -> None:
    done = transfer.train(Run(TINY, "sgd", "cosine", 1e4, seed=0))
    assert done["diverged"] and len(done["curve"]) < WINDOWS + 1
    assert done["final"] == pytest.approx(transfer.MAX_LOSS_RATIO * done["curve"][0])


def test_the_policy_route_sets_the_agents_decisions(
    dnn_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lrrl.schedulers import PolicyScheduler

    seen: list[PolicyScheduler] = []
    original = transfer._scheduler

    def spy(*args):  # type: ignore[no-untyped-def]
        scheduler = original(*args)
        seen.append(scheduler)
        return scheduler

    monkeypatch.setattr(transfer, "_scheduler", spy)
    done = transfer.train(Run(TINY, "adam", "policy", 1e-3, seed=0, agent=str(dnn_run)))
    (scheduler,) = seen
    assert done["lrs"] == pytest.approx(scheduler.decisions[: len(done["lrs"])])
    low, high = transfer.DEFAULT_LR_RANGES["adam"]  # the agent's range for Adam
    assert all(low * (1 - 1e-9) <= lr <= high * (1 + 1e-9) for lr in done["lrs"])


def test_the_study_end_to_end(
    dnn_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transfer, "GRID_POINTS", 2)
    monkeypatch.setattr(transfer, "PRODIGY_LRS", (1.0,))
    monkeypatch.setattr(transfer, "SHORT", Setting("short", steps=WINDOWS, width=8))
    out = tmp_path / "out"
    doc = transfer.main(
        [str(dnn_run), "--out", str(out), "--settings", "long", "--steps-scale", "0.02"]
        + ["--seeds", "2", "--jobs", "1", "--fit-budget", "200", "--samples", "100"]
    )
    for name in ("results.json", "transfer.md", "transfer.png"):
        assert (out / name).is_file()
    on_disk = json.loads((out / "results.json").read_text())
    rows = on_disk["summary"]["long"]
    assert set(rows) == {*transfer.BASELINES, *transfer.ROUTES}
    assert rows["cosine"]["ratio"] == 1.0 and rows["cosine"]["ratio_ci"] == [1.0, 1.0]
    # baselines were tuned on the tuning seeds only, over their grids
    for key, lr in doc["tuned"].items():
        setting, opt, name = key.split("/")
        assert lr in transfer.baseline_grid(transfer.SETTINGS[setting], opt, name)
    results = on_disk["results"]
    assert {r["run"]["seed"] for r in results} == {0, 1}
    assert not {r["run"]["seed"] for r in results} & set(TUNE_SEEDS)
    # the replayed schedule is the agent's own short run, stretched
    learned = on_disk["learned"][f"{dnn_run}/sgd"]
    recorded = json.loads(Path(learned["schedule"]).read_text())
    assert recorded["schema"] == "lrrl.schedule/v1" and len(recorded["episodes"]) == 2
    replay = next(r for r in results if r["run"]["scheduler"] == "replay")
    assert replay["run"]["schedule"] == learned["schedule"]
    per_step = np.repeat(recorded["lr"], recorded["steps_per_action"])
    steps = 2 * WINDOWS  # 0.02 x 2,000: twice the recorded run's length
    stretched = stretch_log_lr(per_step, steps)
    window = steps // WINDOWS
    assert replay["lrs"] == pytest.approx(list(stretched[::window][: len(replay["lrs"])]))
    # the report's table: every scheduler, the ratio column and time to target
    table = (out / "transfer.md").read_text()
    assert "| policy |" in table and "long: val loss / tuned cosine" in table
    assert "| long | sgd | policy |" in table  # along the run: lrs and validation losses
    # --report-from renders the same report from the saved runs, without training
    again = transfer.main(
        ["--report-from", str(out / "results.json"), "--out", str(tmp_path / "again")]
        + ["--samples", "100"]
    )
    assert again["summary"] == on_disk["summary"]
    assert (tmp_path / "again" / "transfer.md").read_text() == table
