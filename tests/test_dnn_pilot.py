"""experiments/dnn_pilot.py at tiny scale: baselines tuned per inner optimizer, paired stats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_DNN, compose
from dnn_pilot import FAMILIES, play_split, summarise_split, tune_per_optimizer
from stable_baselines3 import PPO

from lrrl.agents.sb3 import AgentController
from lrrl.config import EnvSpec, EvalConfig
from lrrl.envs.dnn_models import DEFAULT_LR_RANGES
from lrrl.envs.registration import make_env
from lrrl.rollout import episode_seeds


def test_each_optimizer_gets_its_own_tuned_baselines(dnn_run: Path) -> None:
    config = compose("debug=smoke", "logger=none", "env=dnn")
    env = EnvSpec.from_dict({**config["env"], **TINY_DNN})
    ev = EvalConfig.from_dict({**config["eval"], "episodes_per_instance": 1})
    tuned = tune_per_optimizer(env, ev, points=3)
    assert set(tuned) == set(FAMILIES)
    for by_opt in tuned.values():
        assert set(by_opt) == {"sgd", "adam"}
        for opt, best in by_opt.items():
            low, high = DEFAULT_LR_RANGES[opt]
            assert low * (1 - 1e-9) <= best.controller.params["lr"] <= high * (1 + 1e-9)
            assert best.candidates == 3 * (2 if best.controller.name == "cosine" else 1)

    probe = make_env(env.id, **env.options)
    runs = episode_seeds(probe.unwrapped.instances("test"), 1, ev.seed + 1)
    probe.close()
    agent = AgentController("ppo", PPO.load(dnn_run / "model.zip", device="cpu"))
    episodes = play_split(env, agent, tuned, runs, n_jobs=1)
    assert set(episodes) == {"agent", *FAMILIES}
    for family in FAMILIES:  # every instance met its own optimizer's tuned schedule
        for (inst, seed), e in zip(runs, episodes[family], strict=True):
            assert (e.instance, e.seed) == (inst.name, seed)
            assert e.lr[0] == pytest.approx(tuned[family][inst.optimizer].controller.params["lr"])
    summary = summarise_split(episodes, runs, ev)
    for family in FAMILIES:
        s = summary[family]
        assert s["ratio_ci"][0] <= s["ratio"] <= s["ratio_ci"][1]
        assert {"opt=sgd", "opt=adam", "digits-mlp"} == set(s["by_group"])
        assert s["episodes"] == len(runs) == 2  # one test instance per optimizer


def test_cli_writes_the_report(dnn_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pilot.json"
    script = Path(__file__).parents[1] / "experiments" / "dnn_pilot.py"
    args = [str(dnn_run), "--splits", "heldout", "--episodes", "1", "--grid-points", "2"]
    result = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["tuned"]) == set(FAMILIES)
    assert set(report["tuned"]["cosine"]) == {"sgd", "adam"}
    assert set(report["splits"]["heldout"]) == set(FAMILIES)
    assert "heldout: ppo / tuned cosine" in result.stdout
