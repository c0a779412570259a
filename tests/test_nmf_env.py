"""The NMF environment: Gymnasium contract, determinism, options and the stability theory."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SMALL_NMF, compose
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from lrrl.envs import nmf_ops
from lrrl.envs.base import INFO_KEYS
from lrrl.envs.nmf import NMFConfig, NMFEnv


def make(**kwargs):
    return gym.make("lrrl/NMF-v0", **{**SMALL_NMF, **kwargs})


def rollout(env, seed, actions, instance=None):
    obs, info = env.reset(seed=seed, options={"instance": instance})
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        out.append(env.step(np.array([a], dtype=np.float32)))
    return out


def test_registered_on_import_without_a_registration_time_limit():
    assert "lrrl/NMF-v0" in gym.registry
    assert gym.spec("lrrl/NMF-v0").max_episode_steps is None


@pytest.mark.parametrize("horizon", [3, 7])
def test_episode_truncates_at_its_own_horizon_wherever_made(horizon):
    # gym.make without the project's helpers, and the class itself: the same horizon.
    for env in (
        gym.make("lrrl/NMF-v0", horizon=horizon, families=["base"], shape=(30, 24), rank=4),
        NMFEnv(horizon=horizon, families=["base"], shape=(30, 24), rank=4),
    ):
        env.reset(seed=0)
        flags = [env.step(np.zeros(1, np.float32))[3] for _ in range(horizon)]
        assert flags == [False] * (horizon - 1) + [True]


def test_instances_of_the_horizon_family_truncate_at_their_own_length():
    env = make(families=["horizon"], n_train=2)
    lengths = set()
    for inst in env.unwrapped.instances("train"):
        env.reset(seed=0, options={"instance": inst})
        t, truncated = 0, False
        while not truncated:
            truncated = env.step(np.zeros(1, np.float32))[3]
            t += 1
        assert t == inst.horizon
        lengths.add(t)
    assert len(lengths) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"noise_std": 0.1, "families": ["grad_noise"]},
        {"action_mode": "log_lr"},
        {"bound": "none", "action_mode": "log_lr"},
    ],
)
def test_passes_gymnasium_and_sb3_checkers(kwargs):
    env = make(**kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_info_contract_and_factors_readable():
    env = make()
    _, info = env.reset(seed=0, options={"instance": "base-train-0-30x24-r4-k2-dn0.01-b8-T6"})
    assert set(INFO_KEYS) <= set(info)
    u = env.unwrapped
    assert u.V.shape == (30, 24) and u.W.shape == (30, 4) and u.H.shape == (4, 24)
    assert isinstance(u.W, np.ndarray) and (u.W >= 0).all() and (u.H >= 0).all()
    np.testing.assert_allclose(u.V, u.instance.matrix(), rtol=1e-6)
    _, _, terminated, truncated, info = env.step(env.action_space.sample())
    assert set(INFO_KEYS) <= set(info)
    assert info["lr"] <= u.cfg.bound_scale * info["lr_bound"] * (1 + 1e-6)
    assert isinstance(info["clipped"], bool) and isinstance(info["diverged"], bool)
    assert not terminated and not truncated


def test_same_seed_same_rollout_and_different_seed_differs():
    actions = [0.3, -0.5, 1.0, 0.0, 0.7, -1.0]
    kwargs = dict(noise_std=0.05)
    a = rollout(make(**kwargs), 7, actions)
    b = rollout(make(**kwargs), 7, actions)
    c = rollout(make(**kwargs), 8, actions)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:4] == y[1:4]
        assert x[4] == y[4]
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_highest_action_reaches_the_clip_and_log_lr_mode_clips():
    env = make()
    env.reset(seed=0)
    clip = env.unwrapped.clip
    _, _, _, _, info = env.step(np.ones(1, np.float32))
    assert info["lr"] == pytest.approx(clip, rel=1e-6)
    env = make(action_mode="log_lr", lr_range=(1e-4, 100.0))
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(1, np.float32))
    assert info["clipped"] and info["lr"] == pytest.approx(info["lr_bound"])


def test_the_default_config_clips_at_the_derived_bound():
    assert NMFConfig().bound_scale == 1.0 and NMFConfig().bound == "noisy"


def test_shipped_env_config_adds_nothing_to_the_dataclass_defaults():
    """conf/env/nmf.yaml holds only name/id: the defaults live in NMFConfig alone."""
    env = compose()["env"]
    assert (env.pop("name"), env.pop("id")) == ("nmf", "lrrl/NMF-v0")
    assert env == NMFConfig().to_dict()


def test_delta_actions_move_the_fraction_of_the_clip_by_at_most_lr_step():
    env = make(action_mode="delta", lr_step=0.5, lr_floor=0.01)
    env.reset(seed=0)
    u = env.unwrapped
    _, _, _, _, info = env.step(np.zeros(1, np.float32))  # starts at the ceiling: the clip
    assert info["lr"] == pytest.approx(info["lr_bound"])
    fractions = [1.0]
    for a in (-1.0, -1.0, 0.0, 1.0, -0.3):
        clip = u.clip
        _, _, _, _, info = env.step(np.array([a], np.float32))
        fractions.append(info["lr"] / clip)
        assert fractions[-1] == pytest.approx(min(1.0, fractions[-2] * math.exp(0.5 * a)))
    assert fractions[2] == pytest.approx(math.exp(-1.0))
    assert fractions[3] == pytest.approx(fractions[2], rel=1e-12)  # action 0 keeps the fraction


def test_action_for_lr_round_trips():
    for mode in ("bound", "delta", "log_lr"):
        u = make(action_mode=mode, lr_range=(1e-6, 10.0)).unwrapped
        u.reset(seed=0)
        # delta mode reaches exp(+-lr_step) around the current fraction (the clip at first)
        for fraction in (0.65, 0.9) if mode == "delta" else (0.05, 0.3, 0.9):
            lr = fraction * u.clip
            assert u.lr_for_action(u.action_for_lr(lr)) == pytest.approx(lr, rel=1e-5)


def test_request_lr_applies_exactly_below_the_clip():
    env = make()
    env.reset(seed=0)
    u = env.unwrapped
    lr = 1e-3 * u.clip * u.cfg.lr_floor  # far below what any action can express
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
        ({"families": ["imagenet"]}, "families"),
        ({"families": []}, "families"),
        ({"n_test": -1}, "n_test"),
        ({"instances": "validation"}, "instances"),
        ({"instances": ["no-such-instance"]}, "instances"),
        ({"n_train": 0}, "instances"),  # the default pool, train, is then empty
        ({"dtype": "float16"}, "dtype"),
        ({"device": "tpu9"}, "device"),
        ({"suite": "mixed"}, "suite"),  # unknown option: named, with the accepted ones
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key) as err:
        NMFEnv(**{**SMALL_NMF, **kwargs})
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
    env = make()
    _, info = env.reset(seed=3)
    loss0, total = info["loss"], 0.0
    for _ in range(env.unwrapped.horizon):
        _, reward, _, _, info = env.step(np.array([0.5], np.float32))
        total += reward
    assert total == pytest.approx(math.log(loss0 / info["loss"]), rel=1e-6)


def test_works_in_float64_and_config_rebuilds_the_env():
    env = make(dtype="float64")
    env.reset(seed=0)
    assert env.unwrapped.W.dtype == np.float64
    config = env.unwrapped.config()
    assert config["dtype"] == "float64" and NMFEnv(**config).config() == config


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_noise_free():
    kwargs = dict(dtype="float64", families=["exact"])
    cpu = rollout(make(**kwargs), 0, [0.5] * 4)
    gpu = rollout(make(device="cuda", **kwargs), 0, [0.5] * 4)
    for x, y in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(x[0], y[0], rtol=1e-6, atol=1e-9)


# -- the arithmetic --------------------------------------------------------------------------


def _random_problem(seed: int, m: int, n: int, r: int, dtype=torch.float64):
    """``(V^T, W^T, H)`` of a random non-negative problem (the layout of nmf_ops)."""
    g = torch.Generator().manual_seed(seed)
    k = max(1, r // 2 + seed % (r + 1))
    V = torch.rand((m, k), generator=g, dtype=dtype) @ torch.rand((k, n), generator=g, dtype=dtype)
    V = V + 0.1 * torch.rand((m, n), generator=g, dtype=dtype)
    W = torch.rand((m, r), generator=g, dtype=dtype) * 2.0
    H = torch.rand((r, n), generator=g, dtype=dtype) * 2.0
    return V.T.contiguous(), W.T.contiguous(), H


def _reference_step(V, W, H, lr, cap_scale, cols=None, nw=None, nh=None):
    """One projected alternating step as in the textbook: residuals, ``W`` then ``H``."""

    def cap(G):  # L = 0: no cap
        L = float(torch.linalg.eigvalsh(G)[-1])
        return math.inf if L <= 0 else 2 * cap_scale / L

    n = V.shape[1]
    if cols is None:
        cols = torch.arange(n)
    b = cols.numel()
    Vb, Hb = V[:, cols], H[:, cols]
    gW = (n / b) * (W @ Hb - Vb) @ Hb.T + (0 if nw is None else nw.T)
    lr_w = lr
    if cap_scale is not None:
        lr_w = min(lr, cap(H @ H.T))
    W = (W - lr_w * gW).clamp_min(0)
    gH = W.T @ (W @ Hb - Vb) + (0 if nh is None else nh)
    lr_h = lr
    if cap_scale is not None:
        lr_h = min(lr, cap(W.T @ W))
    H = H.clone()
    H[:, cols] = (Hb - lr_h * gH).clamp_min(0)
    return W, H


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    m=st.integers(3, 20),
    n=st.integers(3, 20),
    r=st.integers(1, 5),
    lr=st.floats(1e-3, 0.3),
    minibatch=st.booleans(),
    noisy=st.booleans(),
    cap=st.sampled_from([None, 1.0]),
)
def test_inner_step_matches_the_textbook_step(seed, m, n, r, lr, minibatch, noisy, cap):
    """The Gram-form, transposed-layout step is the plain residual-form step."""
    r = min(r, m, n)
    Vt, Wt, H = _random_problem(seed, m, n, r)
    g = torch.Generator().manual_seed(seed)
    cols = torch.randperm(n, generator=g)[: max(1, n // 2)] if minibatch else None
    b = n if cols is None else cols.numel()
    nw = 0.1 * torch.randn((r, m), generator=g, dtype=Vt.dtype) if noisy else None
    nh = 0.1 * torch.randn((r, b), generator=g, dtype=Vt.dtype) if noisy else None
    lr_t = torch.tensor(lr, dtype=Vt.dtype)
    Wt2, H2, _, loss = nmf_ops.inner_step(Vt, Wt, H, lr_t, cap, cols, nw, nh, with_loss=True)
    W_ref, H_ref = _reference_step(Vt.T, Wt.T, H, lr, cap, cols, nw, nh)
    torch.testing.assert_close(Wt2.T, W_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(H2, H_ref, rtol=1e-9, atol=1e-9)
    V, W = Vt.T, Wt.T
    sel = torch.arange(n) if cols is None else cols
    expected = 0.5 * (n / b) * float((W @ H[:, sel] - V[:, sel]).square().sum())
    assert float(loss) == pytest.approx(expected, rel=1e-9)


def test_zero_padding_changes_nothing():
    """A padded problem (extra rows, columns and rank) steps exactly like the bare one."""
    Vt, Wt, H = _random_problem(3, 12, 9, 3)
    pad_Vt = torch.zeros(14, 15, dtype=Vt.dtype)
    pad_Vt[:9, :12] = Vt
    pad_Wt = torch.zeros(5, 15, dtype=Vt.dtype)
    pad_Wt[:3, :12] = Wt
    pad_H = torch.zeros(5, 14, dtype=Vt.dtype)
    pad_H[:3, :9] = H
    lr = torch.tensor(0.05, dtype=Vt.dtype)
    Wt2, H2, cap2, _ = nmf_ops.inner_step(Vt, Wt, H, lr, 1.0)
    pWt, pH, pcap, _ = nmf_ops.inner_step(pad_Vt, pad_Wt, pad_H, lr, 1.0)
    torch.testing.assert_close(pWt[:3, :12], Wt2)
    torch.testing.assert_close(pH[:3, :9], H2)
    assert float(pWt[3:].abs().sum() + pWt[:, 12:].abs().sum() + pH[3:].abs().sum()) == 0.0
    assert float(pcap) == pytest.approx(float(cap2))
    m, n, r = (torch.tensor(float(x), dtype=Vt.dtype) for x in (12, 9, 3))
    noise = torch.tensor(0.2, dtype=Vt.dtype)
    batch = torch.tensor(4.0, dtype=Vt.dtype)
    bare = nmf_ops.stability_bound(Vt, Wt, H, noise, batch)
    padded = nmf_ops.stability_bound(pad_Vt, pad_Wt, pad_H, noise, batch, m=m, n=n, r=r)
    assert float(padded.lr_bound) == pytest.approx(float(bare.lr_bound), rel=1e-12)
    assert float(padded.noise_ratio) == pytest.approx(float(bare.noise_ratio), rel=1e-12)


# -- the stability bound -------------------------------------------------------------------


def _losses(Vt, Wt, H, scale: float, steps: int, safeguard: bool) -> list[float]:
    bound = float(nmf_ops.stability_bound(Vt, Wt, H).lr_bound)
    lr = torch.tensor(scale * bound, dtype=Vt.dtype)
    losses = [float(nmf_ops.loss_from_residual(nmf_ops.residual(Vt, Wt, H)))]
    for _ in range(steps):
        Wt, H, _, _ = nmf_ops.inner_step(Vt, Wt, H, lr, 1.0 if safeguard else None)
        losses.append(float(nmf_ops.loss_from_residual(nmf_ops.residual(Vt, Wt, H))))
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
    Vt, Wt, H = _random_problem(seed, m, n, r)
    losses = _losses(Vt, Wt, H, fraction, steps=15, safeguard=True)
    rises = np.diff(losses)
    assert (rises <= 1e-9 * max(losses[0], 1.0)).all(), (losses, fraction)


def test_the_bound_is_not_vacuous_a_few_times_it_raises_the_loss():
    risen = 0
    for seed in range(20):
        Vt, Wt, H = _random_problem(seed, 30, 25, 5)
        losses = _losses(Vt, Wt, H, 3.0, steps=15, safeguard=False)
        risen += any(b > a for a, b in zip(losses, losses[1:], strict=False)) or not math.isfinite(
            losses[-1]
        )
    assert risen >= 10


def test_env_loss_never_rises_noise_free_at_bound_scale_one():
    # Full gradients everywhere (the rank family too): minibatches are noise.
    env = make(
        bound_scale=1.0, dtype="float64", families=["exact", "rank"], horizon=20, batch_size=None
    )
    for seed, inst in enumerate(env.unwrapped.instances("all")[:6]):
        _, info = env.reset(seed=seed, options={"instance": inst})
        prev = info["loss"]
        for _ in range(inst.horizon):
            _, _, _, _, info = env.step(np.ones(1, np.float32))
            assert info["loss"] <= prev * (1 + 1e-9)
            prev = info["loss"]


def test_noisy_bound_shrinks_with_noise_and_matches_formula():
    Vt, Wt, H = _random_problem(0, 20, 15, 3)
    one = torch.tensor(1.0, dtype=Vt.dtype)
    clean = nmf_ops.stability_bound(Vt, Wt, H)
    noisy = nmf_ops.stability_bound(Vt, Wt, H, noise_std=one)
    assert float(noisy.lr_bound) < float(clean.lr_bound)
    assert float(noisy.deterministic) == pytest.approx(float(clean.lr_bound))
    V, W = Vt.T, Wt.T
    R = W @ H - V
    gw2 = float((R @ H.T).square().sum())
    gh2 = float((W.T @ R).square().sum())
    L_w = float(torch.linalg.eigvalsh(H @ H.T)[-1])
    L_h = float(torch.linalg.eigvalsh(W.T @ W)[-1])
    expected = min(2 / L_w * gw2 / (gw2 + 20 * 3), 2 / L_h * gh2 / (gh2 + 3 * 15))
    assert float(noisy.lr_bound) == pytest.approx(expected, rel=1e-9)


def test_minibatch_variance_estimate_matches_sampling():
    Vt, Wt, H = _random_problem(1, 12, 10, 3)
    V, W = Vt.T, Wt.T
    R = W @ H - V
    g = R @ H.T
    b = 4
    terms = nmf_ops.stability_bound(Vt, Wt, H, batch_size=torch.tensor(float(b), dtype=V.dtype))
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
    implied = float(terms.lr_bound)
    if implied < float(terms.deterministic):
        assert implied == pytest.approx(min(2 / L_w * rho_w, implied), rel=0.05)


def test_config_is_frozen_and_rebuilds_from_its_dict():
    cfg = NMFConfig(**SMALL_NMF)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rank = 3  # type: ignore[misc]
    assert NMFConfig(**cfg.to_dict()) == cfg
