"""Baselines, batched rollouts, tuning, statistics, and ``python -m lrrl.evaluate``."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from conftest import SMALL_NMF, compose, run_cli

from lrrl import report, rollout, stats, tuning
from lrrl.agents.baselines import (
    BASELINES,
    GreedyLRSchedule,
    ReduceOnPlateau,
    ScheduleController,
    default_grid,
    make_schedule,
    unavailable,
)
from lrrl.comparison import compare, paired, summarise
from lrrl.config import EnvSpec, EvalConfig
from lrrl.envs import nmf_ops
from lrrl.envs.registration import make_env
from lrrl.rollout import Episode, Job, jobs_for, play, run_jobs

ENV_ID = "lrrl/NMF-v0"
SMALL = {**SMALL_NMF, "horizon": 10}
UNBOUNDED = {**SMALL, "bound": "none", "action_mode": "log_lr", "lr_range": [1e-5, 10.0]}

torch.set_num_threads(1)  # small tensors; the machine is shared


def tiny_eval(**kwargs) -> EvalConfig:
    base = dict(
        episodes_per_instance=1,
        lr_grid=[0.01, 0.1],
        baselines=["constant", "step_decay"],
        unclipped=[],
        grids={"step_decay": {"gamma": [0.1], "step_fraction": [0.5]}},
        bootstrap_samples=200,
        tune_budget=None,
    )
    return EvalConfig.from_dict({**base, **kwargs})


def spec(**options) -> EnvSpec:
    return EnvSpec.from_dict({"id": ENV_ID, "name": "nmf", **options})


def play_one(name: str, env_kwargs: dict, lr: float = 0.05, seed: int = 3):
    env = make_env(ENV_ID, **env_kwargs)
    schedule = default_grid(name, [lr])[0]
    controller = ScheduleController(name, schedule)
    instance = env.unwrapped.instances("train")[0]
    return play(env, Job(controller, instance, seed)), schedule, env


# -- schedulers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_acts_with_sane_learning_rates(name):
    episode, _, env = play_one(name, SMALL)
    assert len(episode.lr) == SMALL["horizon"] and not episode.diverged
    lrs, bounds = np.array(episode.lr), np.array(episode.lr_bound)
    assert np.all(lrs > 0) and np.all(np.isfinite(lrs))
    assert np.all(lrs <= bounds * env.unwrapped.cfg.bound_scale * (1 + 1e-6))  # clipped
    assert episode.final_loss < episode.loss_0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("constant", lambda t, T: 0.05),
        ("step_decay", lambda t, T: 0.05 * 0.1 ** (t // round(0.25 * T))),
        ("exponential", lambda t, T: 0.05 * 0.001 ** (t / T)),
        ("cosine", lambda t, T: 0.025 * (1 + math.cos(math.pi * t / T))),
        ("linear", lambda t, T: 0.05 * (1 - t / T)),
    ],
)
def test_open_loop_schedules_request_exactly_their_formula(name, expected):
    # No bound: the applied lr is the requested one, whatever the agent's action range is.
    episode, _, _ = play_one(name, UNBOUNDED)
    T = UNBOUNDED["horizon"]
    np.testing.assert_allclose(episode.lr, [expected(t, T) for t in range(T)], rtol=1e-9)


def test_schedules_act_elementwise_on_arrays_as_on_scalars():
    t = np.array([0, 3, 7, 12, 40])
    horizon = np.array([10, 10, 20, 50, 50])
    for name in ("constant", "step_decay", "exponential", "cosine", "linear", "wsd"):
        for schedule in default_grid(name, [0.1, 1.0])[:5]:
            batch = schedule(t, horizon)
            single = [
                float(schedule(np.array(a), np.array(b))) for a, b in zip(t, horizon, strict=True)
            ]
            np.testing.assert_allclose(batch, single, rtol=1e-12)


def test_warmup_stable_decay_shape():
    schedule = make_schedule("wsd", lr=1.0, warmup_fraction=0.2)
    lrs = schedule(np.arange(10), np.full(10, 10)).tolist()
    assert lrs[0] < lrs[1] == 1.0  # two warmup decisions, then the plateau
    assert lrs[2:8] == [1.0] * 6 and lrs[8] > lrs[9] > 0  # decay over the last 20%


def test_follow_bound_tracks_the_clip_and_is_skipped_without_one():
    episode, schedule, env = play_one("follow_bound", SMALL)
    clip = np.array(episode.lr_bound) * env.unwrapped.cfg.bound_scale
    np.testing.assert_allclose(episode.lr, schedule.fraction * clip, rtol=1e-6)
    unbounded = make_env(ENV_ID, **UNBOUNDED)
    unbounded.reset(seed=0)
    assert "no stability bound" in unavailable("follow_bound", unbounded)
    result = compare(spec(**UNBOUNDED), tiny_eval(baselines=["follow_bound", "constant"]), log=str)
    assert "follow_bound" in result.skipped and list(result.episodes) == ["constant"]


def test_plateau_reacts_to_the_loss_and_resets_per_episode():
    controller = ScheduleController(
        "plateau", ReduceOnPlateau(lr=1.0, factor=0.5, patience=1, threshold=0.0)
    )
    controller.reset(1)
    losses = [10.0, 9.0, 9.0, 9.0, 9.0, 8.0]
    lrs = []
    for t, loss in enumerate(losses):
        state = rollout.DecisionState(
            np.array([t]), np.array([6]), np.array([loss]), np.array([np.inf])
        )
        lrs.append(float(controller.act(np.zeros((1, 8)), state).lr[0]))
    # t=0 sees no loss of ours; 9 sets the best, two flat steps exceed patience=1 -> halve
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    env = make_env(ENV_ID, **UNBOUNDED)
    plateau = ScheduleController("plateau", ReduceOnPlateau(lr=0.5, patience=0))
    inst = env.unwrapped.instances("train")[0]
    first, second = play(env, Job(plateau, inst, 1)), play(env, Job(plateau, inst, 1))
    assert first.lr == second.lr  # a fresh scheduler every episode


def test_greedylr_decision_cadence_feeds_the_scheduler_each_decision_loss():
    from lrrl.schedulers import GreedyLR

    kwargs = dict(patience=1, cooldown=0, min_lr=1e-4, max_lr=2.0, factor=0.5)
    controller = ScheduleController("g", GreedyLRSchedule(lr=0.1, **kwargs))
    controller.reset(1)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    direct = GreedyLR(optimizer, **kwargs)
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 2.0, 1.0]
    got, want = [], [0.1]
    for t, loss in enumerate(losses):
        state = rollout.DecisionState(
            np.array([t]), np.array([8]), np.array([loss]), np.array([np.inf])
        )
        got.append(float(controller.act(np.zeros((1, 8)), state).lr[0]))
    for loss in losses[1:]:
        direct.step(loss)
        want.append(optimizer.param_groups[0]["lr"])
    assert got == want and len(set(got)) > 1  # it really moved


def test_greedylr_step_cadence_sees_every_inner_step_loss():
    """At its natural cadence GreedyLR is stepped on each inner optimizer step's loss."""
    seen = []

    class Recording(ScheduleController):
        def inner(self, k, rows, losses):
            seen.append((k, rows.tolist(), losses.tolist()))
            return super().inner(k, rows, losses)

    kwargs = {**UNBOUNDED, "steps_per_action": 4, "horizon": 5, "families": ("exact",)}
    schedule = GreedyLRSchedule(lr=0.01, factor=0.5, patience=0, cadence="step")
    controller = Recording("greedylr", schedule)
    env = make_env(ENV_ID, **kwargs)
    inst = env.unwrapped.instances("test")[0]
    episode = play(env, Job(controller, inst, 0))
    assert [k for k, _, _ in seen] == list(range(4)) * 5
    # On full gradients the first inner loss is the episode's initial loss.
    assert seen[0][2][0] == pytest.approx(episode.loss[0], rel=1e-5)
    assert len(set(episode.lr)) > 1  # it acted between decisions
    # The same controller in the batched rollout plays the same episode.
    (batched,) = run_jobs(ENV_ID, kwargs, [Job(Recording("greedylr", schedule), inst, 0)])
    np.testing.assert_allclose(batched.loss, episode.loss, rtol=1e-5)
    np.testing.assert_allclose(batched.lr, episode.lr, rtol=1e-6)


def test_schedule_controllers_pickle_for_worker_processes():
    controller = ScheduleController("plateau", ReduceOnPlateau(lr=0.1))
    env = make_env(ENV_ID, **SMALL)
    inst = env.unwrapped.instances("train")[0]
    play(env, Job(controller, inst, 0))  # holds torch optimizers now
    clone = pickle.loads(pickle.dumps(controller))
    assert play(env, Job(clone, inst, 2)).lr == play(env, Job(controller, inst, 2)).lr


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
    first = play(env, Job(controller, inst, 5))
    assert play(env, Job(controller, inst, 5)).lr == first.lr  # hidden state reset per episode
    clone = pickle.loads(pickle.dumps(controller))
    assert clone.algo == algo and play(env, Job(clone, inst, 5)).lr == first.lr
    # one batched predict for many episodes gives what one-by-one play gives
    runs = rollout.episode_seeds(env.unwrapped.instances("test"), 2, 3)
    batched = run_jobs(ENV_ID, SMALL, jobs_for([controller], runs))
    for (inst, seed), episode in zip(runs, batched, strict=True):
        single = play(env, Job(controller, inst, seed))
        np.testing.assert_allclose(episode.lr, single.lr, rtol=1e-5)


# -- batched rollouts --------------------------------------------------------------------------


def test_batched_rollouts_equal_the_per_episode_path():
    """Every scheduler's episodes on the batched env are those of one env, episode by episode."""
    kwargs = {
        **SMALL,
        "families": ("base", "rank", "exact", "grad_noise", "horizon", "digits"),
        "dtype": "float64",
    }
    env = make_env(ENV_ID, **kwargs)
    runs = rollout.episode_seeds(env.unwrapped.instances("test"), 2, 11)
    controllers = [
        ScheduleController("constant", make_schedule("constant", lr=0.05)),
        ScheduleController("cosine", make_schedule("cosine", lr=1.0)),
        ScheduleController("follow_bound", make_schedule("follow_bound", fraction=0.7)),
        ScheduleController("plateau", make_schedule("plateau", lr=0.5, patience=0)),
        ScheduleController("greedylr", make_schedule("greedylr", lr=0.5, factor=0.7, patience=1)),
    ]
    jobs = jobs_for(controllers, runs)
    batched = run_jobs(ENV_ID, kwargs, jobs, chunk=7)  # chunks mix instances and schedulers
    for job, episode in zip(jobs, batched, strict=True):
        single = play(env, job)
        assert (episode.scheduler, episode.instance, episode.seed) == (
            single.scheduler,
            single.instance,
            single.seed,
        )
        np.testing.assert_allclose(episode.loss, single.loss, rtol=1e-9)
        np.testing.assert_allclose(episode.lr, single.lr, rtol=1e-9)
        assert episode.clipped == single.clipped and episode.diverged == single.diverged
    assert len({e.family for e in batched}) == 6


def test_results_do_not_depend_on_chunks_or_workers():
    """Up to summation order: padded shapes change how products are blocked."""
    env = spec(**SMALL, dtype="float64")
    runs = rollout.episode_seeds(make_env(ENV_ID, **SMALL).unwrapped.instances("test"), 2, 0)
    jobs = jobs_for([ScheduleController("c", make_schedule("constant", lr=0.1))], runs)
    whole = run_jobs(env.id, env.options, jobs, chunk=256)
    pieces = run_jobs(env.id, env.options, jobs, chunk=2, workers=2)
    for a, b in zip(whole, pieces, strict=True):
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batched_rollouts_on_cuda_equal_the_cpu_ones():
    """The evaluation path on the GPU (env.device=cuda): same episodes as on the CPU."""
    kwargs = {**SMALL, "families": ("base", "exact", "grad_noise"), "dtype": "float64"}
    runs = rollout.episode_seeds(make_env(ENV_ID, **kwargs).unwrapped.instances("test"), 1, 3)
    jobs = jobs_for([ScheduleController("c", make_schedule("cosine", lr=1.0))], runs)
    cpu = run_jobs(ENV_ID, kwargs, jobs)
    gpu = run_jobs(ENV_ID, {**kwargs, "device": "cuda"}, jobs)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
        np.testing.assert_allclose(a.lr, b.lr, rtol=1e-6)


# -- tuning and the comparison ---------------------------------------------------------------


def test_tuning_picks_the_best_candidate_and_never_touches_test_instances(monkeypatch):
    calls = []
    real = tuning.run_jobs

    def spy(env_id, env_kwargs, jobs, *args, **kwargs):
        calls.append({job.instance.split for job in jobs})
        return real(env_id, env_kwargs, jobs, *args, **kwargs)

    monkeypatch.setattr(tuning, "run_jobs", spy)
    env = spec(**SMALL)
    u = make_env(ENV_ID, **SMALL).unwrapped
    runs = rollout.episode_seeds(u.instances("tune"), 1, 2)
    for tuner in ("grid", "optuna"):
        calls.clear()
        ev = tiny_eval(
            tuner=tuner, tune_budget=2 if tuner == "optuna" else None, lr_grid=[1e-3, 0.3]
        )
        result = tuning.tune(env, {"constant": "constant"}, runs, ev)["constant"]
        assert calls and all(splits == {"tune"} for splits in calls)
        if tuner == "grid":
            scores = {}
            for lr in (1e-3, 0.3):
                c = ScheduleController("constant", make_schedule("constant", lr=lr))
                scores[lr] = tuning.score(real(ENV_ID, SMALL, jobs_for([c], runs)))
            assert result.controller.schedule.lr == min(scores, key=scores.get)
            assert result.tune_score == pytest.approx(min(scores.values()))


def test_hindsight_takes_the_best_candidate_of_each_episode():
    env = spec(**SMALL)
    u = make_env(ENV_ID, **SMALL).unwrapped
    runs = rollout.episode_seeds(u.instances("test"), 1, 1)
    ev = tiny_eval(lr_grid=[1e-3, 0.03, 1.0])
    best = tuning.hindsight(env, {"h": "constant"}, runs, ev)["h"]
    each = {
        lr: run_jobs(
            ENV_ID,
            SMALL,
            jobs_for([ScheduleController("x", make_schedule("constant", lr=lr))], runs),
        )
        for lr in ev.lr_grid
    }
    for j, episode in enumerate(best):
        assert episode.log_loss_ratio == min(each[lr][j].log_loss_ratio for lr in ev.lr_grid)


def test_comparison_shares_instances_and_seeds_and_reports_what_it_should():
    ev = tiny_eval(
        baselines=["constant", "cosine", "follow_bound"],
        unclipped=["constant"],
        headroom=True,
        lr_grid=[0.01, 0.1, 1.0],
    )
    result = compare(spec(**SMALL), ev, log=str)
    assert set(result.episodes) == {
        "constant",
        "cosine",
        "follow_bound",
        "constant@unclipped",
        "hindsight_constant",
        "hindsight_step_decay",
    }
    keys = {n: [(e.instance, e.seed, e.loss_0) for e in eps] for n, eps in result.episodes.items()}
    first = next(iter(keys.values()))
    assert all(k == first for k in keys.values())
    assert len(first) == len(make_env(ENV_ID, **SMALL).unwrapped.instances("test"))
    unclipped = result.episodes["constant@unclipped"]
    assert all(not any(e.clipped) and math.isinf(e.lr_bound[0]) for e in unclipped)
    for name in ("constant", "cosine", "follow_bound"):
        assert result.details[name]["tuned_on"] == "tune"
    for summary in result.summaries.values():
        low, high = summary["log_loss_ratio_ci"]
        assert low <= summary["log_loss_ratio"] <= high
        assert set(summary["families"]) == {"base", "exact", "digits"}
    # the hindsight reference is no worse than its tuned family on any episode
    for h, t in zip(
        result.episodes["hindsight_constant"], result.episodes["constant"], strict=True
    ):
        assert h.log_loss_ratio <= t.log_loss_ratio + 1e-12


def test_bad_eval_settings_name_the_value():
    with pytest.raises(ValueError, match="eval.baselines='bogus'"):
        EvalConfig.from_dict({"baselines": ["bogus"]})
    with pytest.raises(ValueError, match="eval.tuner='random'"):
        EvalConfig.from_dict({"tuner": "random"})
    with pytest.raises(ValueError, match="unknown eval option"):
        EvalConfig.from_dict({"n_workers": 2})


# -- statistics ---------------------------------------------------------------------------------


def _episode(name, instance, seed, losses, lrs=None, family="f", diverged=False):
    lrs = lrs if lrs is not None else [0.1] * (len(losses) - 1)
    return Episode(
        name,
        instance,
        seed,
        family,
        lr=lrs,
        lr_bound=[1.0] * len(lrs),
        loss=losses,
        clipped=[False] * len(lrs),
        diverged=diverged,
    )


def test_stability_metrics_count_spikes_and_lr_jitter():
    e = _episode("a", "i", 0, [10.0, 8.0, 13.0, 12.0, 20.0, 5.0], lrs=[0.1, 0.2, 0.1, 0.1, 0.4])
    assert e.spikes == 2  # 8 -> 13 and 12 -> 20 rise more than 1.5x; 10 -> 8 etc. do not
    assert e.lr_jitter == pytest.approx(np.mean(np.abs(np.diff(np.log([0.1, 0.2, 0.1, 0.1, 0.4])))))
    assert _episode("c", "i", 0, [3.0, 2.0, 1.0]).lr_jitter == 0.0


def test_paired_ratio_recovers_a_known_ratio_with_an_interval():
    rng = np.random.default_rng(0)
    a, b = [], []
    for i in range(60):
        base = rng.uniform(0.1, 1.0)  # the instance's difficulty
        for s in range(2):
            noise = rng.normal(0, 0.05)
            b.append(_episode("b", f"i{i}", s, [1.0, base]))
            a.append(
                _episode("a", f"i{i}", s, [1.0, base * 0.8 * math.exp(noise)], family=f"f{i % 3}")
            )
    out = paired(a, b, samples=500)
    assert out["ratio"] == pytest.approx(0.8, rel=0.03)
    low, high = out["ratio_ci"]
    assert low < 0.8 < high and high - low < 0.05
    assert out["probability_of_improvement"] > 0.95 and out["win_rate"] > 0.95
    assert set(out["families"]) == {"f0", "f1", "f2"} or set(out["families"]) == {"f"}


def test_divergences_score_as_a_thousandfold_loss():
    assert stats.scores([-1.0, math.inf, math.nan])[1:].tolist() == [stats.DIVERGED] * 2
    ep = _episode("a", "i", 0, [1.0, 0.5, math.inf], diverged=True)
    s = summarise([ep, _episode("a", "j", 0, [1.0, 0.5, 0.25])], samples=100)
    assert s["divergence_rate"] == 0.5
    assert s["log_loss_ratio"] == pytest.approx((stats.DIVERGED + math.log(0.25)) / 2)


def test_headroom_capture_by_hand():
    fam = {"x": {"ratio": 0.9, "ratio_ci": [0.8, 1.0]}, "y": {"ratio": 1.0, "ratio_ci": [0.9, 1.1]}}
    summaries = {
        "ppo": {
            "log_loss_ratio": -1.0,
            "spikes_per_episode": 0.0,
            "lr_jitter": 0.1,
            "divergence_rate": 0.0,
        },
        "constant": {
            "log_loss_ratio": -0.9,
            "spikes_per_episode": 0.0,
            "vs_subject": {
                "ratio": 0.95,
                "ratio_ci": [0.9, 1.0],
                "probability_of_improvement": 0.6,
                "probability_of_improvement_ci": [0.5, 0.7],
                "families": fam,
            },
        },
        "hindsight_constant": {
            "log_loss_ratio": -1.2,
            "spikes_per_episode": 0.0,
            "vs_subject": {
                "ratio": 1.2,
                "ratio_ci": [1.1, 1.3],
                "probability_of_improvement": 0.3,
                "probability_of_improvement_ci": [0.2, 0.4],
                "families": {
                    "x": {"ratio": 1.125, "ratio_ci": [1.0, 1.2]},
                    "y": {"ratio": 1.25, "ratio_ci": [1.1, 1.4]},
                },
            },
        },
    }
    room = report.headline(summaries, "ppo")["headroom"]
    # x: hindsight/best = 0.9 / 1.125 = 0.8; ppo/best = 0.9: captured log(0.9)/log(0.8)
    assert room["x"]["hindsight_over_best"] == pytest.approx(0.8)
    assert room["x"]["captured"] == pytest.approx(math.log(0.9) / math.log(0.8))
    assert room["y"]["captured"] == pytest.approx(0.0)
    # Baselines compared without an agent carry no paired figures: no headroom, no crash
    # (python -m lrrl.evaluate env=nmf eval.headroom=true, the README's shared evaluation).
    alone = {k: {x: y for x, y in v.items() if x != "vs_subject"} for k, v in summaries.items()}
    alone["constant"]["lr_jitter"], alone["constant"]["divergence_rate"] = 0.0, 0.0
    alone["cosine"] = {"log_loss_ratio": -0.8, "spikes_per_episode": 0.0}
    assert "headroom" not in report.headline(alone, "constant")


def test_optimality_gap_is_zero_at_the_sklearn_solution_with_the_env_loss():
    env = make_env(ENV_ID, **SMALL)
    inst = env.unwrapped.instances("test")[0]
    _, info = env.reset(seed=0, options={"instance": inst})
    V, W, H = env.unwrapped.V, env.unwrapped.W, env.unwrapped.H
    assert info["loss"] == pytest.approx(0.5 * np.sum((V - W @ H) ** 2), rel=1e-5)
    W_ref, H_ref = stats.reference_factors(inst.matrix(), inst.rank)
    Rt = nmf_ops.residual(*(torch.tensor(x) for x in (inst.matrix().T, W_ref.T, H_ref)))
    env_loss = float(nmf_ops.loss_from_residual(Rt))
    loss_star = stats.reference_loss(inst)
    assert env_loss == pytest.approx(loss_star, rel=1e-9)
    assert stats.optimality_gap(env_loss, info["loss"], loss_star) == pytest.approx(0.0, abs=1e-9)
    assert stats.optimality_gap(info["loss"], info["loss"], loss_star) == 1.0
    assert stats.optimality_gap(math.inf, info["loss"], loss_star) == math.inf


# -- the command line --------------------------------------------------------------------------


def test_evaluate_reproduces_the_train_runs_comparison(tiny_run, tmp_path):
    from lrrl.evaluate import run_evaluation

    trained = json.loads((tiny_run / "metrics.json").read_text())
    config = compose("progress_bar=false", config_name="evaluate")
    config["run_dir"] = str(tiny_run)
    again = run_evaluation(config, tmp_path / "x")
    assert set(again["schedulers"]) == set(trained["schedulers"])
    for name, summary in trained["schedulers"].items():
        assert again["schedulers"][name]["per_instance"] == summary["per_instance"], name
        assert again["schedulers"][name]["log_loss_ratio_ci"] == summary["log_loss_ratio_ci"]
    assert again["objective"] == trained["objective"]
    assert {p.name for p in (tmp_path / "x").iterdir()} >= {
        "metrics.json",
        "episodes.csv",
        "schedules.png",
        "intervals.png",
    }
    rows = (tmp_path / "x" / "episodes.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(s["episodes"] for s in again["schedulers"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run_dir=does/not/exist"], "run_dir='does/not/exist' is invalid"),
        (["schedulers=[constant,bogus]", "hydra.run.dir=out"], "eval.baselines='bogus'"),
    ],
)
def test_evaluate_cli_errors_in_one_line(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path, tool="lrrl.evaluate")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrrl.evaluate: error:") and message in lines[0]


@pytest.mark.slow
def test_evaluate_cli_reproduces_a_train_run(tiny_run, tmp_path):
    evaluated = run_cli(
        f"run_dir={tiny_run}",
        "progress_bar=false",
        "hydra.run.dir=" + str(tmp_path / "e"),
        cwd=tmp_path,
        tool="lrrl.evaluate",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    before = json.loads((tiny_run / "metrics.json").read_text())["schedulers"]
    after = json.loads((tmp_path / "e" / "metrics.json").read_text())["schedulers"]
    assert {n: s["per_instance"] for n, s in after.items()} == {
        n: s["per_instance"] for n, s in before.items()
    }
    assert (tmp_path / "e" / ".hydra" / "config.yaml").is_file()


def test_intervals_are_reproducible_and_leave_the_global_generator_alone():
    x = np.random.default_rng(0).normal(size=(2, 30))
    np.random.seed(123)  # noqa: NPY002
    before = np.random.get_state()[1].copy()  # noqa: NPY002
    first = stats.describe(x, samples=300, seed=4)
    assert stats.describe(x, samples=300, seed=4) == first
    assert stats.describe(x, samples=300, seed=5) != first
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002


def test_vectorised_bootstrap_agrees_with_rliable():
    """rliable is the reference: same estimators, same resampling scheme, same intervals."""
    from rliable import library, metrics

    x = np.random.default_rng(3).normal(size=(4, 60)) + np.linspace(0, 2, 60)
    ours = stats.describe(x, samples=4000, seed=1)
    np.random.seed(0)  # noqa: NPY002  (rliable draws from the global generator)
    names = ("mean", "median", "iqm")
    point, ci = library.get_interval_estimates(
        {"x": x},
        lambda s: np.array(
            [metrics.aggregate_mean(s), metrics.aggregate_median(s), metrics.aggregate_iqm(s)]
        ),
        reps=4000,
        task_bootstrap=True,
    )
    for i, name in enumerate(names):
        assert ours[name] == pytest.approx(point["x"][i], rel=1e-12)
        width = ci["x"][1, i] - ci["x"][0, i]
        assert ours[f"{name}_ci"][0] == pytest.approx(ci["x"][0, i], abs=0.1 * width)
        assert ours[f"{name}_ci"][1] == pytest.approx(ci["x"][1, i], abs=0.1 * width)
    y = x + np.random.default_rng(4).normal(0.3, 1.0, size=x.shape)
    poi = stats.probability_of_improvement(x, y)["probability_of_improvement"]
    assert poi == pytest.approx(metrics.probability_of_improvement(-x, -y), rel=1e-12)
