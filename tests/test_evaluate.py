"""Baseline schedulers, the evaluation harness, its statistics and ``python -m lrrl.evaluate``."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats as scipy_stats

import lrrl  # noqa: F401
from lrrl import harness, stats
from lrrl.agents.baselines import (
    SCHEDULES,
    GreedyLRSchedule,
    ReduceOnPlateau,
    ScheduleController,
    default_grid,
    greedylr_class,
    unavailable,
)
from lrrl.envs import nmf_ops
from lrrl.harness import EvalSettings, compare, make_env, rollout

SMALL = dict(shape=(30, 24), rank=4, steps_per_action=2, horizon=10, batch_size=None)
UNBOUNDED = dict(SMALL, bound="none", action_mode="log_lr", lr_range=[1e-5, 10.0])
ENV_ID = "lrrl/NMF-v0"

torch.set_num_threads(1)  # small tensors; the machine is shared


def tiny_settings(**kwargs) -> EvalSettings:
    base = dict(
        episodes_per_instance=1,
        lr_grid=[0.01, 0.1],
        baselines=["constant", "step_decay"],
        grids={"step_decay": {"gamma": [0.1], "step_fraction": [0.5]}},
        bootstrap_samples=200,
    )
    return EvalSettings.from_config({**base, **kwargs})


def play(kind: str, env_kwargs: dict, lr: float = 0.05, seed: int = 3):
    env = make_env(ENV_ID, **env_kwargs)
    schedule = default_grid(kind, [lr])[0]
    controller = ScheduleController(kind, schedule)
    instance = env.unwrapped.instances("train")[0]
    return rollout(env, controller, instance, seed), schedule, env


# -- schedulers -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_every_scheduler_acts_with_sane_learning_rates(kind):
    if unavailable(kind, None):
        pytest.skip(unavailable(kind, None))
    episode, _, env = play(kind, SMALL)
    assert len(episode.lr) == SMALL["horizon"] and not episode.diverged
    lrs, bounds = np.array(episode.lr), np.array(episode.lr_bound)
    assert np.all(lrs > 0) and np.all(np.isfinite(lrs))
    assert np.all(lrs <= bounds * env.unwrapped.bound_scale * (1 + 1e-6))  # clipped to the bound
    assert episode.final_loss < episode.loss_0


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", lambda t, T: 0.05),
        ("step_decay", lambda t, T: 0.05 * 0.1 ** (t // round(0.25 * T))),
        ("exponential", lambda t, T: 0.05 * 0.001 ** (t / T)),
        ("cosine", lambda t, T: 0.025 * (1 + math.cos(math.pi * t / T))),
        ("linear", lambda t, T: 0.05 * (1 - t / T)),
    ],
)
def test_open_loop_schedules_request_exactly_their_formula(kind, expected):
    # No bound: the applied lr is the requested one, whatever the agent's action range is.
    episode, _, _ = play(kind, UNBOUNDED)
    T = UNBOUNDED["horizon"]
    want = [expected(t, T) for t in range(T)]
    np.testing.assert_allclose(episode.lr, want, rtol=1e-9)


def test_warmup_stable_decay_shape():
    episode, _, _ = play("wsd", UNBOUNDED)
    episode_ = ScheduleController("wsd", SCHEDULES["wsd"](lr=1.0, warmup_fraction=0.2))
    lrs = [episode_.schedule(t, 10, {}) for t in range(10)]
    assert lrs[0] < lrs[1] == 1.0  # two warmup decisions, then the plateau
    assert lrs[2:8] == [1.0] * 6 and lrs[8] > lrs[9] > 0  # decay over the last 20%
    assert all(lr > 0 for lr in episode.lr)


def test_follow_bound_tracks_the_clip_and_is_skipped_without_one():
    episode, schedule, env = play("follow_bound", SMALL)
    clip = np.array(episode.lr_bound) * env.unwrapped.bound_scale
    np.testing.assert_allclose(episode.lr, schedule.fraction * clip, rtol=1e-6)
    unbounded = make_env(ENV_ID, **UNBOUNDED)
    unbounded.reset(seed=0)
    assert "no stability bound" in unavailable("follow_bound", unbounded)
    result = compare(
        ENV_ID, UNBOUNDED, tiny_settings(baselines=["follow_bound", "constant"]), 0, log=str
    )
    assert "follow_bound" in result.skipped and list(result.episodes) == ["constant"]


def test_plateau_reacts_to_the_loss_and_resets_per_episode():
    runner = ReduceOnPlateau(lr=1.0, factor=0.5, patience=1, threshold=0.0).start()
    losses = [10.0, 9.0, 9.0, 9.0, 9.0, 8.0]
    lrs = [runner(t, 6, {"loss": loss}) for t, loss in enumerate(losses)]
    # t=0 sees no loss of ours; 9 sets the best, two flat steps exceed patience=1 -> halve
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    env = make_env(ENV_ID, **UNBOUNDED)
    controller = ScheduleController("plateau", ReduceOnPlateau(lr=0.5, patience=0))
    inst = env.unwrapped.instances("train")[0]
    first, second = rollout(env, controller, inst, 1), rollout(env, controller, inst, 1)
    assert first.lr == second.lr  # a fresh scheduler every episode


def test_greedylr_adapter_feeds_the_scheduler_the_loss_sequence():
    cls = greedylr_class()
    kwargs = dict(patience=1, cooldown=0, min_lr=1e-4, max_lr=2.0, factor=0.5)
    runner = GreedyLRSchedule(lr=0.1, **kwargs).start()
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    direct = cls(optimizer, **kwargs)
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 2.0, 1.0]
    got = [runner(t, 8, {"loss": loss}) for t, loss in enumerate(losses)]
    want = [0.1]
    for loss in losses[1:]:
        direct.step(loss)
        want.append(optimizer.param_groups[0]["lr"])
    assert got == want and len(set(got)) > 1  # it really moved


def test_schedule_controllers_pickle_for_worker_processes():
    controller = ScheduleController("plateau", ReduceOnPlateau(lr=0.1))
    env = make_env(ENV_ID, **SMALL)
    inst = env.unwrapped.instances("train")[0]
    rollout(env, controller, inst, 0)  # holds a torch optimizer now
    clone = pickle.loads(pickle.dumps(controller))
    assert rollout(env, clone, inst, 2).lr == rollout(env, controller, inst, 2).lr


# -- agents ------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["ppo", "recurrent_ppo"])
def test_agent_controller_plays_deterministically_and_pickles(algo):
    from stable_baselines3.common.env_util import make_vec_env

    from lrrl.agents.sb3 import AgentController, make_agent

    venv = make_vec_env(lambda: make_env(ENV_ID, **SMALL), n_envs=1, seed=0)
    model = make_agent(algo, venv, seed=0, hyperparams={"n_steps": 16, "batch_size": 16})
    controller = AgentController(algo, model)
    env = make_env(ENV_ID, **SMALL)
    inst = env.unwrapped.instances("test")[0]
    first = rollout(env, controller, inst, 5)
    assert rollout(env, controller, inst, 5).lr == first.lr  # hidden state reset per episode
    clone = pickle.loads(pickle.dumps(controller))
    assert clone.algo == algo and rollout(env, clone, inst, 5).lr == first.lr


# -- statistics --------------------------------------------------------------------------------


def test_iqm_is_the_interquartile_mean():
    assert stats.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    x = np.random.default_rng(0).normal(size=37)
    assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))
    assert stats.iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf]) == pytest.approx(4.5)


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_data():
    rng = np.random.default_rng(1)
    small, large = rng.normal(3.0, 1.0, 10), rng.normal(3.0, 1.0, 1000)
    for name in stats.ESTIMATORS:
        low, high = stats.bootstrap_ci(small, name, seed=0)
        point = stats.describe(small)[name]
        assert low <= point <= high
        wide = high - low
        low, high = stats.bootstrap_ci(large, name, seed=0)
        assert high - low < wide / 3
    assert stats.bootstrap_ci(small, seed=4) == stats.bootstrap_ci(small, seed=4)
    assert stats.bootstrap_ci([1.0, 2.0, 3.0, math.inf], "mean")[1] == math.inf


def test_win_rate_and_probability_of_improvement_by_hand():
    assert stats.win_rate([1.0, 2.0, 3.0], [2.0, 2.0, 1.0]) == pytest.approx(0.5)  # 1 + .5 + 0
    assert stats.win_rate([1.0, math.inf], [2.0, math.inf]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="differ in length"):
        stats.win_rate([1.0], [1.0, 2.0])
    a = {"x": [1.0, 3.0], "y": [0.0]}
    b = {"x": [2.0], "y": [1.0], "z": [5.0]}
    # x: P(a<b) = (1 + 0) / 2; y: 1; instances only in one of them are ignored
    assert stats.probability_of_improvement(a, b) == pytest.approx(0.75)
    assert stats.probability_of_improvement(b, a) == pytest.approx(0.25)


def test_optimality_gap_is_zero_at_the_sklearn_solution_with_the_env_loss():
    env = make_env(ENV_ID, **SMALL)
    inst = env.unwrapped.instances("test")[0]
    _, info = env.reset(seed=0, options={"instance": inst})
    V = env.unwrapped.V
    np.testing.assert_allclose(V, inst.matrix(), rtol=1e-6)  # the env factorises this V
    W, H = env.unwrapped.W, env.unwrapped.H
    assert info["loss"] == pytest.approx(0.5 * np.sum((V - W @ H) ** 2), rel=1e-5)
    W_ref, H_ref = stats.reference_factors(inst.matrix(), SMALL["rank"])
    R = nmf_ops.residual(*(torch.tensor(x) for x in (inst.matrix(), W_ref, H_ref)))
    env_loss = float(nmf_ops.loss_from_residual(R))
    loss_star = stats.reference_loss(inst, SMALL["rank"])
    assert env_loss == pytest.approx(loss_star, rel=1e-9)
    assert stats.optimality_gap(env_loss, info["loss"], loss_star) == pytest.approx(0.0, abs=1e-9)
    assert stats.optimality_gap(info["loss"], info["loss"], loss_star) == 1.0
    assert stats.optimality_gap(math.inf, info["loss"], loss_star) == math.inf


# -- the comparison ----------------------------------------------------------------------------


def test_tuning_never_touches_test_instances(monkeypatch):
    calls = []
    real = harness.run_tasks

    def spy(env_id, env_kwargs, tasks, *args, **kwargs):
        calls.append({inst.split for _, inst, _ in tasks})
        return real(env_id, env_kwargs, tasks, *args, **kwargs)

    monkeypatch.setattr(harness, "run_tasks", spy)
    for tuner in ("grid", "optuna"):
        calls.clear()
        settings = tiny_settings(tuner=tuner, tune_budget=2, baselines=["constant", "plateau"])
        compare(ENV_ID, SMALL, settings, 0, log=str)
        *tuning, test = calls
        assert len(tuning) >= 2 and all(splits == {"train"} for splits in tuning)
        assert test == {"test"}


def test_comparison_uses_common_instances_and_seeds_and_sane_gaps():
    settings = tiny_settings(baselines=["constant", "cosine", "follow_bound"])
    result = compare(ENV_ID, SMALL, settings, 7, log=str)
    keys = {
        name: [(e.instance, e.seed, e.loss_0) for e in eps] for name, eps in result.episodes.items()
    }
    first = next(iter(keys.values()))
    assert all(k == first for k in keys.values()) and len(first) == len(
        make_env(ENV_ID, **SMALL).unwrapped.instances("test")
    )
    for name, summary in result.schedulers().items():
        assert summary["tuned_on"] == "train"
        gaps = [v["gap"] for v in summary["per_instance"].values()]
        assert all(-0.05 <= g <= 1.0 for g in gaps), (name, gaps)
        low, high = summary["final_loss_ci"]
        assert low <= summary["final_loss"] <= high
        assert set(summary["win_rate"]) == set(result.episodes) - {name}


def test_bad_eval_settings_name_the_value():
    with pytest.raises(ValueError, match="eval.baselines='bogus'"):
        EvalSettings.from_config({"baselines": ["bogus"]})
    with pytest.raises(ValueError, match="eval.tuner='random'"):
        EvalSettings.from_config({"tuner": "random"})
    with pytest.raises(ValueError, match="unknown eval option"):
        EvalSettings.from_config({"n_workers": 2})


@pytest.mark.slow
def test_parallel_rollouts_equal_serial_ones():
    settings = tiny_settings()
    serial = compare(ENV_ID, SMALL, settings, 0, log=str)
    parallel = compare(ENV_ID, SMALL, tiny_settings(n_jobs=2), 0, log=str)
    for name in serial.episodes:
        assert [e.loss for e in serial.episodes[name]] == [e.loss for e in parallel.episodes[name]]


# -- the command line --------------------------------------------------------------------------


def _cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_reproduces_the_train_runs_comparison(tmp_path):
    from hydra import compose, initialize_config_module

    from lrrl.evaluate import run_evaluation
    from lrrl.pipeline import run_experiment

    overrides = ["env=nmf", "debug=smoke", "env.shape=[40,30]", "env.rank=4", "progress_bar=false"]
    with initialize_config_module("lrrl.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
        eval_cfg = compose("evaluate", overrides=["progress_bar=false"])
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    trained = run_experiment(OmegaConf.to_container(cfg, resolve=True), run_dir)

    config = OmegaConf.to_container(eval_cfg, resolve=True)
    config["run_dir"] = str(run_dir)
    again = run_evaluation(config, run_dir / "eval" / "x")
    assert set(again["schedulers"]) == set(trained["schedulers"])
    for name, summary in trained["schedulers"].items():
        assert again["schedulers"][name]["per_instance"] == summary["per_instance"], name
        assert again["schedulers"][name]["final_loss_ci"] == summary["final_loss_ci"]
    assert again["objective"] == trained["objective"] and again["wins"] == trained["wins"]
    out = run_dir / "eval" / "x"
    assert {p.name for p in out.iterdir()} >= {
        "metrics.json",
        "episodes.csv",
        "schedules.png",
        "intervals.png",
    }
    rows = (out / "episodes.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(s["episodes"] for s in again["schedulers"].values())
    assert json.loads((run_dir / "metrics.json").read_text())["objective"] == trained["objective"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_dir=does/not/exist"], "run_dir='does/not/exist' is invalid"),
        (["schedulers=[constant,bogus]", "hydra.run.dir=out"], "eval.baselines='bogus'"),
    ],
)
def test_evaluate_cli_errors_in_one_line(tmp_path, args, message):
    result = _cli("lrrl.evaluate", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrrl.evaluate: error:") and message in lines[0]


@pytest.mark.slow
def test_evaluate_cli_reproduces_a_smoke_train_run(tmp_path):
    run_dir = tmp_path / "run"
    shrink = ["env=nmf", "debug=smoke", "env.shape=[40,30]", "env.rank=4"]
    trained = _cli("lrrl.train", *shrink, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    evaluated = _cli("lrrl.evaluate", f"run_dir={run_dir}", "progress_bar=false", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    (out,) = (run_dir / "eval").iterdir()
    before = json.loads((run_dir / "metrics.json").read_text())["schedulers"]
    after = json.loads((out / "metrics.json").read_text())["schedulers"]
    assert {n: s["per_instance"] for n, s in after.items()} == {
        n: s["per_instance"] for n, s in before.items()
    }
    assert (out / ".hydra" / "config.yaml").is_file() and (run_dir / "model.zip").is_file()
