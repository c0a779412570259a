"""Fault injection: blow-ups end episodes cleanly, training carries on, and the rates add up.

Every numerical failure, whatever its cause (a learning rate far past any bound, NaN in the
data, an infinite loss), must end the episode with ``terminated=True`` and
``info["diverged"] = True``, never raise, and be counted in ``metrics.json``.
"""

from __future__ import annotations

import json
import math

import gymnasium as gym
import numpy as np
import pytest
from conftest import SMALL_NMF
from conftest import tiny_config as config
from hypothesis import given, settings
from hypothesis import strategies as st

from lrrl.envs import nmf_ops
from lrrl.envs.nmf_instances import NMFInstance
from lrrl.pipeline import run_experiment
from lrrl.schedule import load_schedule

#: Log-learning-rate actions far beyond any stable learning rate, with clipping disabled.
EXPLODING = dict(bound="none", action_mode="log_lr", lr_range=(1e9, 1e12))


def make(**kwargs) -> gym.Env:
    return gym.make("lrrl/NMF-v0", **{**SMALL_NMF, **kwargs})


def assert_diverged(step: tuple) -> None:
    obs, reward, terminated, truncated, info = step
    assert terminated and not truncated and info["diverged"]
    assert reward == -10.0  # the default divergence_penalty
    assert np.isfinite(obs).all()


@pytest.mark.parametrize("action", [-1.0, 0.0, 1.0])
def test_huge_learning_rate_without_bound_diverges(action):
    env = make(**EXPLODING)
    env.reset(seed=0)
    assert_diverged(env.step(np.array([action], np.float32)))


class NaNInstance(NMFInstance):
    """An instance whose data holds one NaN: corrupt input rather than a bad learning rate."""

    def matrix(self) -> np.ndarray:
        V = super().matrix().copy()
        V[0, 0] = np.nan
        return V


def test_nan_in_the_data_diverges_at_the_first_step():
    env = make()
    good = env.unwrapped.instances("train")[0]
    bad = NaNInstance(**{k: getattr(good, k) for k in good.__dataclass_fields__})
    obs, info = env.reset(seed=0, options={"instance": bad})
    assert np.isfinite(obs).all()
    assert_diverged(env.step(np.zeros(1, np.float32)))
    # a good instance trains normally afterwards
    env.reset(seed=0, options={"instance": good})
    _, _, terminated, _, info = env.step(np.zeros(1, np.float32))
    assert not terminated and not info["diverged"]


@pytest.mark.parametrize("bad_loss", [math.inf, math.nan])
def test_non_finite_loss_at_step_k_diverges(monkeypatch, bad_loss):
    k, calls = 3, {"n": 0}
    real = nmf_ops.loss_from_residual

    def flaky(R, columns=None):
        calls["n"] += 1
        loss = real(R, columns)
        return loss if calls["n"] <= k else loss * bad_loss

    monkeypatch.setattr(nmf_ops, "loss_from_residual", flaky)
    env = make()
    env.reset(seed=0)  # the first loss; steps 1 .. k-1 are fine, step k's loss is bad
    for _ in range(k - 1):
        _, _, terminated, _, info = env.step(np.zeros(1, np.float32))
        assert not terminated and not info["diverged"]
    assert_diverged(env.step(np.zeros(1, np.float32)))


def test_always_diverging_training_reaches_its_budget_and_reports_the_rate(tmp_path):
    overrides = [f"env.{k}={v}" for k, v in EXPLODING.items() if k != "lr_range"]
    metrics = run_experiment(
        config(*overrides, "env.lr_range=[1.0e9,1.0e12]", "eval.baselines=[constant]"),
        tmp_path,
    )
    train = metrics["train"]
    assert train["timesteps"] >= 256
    # every episode ends at its first decision, by a divergence
    assert train["episodes"] == train["timesteps"] == train["divergences"]
    assert train["divergence_rate"] == 1.0
    ppo = metrics["schedulers"]["ppo"]
    assert ppo["divergence_rate"] == 1.0 and ppo["final_loss"] == math.inf
    assert 0.0 <= metrics["schedulers"]["constant"]["divergence_rate"] <= 1.0
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["train"]["divergence_rate"] == 1.0
    assert on_disk["schedulers"]["ppo"]["divergence_rate"] == 1.0
    assert on_disk["schedulers"]["ppo"]["final_loss"] == "inf"  # JSON has no infinity
    assert load_schedule(tmp_path / "schedule.json").episodes[0].diverged


def test_divergence_rate_counts_only_diverged_episodes(tmp_path):
    # a stable setting: training episodes run to the horizon and none diverges
    metrics = run_experiment(config(), tmp_path)
    train = metrics["train"]
    assert train["divergences"] == 0 and train["divergence_rate"] == 0.0
    assert train["episodes"] == train["timesteps"] // 8  # debug=smoke: horizon 8
    assert all(s["divergence_rate"] == 0.0 for s in metrics["schedulers"].values())


# -- any action, any requested learning rate ---------------------------------------------

_ENVS: dict[str, gym.Env] = {}


def _env(mode: str) -> gym.Env:
    if mode not in _ENVS:
        kwargs = {"action_mode": mode} if mode == "bound" else dict(EXPLODING)
        _ENVS[mode] = make(**kwargs)
    return _ENVS[mode]


any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=150, deadline=None)
@given(action=any_float, mode=st.sampled_from(["bound", "log_lr"]))
def test_step_takes_any_action(action, mode):
    """NaN actions mean the lowest learning rate; others saturate to [-1, 1]; nothing raises."""
    env = _env(mode)
    env.reset(seed=0)
    u = env.unwrapped
    expected = min(u.lr_for_action(np.array([-1.0 if math.isnan(action) else action])), u.clip)
    obs, reward, terminated, truncated, info = env.step(np.array([action], np.float32))
    assert env.observation_space.contains(obs) and not truncated
    assert math.isfinite(reward)
    assert info["lr"] == pytest.approx(expected)
    assert 0 < info["lr"] < math.inf
    assert terminated == info["diverged"]


@settings(max_examples=150, deadline=None)
@given(lr=any_float | st.none() | st.text(max_size=3) | st.integers())
def test_request_lr_accepts_positive_finite_values_only(lr):
    env = _env("bound")
    env.reset(seed=0)
    u = env.unwrapped
    try:
        ok = 0 < float(lr) < math.inf
    except (TypeError, ValueError):
        ok = False
    if not ok:
        with pytest.raises(
            ValueError, match="^lr=.* is invalid: expected a positive finite"
        ) as err:
            u.request_lr(lr)
        assert "\n" not in str(err.value)
        return
    u.request_lr(lr)
    _, _, _, _, info = env.step(np.zeros(1, np.float32))
    assert info["lr"] == pytest.approx(min(float(lr), info["lr_bound"] * u.cfg.bound_scale))
