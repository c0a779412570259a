"""``lrrl.train`` end to end: the composed real config, shrunk by ``debug=smoke``."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose, run_cli, tiny_config
from omegaconf import OmegaConf

from lrrl.cli import ConfigError
from lrrl.pipeline import validate

RUN_FILES = ("model.zip", "schedule.json", "metrics.json", "schedules.png", "episodes.csv")


def assert_complete(run_dir: Path) -> dict:
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    schedule = json.loads((run_dir / "schedule.json").read_text())
    assert schedule["schema"] == "lrrl.schedule/v1"
    assert len(schedule["loss"]) == len(schedule["lr"]) + 1
    assert {"ppo", "constant", "step_decay", "follow_bound"} <= set(metrics["schedulers"])
    for summary in metrics["schedulers"].values():
        assert summary["final_loss"] > 0
    return metrics


def test_a_run_writes_its_outputs_and_its_objective(tiny_run):
    on_disk = assert_complete(tiny_run)
    assert on_disk["objective"] == pytest.approx(on_disk["schedulers"]["ppo"]["log_loss_ratio"])
    # baselines were tuned on the tuning split and reported on the test split
    assert on_disk["schedulers"]["constant"]["tuned_on"] == "tune" and on_disk["split"] == "test"
    assert on_disk["train"]["timesteps"] >= 256
    # the headline: the agent against the best tuned baseline, follow_bound and unclipped
    head = on_disk["headline"]
    assert head["subject"] == "ppo" and head["follow_bound"]["name"] == "follow_bound"
    assert head["best_unclipped"]["name"] == "constant@unclipped"
    low, high = head["best_baseline"]["ratio_ci"]
    assert low <= head["best_baseline"]["ratio"] <= high
    assert {"spikes_per_episode", "lr_jitter", "divergence_rate"} <= set(head)


def test_cli_runs_from_any_directory(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli("debug=smoke", f"hydra.run.dir={run_dir}", "env.rank=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_complete(run_dir)
    # printed to a pipe (a cluster job's log), the table keeps one line per scheduler
    interval = r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]"
    assert re.search(rf"^│ ppo +│ +{interval} +│", done.stdout, re.M), done.stdout
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.env.rank == 3  # the config saved is enough to re-run
    assert "env.rank=3" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")


@pytest.mark.slow
def test_sweep_gives_one_complete_dir_per_job(tmp_path):
    done = run_cli(
        "-m", "debug=smoke", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name.split("__")[0] for p in jobs] == ["0", "1"]
    seeds = [assert_complete(p)["seed"] for p in jobs]
    assert seeds == [0, 1]
    # The README's tables come from the run dirs, by one script, into marked sections.
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- report:nmf -->\nold\n<!-- /report:nmf -->\nrest\n")
    figures_path = tmp_path / "figures.json"
    script = Path(__file__).parents[1] / "experiments" / "report.py"
    args = [str(tmp_path / "sweep"), "--label", "nmf", "--readme", str(readme)]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--json", str(figures_path), "--samples", "200"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(figures_path.read_text())
    assert figures["seeds"] == [0, 1] and "ppo" in figures["schedulers"]
    low, high = figures["schedulers"]["constant"]["ratio_ci"]
    assert low <= figures["schedulers"]["constant"]["ratio"] <= high
    text = readme.read_text()
    assert "old" not in text and text.endswith("rest\n") and "python experiments/report.py" in text
    assert "| **ppo** |" in text and "| family |" in text


@pytest.mark.slow
def test_report_takes_the_shared_baselines_from_one_evaluation(tmp_path):
    # A seed sweep that evaluates only its agents, and one evaluation of the baselines on the
    # same test episodes: the report pairs them (what the README's NMF tables are made from).
    quiet = ["debug=smoke", "eval.unclipped=[]"]
    done = run_cli(
        "-m",
        *quiet,
        "eval.baselines=[]",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shared = tmp_path / "shared"
    done = run_cli(
        *quiet,
        "schedulers=[constant,cosine]",
        f"hydra.run.dir={shared}",
        cwd=tmp_path,
        tool="lrrl.evaluate",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    script = Path(__file__).parents[1] / "experiments" / "report.py"
    figures_path = tmp_path / "figures.json"
    args = [str(tmp_path / "sweep"), "--shared", str(shared), "--json", str(figures_path)]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--samples", "200"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(figures_path.read_text())
    assert set(figures["schedulers"]) == {"ppo", "constant", "cosine"}
    # Every run met the shared baselines on the same episodes: the paired ratio is the mean
    # over both seeds of exp(agent - baseline) per instance, not a comparison with run 0 alone.
    rows = list(csv.DictReader((shared / "episodes.csv").open()))
    const = {
        r["instance"]: float(r["log_loss_ratio"]) for r in rows if r["scheduler"] == "constant"
    }
    agent = [
        float(r["log_loss_ratio"]) - const[r["instance"]]
        for run in sorted((tmp_path / "sweep").glob("*__nmf__*"))
        for r in csv.DictReader((run / "episodes.csv").open())
    ]
    assert len(agent) == 2 * len(const)
    assert figures["schedulers"]["constant"]["ratio"] == pytest.approx(
        math.exp(sum(agent) / len(agent)), rel=1e-6
    )
    assert "below constant" in done.stdout or "below cosine" in done.stdout
    # Another sweep's agent, paired run by run (here the same sweep: the ratio is exactly 1,
    # with no spread, only if run k meets run k on each episode).
    again = ["--against", f"again={tmp_path / 'sweep'}", "--json", str(figures_path)]
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "sweep"), *again, "--samples", "200"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(figures_path.read_text())
    assert figures["reference"] == "again" and figures["best_tuned"] is None
    assert figures["schedulers"]["again"]["ratio_ci"] == pytest.approx([1.0, 1.0])
    assert "| ppo / again |" in done.stdout
    one = tmp_path / "one"
    shutil.copytree(tmp_path / "sweep", one)
    shutil.rmtree(sorted(one.glob("*__nmf__*"))[-1])
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "sweep"), "--against", f"one={one}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "--against one: 1 runs, expected 2 (one per training seed" in done.stderr


@pytest.mark.slow
def test_wandb_offline_run_has_config_and_curves(tmp_path):
    run_dir = tmp_path / "run"
    done = run_cli(
        "debug=smoke", "logger=wandb", f"hydra.run.dir={run_dir}", cwd=tmp_path, mode="offline"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # one run per job
    record = next(runs[0].glob("*.wandb")).read_bytes()
    # the resolved config is attached; training and evaluation curves are logged
    for key in (b"steps_per_action", b"charts/final_loss", b"eval/ppo/lr", b"eval/ppo/loss"):
        assert key in record, key
    assert "finishing run" in (runs[0] / "logs" / "debug.log").read_text()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("env.rank=500", "rank"),
        ("env.steps_per_action=0", "steps_per_action"),
        ("env.bound_scale=-1", "bound_scale"),
        ("env.lr_range=[1.0,0.1]", "lr_range"),
        ("env.shape=[0,10]", "shape"),
        ("env.batch_size=0", "batch_size"),
        ("env.instances=nope", "instances"),
        ("agent.total_timesteps=0", "total_timesteps"),
        ("+agent.hyperparams.n_stepz=8", "n_stepz"),
        ("eval.baselines=[nope]", "baselines"),
        ("eval.lr_grid=[-1.0]", "lr_grid"),
        ("eval.tune_split=test", "tune_split"),
        ("eval.unclipped=[nope]", "unclipped"),
        ("env.families=[nope]", "families"),
    ],
)
def test_bad_config_is_rejected_before_work_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key) as err:
        validate(tiny_config(override))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["env=nope"], "env"),
        (["agent=nope"], "agent"),
        (["env.rank=1000"], "rank"),
        (["env.steps_per_action=-3"], "steps_per_action"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, key):
    done = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], done.stderr
    assert not (tmp_path / "run" / "model.zip").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("agent=a2c",),
        ("agent=recurrent_ppo",),
        ("agent.vec_env=subproc",),
        ("env.reward=relative_delta",),
        ("env.safeguard=false",),
        ("env.action_mode=delta",),
        ("env.action_mode=log_lr",),
    ],
    ids=lambda o: o[0],
)
def test_every_agent_and_option_path_runs_end_to_end(tmp_path, overrides):
    from lrrl.pipeline import run_experiment

    metrics = run_experiment(tiny_config(*overrides), tmp_path)
    algo = metrics["subject"]
    assert metrics["train"]["timesteps"] >= 256 and (tmp_path / "model.zip").is_file()
    assert math.isfinite(metrics["schedulers"][algo]["log_loss_ratio"])


@pytest.mark.slow
def test_sac_checkpoints_its_replay_buffer_and_resumes(tmp_path):
    from lrrl import checkpoint
    from lrrl.pipeline import run_experiment

    first = tmp_path / "first"
    config = tiny_config("agent=sac", "agent.total_timesteps=256", "agent.checkpoint_every=128")
    run_experiment(config, first)
    manifest = checkpoint.read_manifest(first / "checkpoint")
    assert "replay_buffer" in manifest["files"]
    resumed = tmp_path / "resumed"
    shutil.copytree(first / "checkpoint", resumed / "checkpoint")
    longer = tiny_config("agent=sac", "agent.total_timesteps=384", "agent.checkpoint_every=128")
    metrics = run_experiment(longer, resumed, resume=True)
    assert metrics["train"]["resumed_from"] == 256 and metrics["train"]["timesteps"] >= 384


@pytest.mark.slow
def test_evaluate_compares_several_agents(tiny_run, tmp_path):
    from conftest import write_run_config

    from lrrl.evaluate import run_evaluation
    from lrrl.pipeline import run_experiment

    other = tmp_path / "other"
    config = tiny_config("seed=1")
    write_run_config(other, config)
    run_experiment(config, other)
    evaluate = compose("progress_bar=false", config_name="evaluate")
    evaluate.update(run_dir=None, agents=[str(tiny_run), str(other)], env=config["env"])
    evaluate["eval"] = config["eval"]
    metrics = run_evaluation(evaluate, tmp_path / "eval")
    agents = [name for name in metrics["schedulers"] if name.startswith("ppo@")]
    assert sorted(agents) == sorted(f"ppo@{p.name}" for p in (tiny_run, other))
    subject = metrics["subject"]
    other_agent = next(a for a in agents if a != subject)
    assert "ratio" in metrics["schedulers"][other_agent]["vs_subject"]


@pytest.mark.parametrize(
    ("overrides", "n_envs", "n_steps"),
    [
        (["env=nmf"], 64, 16),  # conf/agent/for_env/ppo_nmf.yaml
        (["env=dnn"], 16, 64),  # PPO's generic rollout
        (["env=dnn_long"], 16, 64),
        (["env=nmf", "agent.n_envs=16", "agent.hyperparams.n_steps=64"], 16, 64),
        (["env=nmf", "agent=a2c"], 16, 8),
    ],
)
def test_ppo_takes_its_rollout_shape_from_the_env(overrides, n_envs, n_steps):
    agent = compose(*overrides)["agent"]
    assert (agent["n_envs"], agent["hyperparams"]["n_steps"]) == (n_envs, n_steps)
    assert agent["env_workers"] == 2
