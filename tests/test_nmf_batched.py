"""The batched NMF env: registration, step-by-step agreement with single envs, SB3 training."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_NMF, tiny_config

from lrrl.agents.vec import (
    BatchedVecEnv,
    ShardedVecEnv,
    make_training_vec_env,
    resolve_vec_env,
)
from lrrl.cli import ConfigError
from lrrl.envs.nmf_batched import BatchedNMFEnv, make_batched
from lrrl.pipeline import run_experiment, validate

#: Families that differ in shape, rank, minibatch size, gradient noise and horizon, so one
#: batch mixes all of them.
MIXED = {
    **SMALL_NMF,
    "families": ("base", "rank", "exact", "grad_noise", "horizon", "digits"),
    "n_train": 3,
}


def _compare_with_singles(kwargs, seed, steps, actions_fn, B=6, atol_obs=1e-5, rtol=1e-7):
    """Step a batched env and ``B`` single envs side by side, autoresets included."""
    venv = make_batched(B, **kwargs)
    singles = [gym.make("lrrl/NMF-v0", **kwargs) for _ in range(B)]
    obs, info = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        o, si = env.reset(seed=seed + i)
        np.testing.assert_allclose(obs[i], o, atol=atol_obs)
        assert info["instance"][i] == si["instance"]
        assert info["loss"][i] == pytest.approx(si["loss"], rel=rtol)
    done = np.zeros(B, dtype=bool)
    ends = 0
    seen = set(info["instance"])
    for t in range(steps):
        actions = actions_fn(t, B)
        obs, rewards, term, trunc, info = venv.step(actions)
        for i, env in enumerate(singles):
            if done[i]:  # NextStep autoreset: this step resets sub-env i
                o, si = env.reset()
                r, te, tr = 0.0, False, False
                assert np.isnan(info["lr"][i])
            else:
                o, r, te, tr, si = env.step(actions[i])
                assert info["lr"][i] == pytest.approx(si["lr"], rel=rtol)
                assert info["inner_capped"][i] == si["inner_capped"]
                assert info["diverged"][i] == si["diverged"]
                assert info["clipped"][i] == si["clipped"]
            np.testing.assert_allclose(obs[i], o, atol=atol_obs)
            assert rewards[i] == pytest.approx(r, rel=rtol, abs=1e-9)
            assert info["lr_bound"][i] == pytest.approx(si["lr_bound"], rel=rtol)
            assert info["loss"][i] == pytest.approx(si["loss"], rel=rtol)
            assert info["instance"][i] == si["instance"]
            assert (term[i], trunc[i]) == (te, tr)
        seen |= set(info["instance"])
        done = term | trunc
        ends += int(done.sum())
    return ends, seen


def test_make_vec_returns_the_batched_env():
    venv = gym.make_vec(
        "lrrl/NMF-v0", num_envs=3, vectorization_mode="vector_entry_point", **SMALL_NMF
    )
    assert isinstance(venv, BatchedNMFEnv)
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, 8) and venv.observation_space.contains(obs)
    assert info["loss"].shape == (3,) and info["_loss"].all()
    assert venv.action_space.shape == (3, 1)


@pytest.mark.parametrize(
    "extra",
    [
        {"noise_std": 0.05},
        {"bound": "deterministic", "action_mode": "delta"},
        {"action_mode": "log_lr", "bound": "none", "lr_range": (1e-3, 0.3)},
    ],
)
def test_same_trajectories_as_single_envs_on_mixed_instances_float64(extra):
    rng = np.random.default_rng(1)
    ends, seen = _compare_with_singles(
        {**MIXED, **extra, "dtype": "float64"},
        seed=7,
        steps=25,
        actions_fn=lambda t, B: rng.uniform(-1, 1, (B, 1)).astype(np.float32),
    )
    assert ends >= 6  # every sub-env ended and was autoreset at least once
    families = {name.split("-")[0] for name in seen}
    assert len(families) >= 4  # the batch really mixed instances of different kinds


def test_same_trajectories_as_single_envs_float32():
    rng = np.random.default_rng(2)
    _compare_with_singles(
        {**MIXED, "bound_scale": 2.0, "lr_floor": 0.05},
        seed=0,
        steps=8,
        actions_fn=lambda t, B: rng.uniform(-1, 1, (B, 1)).astype(np.float32),
        atol_obs=1e-4,
        rtol=1e-4,
    )


def test_divergence_ends_only_that_sub_env():
    kwargs = {
        **SMALL_NMF,
        "bound": "none",
        "action_mode": "log_lr",
        "lr_range": (1e-3, 1e6),
        "divergence_penalty": 7.0,
    }

    def actions(t, B):
        a = np.full((B, 1), -1.0, dtype=np.float32)
        if t == 0:
            a[2] = 1.0  # a huge learning rate in sub-env 2 only
        return a

    _compare_with_singles(
        kwargs, seed=3, steps=3, actions_fn=actions, B=4, atol_obs=1e-4, rtol=1e-4
    )
    venv = make_batched(4, **kwargs)
    venv.reset(seed=3)
    _, rewards, term, trunc, info = venv.step(actions(0, 4))
    assert term.tolist() == [False, False, True, False] and not trunc.any()
    assert info["diverged"].tolist() == [False, False, True, False]
    assert rewards[2] == -7.0 and np.isfinite(rewards).all()
    assert (rewards[[0, 1, 3]] > 0).all()
    obs, _, term, _, info = venv.step(actions(1, 4))  # sub-env 2 autoresets, the rest go on
    assert not term.any() and np.isfinite(obs).all() and np.isnan(info["lr"][2])


def test_same_step_autoreset_reports_final_obs_and_info():
    venv = make_batched(3, **SMALL_NMF, autoreset_mode="SameStep")
    venv.reset(seed=0, options={"instance": [0, 1, 2]})
    for _ in range(SMALL_NMF["horizon"]):
        obs, _, term, trunc, info = venv.step(np.zeros((3, 1), np.float32))
    assert trunc.all() and not term.any()
    assert info["_final_obs"].all() and info["final_obs"][0].shape == (8,)
    assert info["final_info"]["inner_capped"].shape == (3,)
    assert (obs[:, 7] == 0).all()  # progress restarts: already reset
    assert np.isnan(info["lr"]).all() and not info["_inner_capped"].any()


def test_disabled_autoreset_idles_finished_sub_envs_until_reset():
    venv = make_batched(3, **{**SMALL_NMF, "families": ("horizon",)}, autoreset_mode="Disabled")
    short, long = venv.instances("train")[0], venv.instances("train")[1]
    assert short.horizon < long.horizon
    venv.reset(seed=0, options={"instance": [short, long, long]})
    for _ in range(short.horizon):
        _, _, _, trunc, info = venv.step(np.zeros((3, 1), np.float32))
    assert trunc.tolist() == [True, False, False]
    frozen = info["loss"][0]
    _, rewards, term, trunc, info = venv.step(np.zeros((3, 1), np.float32))
    assert rewards[0] == 0.0 and not term[0] and not trunc[0] and not info["_lr"][0]
    assert info["loss"][0] == frozen and info["_lr"][1:].all()
    _, info = venv.reset(seed=5, options={"reset_mask": np.array([True, False, False])})
    assert info["_loss"].tolist() == [True, False, False]
    _, _, _, _, info = venv.step(np.zeros((3, 1), np.float32))
    assert info["_lr"].all()


def test_request_lr_per_sub_env_and_nan_leaves_the_action():
    venv = make_batched(2, **{**SMALL_NMF, "families": ("exact",)})
    venv.reset(seed=0, options={"instance": 0})
    clip = venv.clips
    venv.request_lr([0.25 * clip[0], math.nan])
    _, _, _, _, info = venv.step(np.ones((2, 1), np.float32))
    assert info["lr"][0] == pytest.approx(0.25 * clip[0])
    assert info["lr"][1] == pytest.approx(clip[1])  # the action +1: the clip
    with pytest.raises(ValueError, match="lr"):
        venv.request_lr([-1.0, 1.0])


def test_nan_actions_never_raise():
    venv = make_batched(3, **SMALL_NMF)
    venv.reset(seed=0)
    obs, rewards, *_ = venv.step(np.array([[math.nan], [math.inf], [-math.inf]], np.float32))
    assert venv.observation_space.contains(obs) and np.isfinite(rewards).all()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_envs": 0}, "num_envs"),
        ({"num_envs": 2, "rank": 0}, "rank"),
        ({"num_envs": 2, "autoreset_mode": "later"}, "autoreset_mode"),
    ],
)
def test_bad_input_one_line_errors(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        BatchedNMFEnv(**{**SMALL_NMF, **kwargs})
    assert "\n" not in str(err.value)
    venv = make_batched(2, **SMALL_NMF)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="actions"):
        venv.step(np.zeros((3, 1), np.float32))


def step_alike(a, b, n_envs, steps, atol, rtol, reward_atol):
    """Step SB3 vec envs ``a`` and ``b`` with the same random actions and assert they agree:
    observations, rewards, dones and each sub-env's infos (instance, loss, episode ends with
    their statistics and terminal observations). Returns the number of episodes that ended."""
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(steps):
        act = rng.uniform(-1, 1, (n_envs, 1)).astype(np.float32)
        oa, ra, da, ia = a.step(act)
        ob, rb, db, ib = b.step(act)
        np.testing.assert_allclose(oa, ob, atol=atol)
        np.testing.assert_allclose(ra, rb, rtol=rtol, atol=reward_atol)
        assert da.tolist() == db.tolist()
        for x, y in zip(ia, ib, strict=True):
            assert x["instance"] == y["instance"]
            assert x["TimeLimit.truncated"] == y["TimeLimit.truncated"]
            assert x["loss"] == pytest.approx(y["loss"], rel=1e-6)
            assert ("terminal_observation" in x) == ("terminal_observation" in y)
            assert ("episode" in x) == ("episode" in y)
            if "episode" in y:
                ended += 1
                assert x["episode"]["r"] == pytest.approx(y["episode"]["r"], rel=1e-4)
                assert x["episode"]["l"] == y["episode"]["l"]
                np.testing.assert_allclose(
                    x["terminal_observation"], y["terminal_observation"], atol=atol
                )
    return ended


def test_sb3_adapter_matches_dummy_vec_env():
    kwargs = {**MIXED, "dtype": "float64"}
    batched = make_training_vec_env("lrrl/NMF-v0", kwargs, 3, seed=5, kind="batched")
    dummy = make_training_vec_env("lrrl/NMF-v0", kwargs, 3, seed=5, kind="dummy")
    assert isinstance(batched, BatchedVecEnv)
    np.testing.assert_allclose(batched.reset(), dummy.reset(), atol=1e-6)
    step_alike(
        batched, dummy, 3, 2 * SMALL_NMF["horizon"] + 1, atol=1e-5, rtol=1e-5, reward_atol=1e-7
    )
    assert batched.env_method("config")[0]["rank"] == SMALL_NMF["rank"]
    batched.close()
    dummy.close()


def test_vec_env_is_validated():
    with pytest.raises(ConfigError, match="agent.vec_env") as err:
        validate(tiny_config("agent.vec_env=threads"))
    assert "\n" not in str(err.value)
    validate(tiny_config("agent.vec_env=batched"))  # accepted for NMF
    with pytest.raises(ConfigError, match="agent.env_workers"):
        validate(tiny_config("agent.env_workers=0"))
    with pytest.raises(ValueError, match="only .*lrrl/NMF-v0"):
        make_training_vec_env("lrrl/DNN-v0", {}, 2, 0, "batched")


def test_auto_picks_the_batched_env_for_nmf_only():
    assert resolve_vec_env("auto", "lrrl/NMF-v0") == "batched"
    assert resolve_vec_env("auto", "lrrl/DNN-v0") == "dummy"
    assert resolve_vec_env("subproc", "lrrl/NMF-v0") == "subproc"
    assert isinstance(make_training_vec_env("lrrl/NMF-v0", dict(SMALL_NMF), 2, 0), BatchedVecEnv)


def test_ppo_trains_on_the_batched_env_through_the_pipeline(tmp_path):
    metrics = run_experiment(tiny_config("agent.vec_env=batched", "agent.n_envs=4"), tmp_path)
    assert metrics["train"]["timesteps"] >= 256
    assert metrics["train"]["episodes"] > 0
    assert (tmp_path / "model.zip").is_file() and (tmp_path / "schedule.json").is_file()
    assert math.isfinite(metrics["schedulers"]["ppo"]["final_loss"])


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_batched_env_on_cuda_matches_the_cpu_one():
    """The batched env (training and evaluation) on the GPU steps as on the CPU."""
    kwargs = {**SMALL_NMF, "dtype": "float64"}
    envs = [BatchedNMFEnv(8, **kwargs), BatchedNMFEnv(8, device="cuda", **kwargs)]
    obs = [env.reset(seed=5)[0] for env in envs]
    np.testing.assert_allclose(obs[0], obs[1], rtol=1e-6, atol=1e-9)
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 8, 1)).astype(np.float32)
    for a in actions:
        (o_cpu, r_cpu, *_), (o_gpu, r_gpu, *_) = (env.step(a) for env in envs)
        np.testing.assert_allclose(o_cpu, o_gpu, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(r_cpu, r_gpu, rtol=1e-6, atol=1e-9)


def test_sharded_env_steps_as_one_batched_env():
    """Sub-envs split across worker processes see the episodes of one batched env."""
    kwargs = {**MIXED, "dtype": "float64"}
    one = make_training_vec_env("lrrl/NMF-v0", kwargs, 5, seed=3, kind="batched")
    sharded = make_training_vec_env("lrrl/NMF-v0", kwargs, 5, seed=3, kind="batched", workers=2)
    assert isinstance(sharded, ShardedVecEnv) and sharded.num_envs == 5
    try:
        np.testing.assert_allclose(sharded.reset(), one.reset(), atol=1e-9)
        assert [i["instance"] for i in sharded.reset_infos] == [
            i["instance"] for i in one.reset_infos
        ]
        steps = 2 * SMALL_NMF["horizon"] + 1
        ended = step_alike(sharded, one, 5, steps, atol=1e-9, rtol=1e-9, reward_atol=1e-12)
        assert ended >= 5
        # each sub-env's own generator, by global index (what checkpoints save and restore)
        gens = sharded.get_attr("np_random")
        assert len(gens) == 5 and len({id(g) for g in gens}) == 5
        sharded.set_attr("np_random", np.random.default_rng(7), indices=[3])
        assert sharded.get_attr("np_random", indices=[3])[0].integers(1 << 30) == (
            np.random.default_rng(7).integers(1 << 30)
        )
        assert [c["rank"] for c in sharded.env_method("config")] == [SMALL_NMF["rank"]] * 5
        with pytest.raises(AttributeError, match="no_such_method"):
            sharded.env_method("no_such_method")
        # every worker's answer was read: the next call gets its own answers
        assert len(sharded.env_method("config")) == 5
        sharded.step(np.zeros((5, 1), np.float32))
    finally:
        sharded.close()
        one.close()


def test_sharded_env_raises_a_worker_error_in_the_parent():
    with pytest.raises(ValueError, match="rank") as err:
        ShardedVecEnv({**SMALL_NMF, "rank": 0}, 4, 2)
    assert "\n" not in str(err.value)
