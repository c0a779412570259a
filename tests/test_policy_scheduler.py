"""PolicyScheduler: an agent in a plain torch loop sets the lrs it would set in its env."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from stable_baselines3 import PPO

from lrrl.config import EnvSpec
from lrrl.envs.dnn import DNNConfig
from lrrl.envs.dnn_models import DEFAULT_LR_RANGES
from lrrl.envs.registration import make_env
from lrrl.schedulers import OBSERVATION_BUILDERS, PolicyScheduler


def _config() -> dict[str, Any]:
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=smoke", "logger=none"])
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding an (untrained, but observation-sensitive) PPO agent."""
    torch.manual_seed(0)
    config = _config()
    spec = EnvSpec.from_dict(config["env"])
    env_id, kwargs = spec.id, spec.options
    env = make_env(env_id, **kwargs)
    model = PPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [16]}, device="cpu")
    # Spread the mean action over the range so the lrs react to the observation.
    with torch.no_grad():
        model.policy.action_net.weight.mul_(50.0)
    folder = tmp_path_factory.mktemp("run")
    (folder / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    model.save(folder / "model.zip")
    env.close()
    return folder


def _env_rollout(run_dir: Path, instance: str, seed: int) -> dict[str, list[float]]:
    config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    spec = EnvSpec.from_dict(config["env"])  # type: ignore[index]
    env_id, kwargs = spec.id, spec.options
    env = make_env(env_id, **kwargs)
    model = PPO.load(run_dir / "model.zip", device="cpu")
    obs, info = env.reset(seed=seed, options={"instance": instance})
    out = {"lr": [], "loss": [info["loss"]], "bound": [info["lr_bound"]]}
    out["noise"] = [info["noise_ratio"]]
    done = False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        out["lr"].append(info["lr"])
        out["loss"].append(info["loss"])
        out["bound"].append(info["lr_bound"])  # the bound of the *next* decision's clip
        out["noise"].append(info["noise_ratio"])
        done = terminated or truncated
    env.close()
    return out


def test_same_lrs_as_the_agent_in_its_env(run_dir: Path) -> None:
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    spa, horizon = int(config.env.steps_per_action), int(config.env.horizon)
    spec = EnvSpec.from_dict(OmegaConf.to_container(config.env))  # type: ignore[arg-type]
    env_id, kwargs = spec.id, spec.options
    env = make_env(env_id, **kwargs)
    instance = env.unwrapped.instances("test")[0].name
    env.close()
    ref = _env_rollout(run_dir, instance, seed=3)
    assert len(set(np.round(np.log(ref["lr"]) - np.log(ref["bound"][:-1]), 6))) > 1

    # info["lr_bound"] of step t is the bound that clipped it (set after step t - 1);
    # the bound after the last decision is never used.
    decision = {"t": 0}
    bounds, noises = ref["bound"][1:] + [ref["bound"][-1]], ref["noise"]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = PolicyScheduler(
        opt,
        run_dir,
        total_steps=spa * horizon,
        steps_per_decision=spa,
        lr_bound=lambda: bounds[decision["t"]],
        noise_ratio=lambda: noises[decision["t"]],
        loss0=ref["loss"][0],
        window_loss="last",
    )
    seen = []
    for t in range(horizon):
        seen.append(opt.param_groups[0]["lr"])
        decision["t"] = t + 1
        for k in range(spa):
            opt.step()
            # only the window's last loss counts with window_loss="last"
            sched.step(ref["loss"][t + 1] if k == spa - 1 else math.nan)
    assert seen == ref["lr"]
    assert sched.decisions[:horizon] == ref["lr"]


def test_without_a_bound_the_reference_lr_is_the_clip(run_dir: Path) -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [param], "lr": 0.05}])
    sched = PolicyScheduler(opt, run_dir, total_steps=40)
    assert sched.steps_per_decision == 5  # 40 steps over the env's horizon of 8 decisions
    lrs = []
    for step in range(40):
        loss = (param - 1.0).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss)
        lrs.append(sched.get_last_lr()[0])
        assert 0.05 * 0.01 * (1 - 1e-9) <= lrs[-1] <= 0.05, step
    assert len(sched.decisions) == 9


def test_bad_run_dir_and_unknown_env(tmp_path: Path, run_dir: Path) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="model.zip is missing"):
        (tmp_path / ".hydra").mkdir()
        (tmp_path / ".hydra" / "config.yaml").write_text("env: {id: x}\nagent: {}\n")
        PolicyScheduler(opt, tmp_path, total_steps=10)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.env.id = "lrrl/Unknown-v0"
    OmegaConf.save(config, tmp_path / ".hydra" / "config.yaml")
    (tmp_path / "model.zip").write_bytes((run_dir / "model.zip").read_bytes())
    with pytest.raises(ValueError, match="register_observation_builder"):
        PolicyScheduler(opt, tmp_path, total_steps=10)
    assert "lrrl/NMF-v0" in OBSERVATION_BUILDERS


# -- lrrl/DNN-v0 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dnn_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DNN run directory (SGD and Adam instances) holding an observation-sensitive agent."""
    torch.manual_seed(0)
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=smoke", "logger=none", "env=dnn"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["env"].update(steps_per_action=3, horizon=6)  # type: ignore[index]
    spec = EnvSpec.from_dict(config["env"])  # type: ignore[index]
    env_id, kwargs = spec.id, spec.options
    env = make_env(env_id, **kwargs)
    model = PPO("MlpPolicy", env, seed=0, policy_kwargs={"net_arch": [16]}, device="cpu")
    with torch.no_grad():
        model.policy.action_net.weight.mul_(50.0)
    folder = tmp_path_factory.mktemp("dnn_run")
    (folder / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    model.save(folder / "model.zip")
    env.close()
    return folder


def _dnn_rollout(run_dir: Path, optimizer: str, seed: int) -> list[dict[str, Any]]:
    """The agent in its env on the first test instance with ``optimizer``: the reset's info,
    then each step's."""
    config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    spec = EnvSpec.from_dict(config["env"])  # type: ignore[index]
    env_id, kwargs = spec.id, spec.options
    env = make_env(env_id, **kwargs)
    model = PPO.load(run_dir / "model.zip", device="cpu")
    inst = next(i for i in env.unwrapped.instances("test") if i.optimizer == optimizer)
    obs, info = env.reset(seed=seed, options={"instance": inst.name})
    infos, done = [info], False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, _, terminated, truncated, info = env.step(action)
        infos.append(info)
        done = terminated or truncated
    env.close()
    return infos


@pytest.mark.parametrize(
    ("optimizer", "cls"), [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)]
)
def test_dnn_same_lrs_as_the_agent_in_its_env(dnn_run_dir: Path, optimizer: str, cls) -> None:
    config = OmegaConf.load(dnn_run_dir / ".hydra" / "config.yaml")
    spa, horizon = int(config.env.steps_per_action), int(config.env.horizon)
    ref = _dnn_rollout(dnn_run_dir, optimizer, seed=4)
    lrs = [info["lr"] for info in ref[1:]]
    assert len(lrs) == horizon and len(set(lrs)) > 2  # the agent reacts to what it sees

    start = ref[0]
    opt = cls([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = PolicyScheduler(
        opt,
        dnn_run_dir,
        total_steps=spa * horizon,
        steps_per_decision=spa,
        loss0=start["train_loss"],
        initial={k: start[k] for k in ("grad_norm", "accuracy")} | {"val_loss": start["loss"]},
        window_loss="last",
    )
    seen = []
    for t in range(horizon):
        seen.append(opt.param_groups[0]["lr"])
        info = ref[t + 1]
        for _ in range(spa - 1):
            opt.step()
            sched.step(math.nan, grad_norm=math.nan)  # overwritten by the window's last step
        opt.step()
        # the loop validates once per window, as the env does
        sched.step(
            info["train_loss"],
            val_loss=info["loss"],
            grad_norm=info["grad_norm"],
            accuracy=info["accuracy"],
        )
    assert seen == lrs
    low, high = DEFAULT_LR_RANGES[optimizer]
    assert all(low * (1 - 1e-9) <= lr <= high * (1 + 1e-9) for lr in seen)


def test_dnn_with_training_losses_only_and_bad_input(dnn_run_dir: Path) -> None:
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([param], lr=1e-3)
    sched = PolicyScheduler(opt, dnn_run_dir, total_steps=30)
    for _ in range(30):
        loss = param.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss)
    low, high = DEFAULT_LR_RANGES["adam"]
    assert all(low * (1 - 1e-9) <= lr <= high * (1 + 1e-9) for lr in sched.decisions)
    assert len(sched.decisions) == 7  # 30 steps over the env's horizon of 6, plus the start
    with pytest.raises(ValueError, match="noise_ratio"):
        sched.step(1.0, noise_ratio=0.5)
    with pytest.raises(ValueError, match="RMSprop"):
        PolicyScheduler(torch.optim.RMSprop([param], lr=0.01), dnn_run_dir, total_steps=30)
    with pytest.raises(ValueError, match="val_los"):
        PolicyScheduler(opt, dnn_run_dir, total_steps=30, initial={"val_los": 1.0})
    assert "lrrl/DNN-v0" in OBSERVATION_BUILDERS


def test_dnn_options_missing_from_the_run_take_the_env_defaults(
    dnn_run_dir: Path, tmp_path: Path
) -> None:
    config = OmegaConf.load(dnn_run_dir / ".hydra" / "config.yaml")
    config.env = {"name": "dnn", "id": "lrrl/DNN-v0"}  # e.g. a run saved before an option existed
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(config, tmp_path / ".hydra" / "config.yaml")
    shutil.copy(dnn_run_dir / "model.zip", tmp_path / "model.zip")
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    horizon = DNNConfig().horizon
    sched = PolicyScheduler(opt, tmp_path, total_steps=4 * horizon)
    assert sched.steps_per_decision == 4  # spread over the default horizon
    low, high = DNNConfig().lr_ranges["sgd"]
    for _ in range(4 * horizon):
        loss = param.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step(loss)
    assert len(sched.decisions) == horizon + 1
    assert all(low * (1 - 1e-9) <= lr <= high * (1 + 1e-9) for lr in sched.decisions)


def test_dnn_resumes_from_a_weights_only_checkpoint(dnn_run_dir: Path) -> None:
    losses = [2.0 * math.exp(-0.05 * t) + 0.1 * math.sin(t) for t in range(30)]

    def make(opt: torch.optim.Optimizer) -> PolicyScheduler:
        return PolicyScheduler(opt, dnn_run_dir, total_steps=30, steps_per_decision=3)

    def drive(sched: PolicyScheduler, opt: torch.optim.Optimizer, steps: range) -> list:
        lrs = []
        for t in steps:
            opt.step()
            loss = losses[t]
            sched.step(loss, val_loss=1.5 * loss, grad_norm=1.0 + 0.1 * t, accuracy=0.02 * t)
            lrs.append(opt.param_groups[0]["lr"])
        return lrs

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)

    opt = optimizer()
    uninterrupted = drive(make(opt), opt, range(30))
    assert len(set(uninterrupted)) > 1
    opt = optimizer()
    first = make(opt)
    before = drive(first, opt, range(16))  # mid-window (16 % 3 != 0)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    opt = optimizer()
    resumed = make(opt)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert drive(resumed, opt, range(16, 30)) == uninterrupted[16:]
    assert before == uninterrupted[:16]
