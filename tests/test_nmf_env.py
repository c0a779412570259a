"""The NMF environment: Gymnasium contract, determinism, options and the stability theory."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import lrrl  # noqa: F401
from lrrl.envs import nmf_ops
from lrrl.envs.base import INFO_KEYS
from lrrl.envs.nmf import NMFEnv
from lrrl.envs.nmf_instances import NMFInstance, make_suite

SMALL = dict(shape=(30, 24), rank=4, steps_per_action=3, horizon=6)


def make(**kwargs):
    return gym.make(
        "lrrl/NMF-v0", max_episode_steps=kwargs.get("horizon", 6), **{**SMALL, **kwargs}
    )


def rollout(env, seed, actions, instance=None):
    obs, info = env.reset(seed=seed, options={"instance": instance})
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        out.append(env.step(np.array([a], dtype=np.float32)))
    return out


def test_registered_on_import():
    assert "lrrl/NMF-v0" in gym.registry
    assert gym.spec("lrrl/NMF-v0").max_episode_steps == 50


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"batch_size": 8, "noise_std": 0.1},
        {"action_mode": "log_lr"},
        {"bound": "none", "action_mode": "log_lr"},
    ],
)
def test_passes_gymnasium_and_sb3_checkers(kwargs):
    env = make(**kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_info_contract_and_factors_readable():
    env = make(batch_size=8, noise_std=0.05)
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) <= set(info)
    u = env.unwrapped
    m, n = u.V.shape
    assert u.W.shape == (m, 4) and u.H.shape == (4, n)
    assert isinstance(u.W, np.ndarray) and (u.W >= 0).all() and (u.H >= 0).all()
    _, _, terminated, truncated, info = env.step(env.action_space.sample())
    assert set(INFO_KEYS) <= set(info)
    assert info["lr"] <= u.bound_scale * info["lr_bound"] * (1 + 1e-6)
    assert isinstance(info["clipped"], bool) and isinstance(info["diverged"], bool)
    assert not terminated and not truncated


def test_same_seed_same_rollout_and_different_seed_differs():
    actions = [0.3, -0.5, 1.0, 0.0, 0.7, -1.0]
    kwargs = dict(batch_size=8, noise_std=0.05)
    a = rollout(make(**kwargs), 7, actions)
    b = rollout(make(**kwargs), 7, actions)
    c = rollout(make(**kwargs), 8, actions)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:4] == y[1:4]
        assert x[4] == y[4]
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_episode_truncates_at_horizon_from_registration():
    env = make(horizon=4)
    env.reset(seed=0)
    flags = [env.step(np.zeros(1, np.float32))[3] for _ in range(4)]
    assert flags == [False, False, False, True]


def test_highest_action_reaches_the_clip_and_log_lr_mode_clips():
    env = make()
    _, info = env.reset(seed=0)
    clip = env.unwrapped.clip
    _, _, _, _, info = env.step(np.ones(1, np.float32))
    assert info["lr"] == pytest.approx(clip, rel=1e-6)
    env = make(action_mode="log_lr", lr_range=(1e-4, 100.0))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(1, np.float32))
    assert info["clipped"] and info["lr"] == pytest.approx(info["lr_bound"])


def test_action_for_lr_round_trips():
    for mode in ("bound", "log_lr"):
        u = make(action_mode=mode).unwrapped
        u.reset(seed=0)
        for fraction in (0.05, 0.3, 0.9):
            lr = fraction * u.clip
            assert u.lr_for_action(u.action_for_lr(lr)) == pytest.approx(lr, rel=1e-5)


def test_request_lr_applies_exactly_below_the_clip():
    env = make()
    env.reset(seed=0)
    u = env.unwrapped
    lr = 1e-3 * u.clip * u.lr_floor  # far below what any action can express
    u.request_lr(lr)
    _, _, _, _, info = env.step(np.ones(1, np.float32))
    assert info["lr"] == pytest.approx(lr)
    with pytest.raises(ValueError, match="lr"):
        u.request_lr(-1.0)


def test_reset_picks_instances_by_object_name_and_index():
    env = make()
    u = env.unwrapped
    test = u.instances("test")
    _, info = env.reset(seed=0, options={"instance": test[1]})
    assert info["instance"] == test[1].name
    _, info = env.reset(seed=0, options={"instance": test[2].name})
    assert info["instance"] == test[2].name
    _, info = env.reset(seed=0, options={"instance": 0})
    assert info["instance"] == u.instances("train")[0].name
    with pytest.raises(ValueError, match="instance"):
        env.reset(options={"instance": "no-such-instance"})


def test_train_and_test_instances_are_disjoint_and_varied():
    suite = make_suite((60, 50), rank=6)
    train, test = suite["train"], suite["test"]
    assert not {i.name for i in train} & {i.name for i in test}
    train_mats = [i.matrix() for i in train]
    for inst in test:
        assert all(
            inst.matrix().shape != m.shape or not np.allclose(inst.matrix(), m) for m in train_mats
        )
    assert {i.source for i in train} == {"synthetic", "digits"}
    assert len({i.shape for i in train}) >= 2
    assert len({i.true_rank for i in train if i.source == "synthetic"}) >= 2
    assert len({i.noise for i in train if i.source == "synthetic"}) >= 2
    for inst in train + test:
        V = inst.matrix()
        assert (V >= 0).all() and math.isclose(float(np.sqrt(np.mean(V**2))), 1.0, rel_tol=1e-9)


def test_digits_instances_use_disjoint_images():
    a = NMFInstance("a", "digits", (64, 300), seed=1, split="train").matrix()
    b = NMFInstance("b", "digits", (64, 300), seed=1, split="test").matrix()
    cols_a = {tuple(np.round(c / c.max(), 6)) for c in a.T}
    cols_b = {tuple(np.round(c / c.max(), 6)) for c in b.T}
    # Digit images can repeat pixel for pixel; disjoint index pools keep overlap tiny.
    assert len(cols_a & cols_b) < 5


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rank": 100}, "rank"),
        ({"rank": 0}, "rank"),
        ({"steps_per_action": 0}, "steps_per_action"),
        ({"bound_scale": -1.0}, "bound_scale"),
        ({"bound_scale": 0.0}, "bound_scale"),
        ({"lr_range": (1.0, 0.1)}, "lr_range"),
        ({"lr_floor": 2.0}, "lr_floor"),
        ({"lr_ceiling": 0.5}, "lr_ceiling"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"batch_size": 0}, "batch_size"),
        ({"shape": (10,)}, "shape"),
        ({"rank": "abc"}, "rank"),
        ({"bound": "tight"}, "bound"),
        ({"bound": "none"}, "action_mode"),
        ({"action_mode": "linear"}, "action_mode"),
        ({"reward": "loss"}, "reward"),
        ({"suite": "imagenet"}, "suite"),
        ({"instances": "validation"}, "instances"),
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu9"}, "device"),
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        NMFEnv(**{**SMALL, **kwargs})
    assert "\n" not in str(err.value)


def test_nan_and_inf_actions_never_raise():
    env = make()
    env.reset(seed=0)
    for a in (math.nan, math.inf, -math.inf, 1e30):
        obs, reward, *_ = env.step(np.array([a], dtype=np.float32))
        assert env.observation_space.contains(obs) and math.isfinite(reward)


def test_divergence_terminates_with_penalty_without_raising():
    env = make(bound="none", action_mode="log_lr", lr_range=(1e-3, 1e6), divergence_penalty=7.0)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.ones(1, np.float32))
    assert terminated and not truncated and info["diverged"] and reward == -7.0
    obs, info = env.reset(seed=1)  # reusable afterwards
    assert env.observation_space.contains(obs) and not info["diverged"]


def test_reward_telescopes_to_log_loss_ratio():
    env = make(horizon=6)
    _, info = env.reset(seed=3)
    loss0, total = info["loss"], 0.0
    for _ in range(6):
        _, reward, _, _, info = env.step(np.array([0.5], np.float32))
        total += reward
    assert total == pytest.approx(math.log(loss0 / info["loss"]), rel=1e-6)


def test_works_in_float64_and_reports_dtype_in_config():
    env = make(dtype="float64")
    env.reset(seed=0)
    assert env.unwrapped.W.dtype == np.float64
    config = env.unwrapped.config()
    assert config["dtype"] == "float64" and NMFEnv(**config).config() == config


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_noise_free():
    kwargs = dict(dtype="float64")
    cpu = rollout(make(**kwargs), 0, [0.5] * 4)
    gpu = rollout(make(device="cuda", **kwargs), 0, [0.5] * 4)
    for x, y in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(x[0], y[0], rtol=1e-6, atol=1e-9)


# -- the stability bound -------------------------------------------------------------------


def _random_problem(seed: int, m: int, n: int, r: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    k = max(1, r // 2 + seed % (r + 1))
    V = torch.rand((m, k), generator=g, dtype=dtype) @ torch.rand((k, n), generator=g, dtype=dtype)
    V = V + 0.1 * torch.rand((m, n), generator=g, dtype=dtype)
    W = torch.rand((m, r), generator=g, dtype=dtype) * 2.0
    H = torch.rand((r, n), generator=g, dtype=dtype) * 2.0
    return V, W, H


def _losses(V, W, H, scale: float, steps: int, safeguard: bool) -> list[float]:
    bound = float(nmf_ops.stability_bound(V, W, H, 0.0, None).lr_bound)
    lr = torch.tensor(scale * bound, dtype=V.dtype)
    losses = [float(nmf_ops.loss_from_residual(nmf_ops.residual(V, W, H)))]
    for _ in range(steps):
        W, H, _ = nmf_ops.inner_step(V, W, H, lr, 1.0 if safeguard else None)
        losses.append(float(nmf_ops.loss_from_residual(nmf_ops.residual(V, W, H))))
    return losses


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    m=st.integers(2, 40),
    n=st.integers(2, 40),
    r=st.integers(1, 8),
    fraction=st.floats(0.05, 1.0),
)
def test_noise_free_loss_never_rises_at_or_below_the_bound(seed, m, n, r, fraction):
    r = min(r, m, n)
    V, W, H = _random_problem(seed, m, n, r)
    losses = _losses(V, W, H, fraction, steps=15, safeguard=True)
    rises = np.diff(losses)
    assert (rises <= 1e-9 * max(losses[0], 1.0)).all(), (losses, fraction)


def test_the_bound_is_not_vacuous_a_few_times_it_raises_the_loss():
    risen = 0
    for seed in range(20):
        V, W, H = _random_problem(seed, 30, 25, 5)
        losses = _losses(V, W, H, 3.0, steps=15, safeguard=False)
        risen += any(b > a for a, b in zip(losses, losses[1:], strict=False)) or not math.isfinite(
            losses[-1]
        )
    assert risen >= 10


def test_env_loss_never_rises_noise_free_at_bound_scale_one():
    env = make(bound_scale=1.0, dtype="float64", horizon=20, steps_per_action=5)
    for seed, inst in enumerate(env.unwrapped.instances("all")[:6]):
        _, info = env.reset(seed=seed, options={"instance": inst})
        prev = info["loss"]
        for _ in range(20):
            _, _, _, truncated, info = env.step(np.ones(1, np.float32))
            assert info["loss"] <= prev * (1 + 1e-9)
            prev = info["loss"]


def test_noisy_bound_shrinks_with_noise_and_matches_formula():
    V, W, H = _random_problem(0, 20, 15, 3)
    clean = nmf_ops.stability_bound(V, W, H, 0.0, None)
    noisy = nmf_ops.stability_bound(V, W, H, 1.0, None)
    assert float(noisy.lr_bound) < float(clean.lr_bound)
    assert float(noisy.deterministic) == pytest.approx(float(clean.lr_bound))
    R = nmf_ops.residual(V, W, H)
    gw2 = float((R @ H.T).square().sum())
    gh2 = float((W.T @ R).square().sum())
    L_w = float(torch.linalg.eigvalsh(H @ H.T)[-1])
    L_h = float(torch.linalg.eigvalsh(W.T @ W)[-1])
    expected = min(2 / L_w * gw2 / (gw2 + 20 * 3), 2 / L_h * gh2 / (gh2 + 3 * 15))
    assert float(noisy.lr_bound) == pytest.approx(expected, rel=1e-9)


def test_minibatch_variance_estimate_matches_sampling():
    V, W, H = _random_problem(1, 12, 10, 3)
    R = nmf_ops.residual(V, W, H)
    g = R @ H.T
    b = 4
    terms = nmf_ops.stability_bound(V, W, H, 0.0, b)
    # Monte-Carlo variance of the column-sampled W-gradient estimator.
    gen = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(20_000):
        cols = torch.randperm(10, generator=gen)[:b]
        draws.append(float(((10 / b) * (R[:, cols] @ H[:, cols].T) - g).square().sum()))
    s2 = np.mean(draws)
    gw2 = float(g.square().sum())
    rho_w = gw2 / (gw2 + s2)
    L_w = float(torch.linalg.eigvalsh(H @ H.T)[-1])
    assert float(terms.lr_bound) <= 2 / L_w * rho_w * 1.05
    det_w = 2 / L_w
    # The W-part of the bound matches the sampled variance to Monte-Carlo accuracy.
    implied = float(terms.lr_bound)
    if implied < float(terms.deterministic):
        assert implied == pytest.approx(min(det_w * rho_w, implied), rel=0.05)


def test_default_config_highest_action_reaches_the_clip_on_every_instance():
    """The shipped config's absolute lr range tops every instance's clip at every decision."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lrrl.harness import make_env, split_env_config

    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose(config_name="train"), resolve=True)
    env_id, kwargs = split_env_config(cfg["env"])
    env = make_env(env_id, **kwargs)
    assert env.unwrapped.action_mode == "log_lr"
    for instance in env.unwrapped.instances("all"):
        env.reset(seed=0, options={"instance": instance})
        for _ in range(env.unwrapped.horizon):
            _, _, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))
            assert info["clipped"] and info["lr"] == pytest.approx(
                kwargs["bound_scale"] * info["lr_bound"]
            ), instance
            if terminated or truncated:
                break
