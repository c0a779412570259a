"""The optuna sweeper (``hydra/sweeper=lrrl_optuna``): search space, trials, failures, resuming.

Most tests drive :class:`lrrl.sweeper.OptunaSearch` with a launcher that computes each job's
objective from its overrides in-process (milliseconds per trial); the slow test runs a real
search through ``python -m lrrl.train`` and then resumes it.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from conftest import run_cli
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from lrrl.config import TrainConfig
from lrrl.sweeper import (
    RESULTS_FILE,
    OptunaSearch,
    SearchError,
    SweeperConfig,
    TrialLink,
    parse_search_space,
)
from lrrl.tracking import TrialReporter

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "agent.hyperparams.learning_rate": "tag(log, interval(1e-4, 3e-3))",
    "agent.hyperparams.n_epochs": "range(1, 9, 2)",
    "agent.hyperparams.policy_kwargs.net_arch": "choice([32, 32], [64, 64])",
}


# -- the search space -----------------------------------------------------------------------


def test_search_space_grammar() -> None:
    params = {
        **SPACE,
        "agent.hyperparams.n_steps": "choice(32, 64)",
        "agent.hyperparams.batch_size": "tag(log, int(interval(8, 256)))",
        "agent.hyperparams.gamma": 0.99,  # YAML gives a number: fixed in every trial
    }
    dims, fixed = parse_search_space(params, ["agent.hyperparams.n_steps=16", "seed=3"])
    assert dims["agent.hyperparams.learning_rate"].distribution == FloatDistribution(
        1e-4, 3e-3, log=True
    )
    # range's stop is exclusive, as in Hydra's basic sweeper: 1, 3, 5, 7
    assert dims["agent.hyperparams.n_epochs"].distribution == IntDistribution(1, 7, step=2)
    assert dims["agent.hyperparams.batch_size"].distribution == IntDistribution(8, 256, log=True)
    net = dims["agent.hyperparams.policy_kwargs.net_arch"]
    assert isinstance(net.distribution, CategoricalDistribution)
    # the command line fixes n_steps (replacing its dimension) and adds seed
    assert "agent.hyperparams.n_steps" not in dims
    assert sorted(fixed) == [
        "agent.hyperparams.gamma=0.99",
        "agent.hyperparams.n_steps=16",
        "seed=3",
    ]


def test_sampled_values_become_overrides_hydra_reads_back() -> None:
    dims, _ = parse_search_space(SPACE)
    parser = OverridesParser.create()
    net = dims["agent.hyperparams.policy_kwargs.net_arch"]
    for choice in net.distribution.choices:  # type: ignore[attr-defined]
        override = parser.parse_override(net.override(choice))
        assert override.value() == net.value(choice)
        assert net.value(choice) in ([32, 32], [64, 64])
    lr = dims["agent.hyperparams.learning_rate"]
    sample = 0.00012345678901234
    assert parser.parse_override(lr.override(sample)).value() == sample  # every digit kept


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("interval(1e-4)", "missing a required argument"),
        ("interval(3e-3, 1e-4)", "must be below"),
        ("tag(log, interval(0, 1))", "positive low end"),
        ("tag(lgo, interval(1e-4, 1e-3))", "unknown tag"),
        ("tag(log, choice(1, 2))", "applies to interval() only"),
        ("range(5, 1)", "empty"),
        ("choice(1, 2", "no viable alternative"),
    ],
)
def test_a_bad_search_value_names_itself_and_what_is_accepted(value: str, reason: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_search_space({"agent.hyperparams.learning_rate": value})
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"hydra.sweeper.params.agent.hyperparams.learning_rate={value!r}")
    assert "expected choice(a, b, ...)" in message and "interval(low, high)" in message
    assert reason in message


def test_the_preset_searches_ppo_scored_on_the_tuning_instances() -> None:
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/sweeper=lrrl_optuna", "hydra.sweep.dir=/sweep"],
            return_hydra_config=True,
        )
    options = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert options["_target_"] == "hydra_plugins.lrrl_sweeper.lrrl_optuna_sweeper.LrrlOptunaSweeper"
    assert options["storage"] == "sqlite:////sweep/optuna.db"
    assert options["n_trials"] == 20
    assert options["trial_overrides"][:2] == ["eval.split=tune", "eval.tune_split=train"]
    assert {"eval.baselines=[]", "eval.unclipped=[]"} <= set(options["trial_overrides"])
    dims, fixed = parse_search_space(options["params"])
    assert fixed == []
    assert {k.split(".")[-1] for k in dims} == {
        "learning_rate",
        "n_steps",
        "batch_size",
        "n_epochs",
        "gamma",
        "ent_coef",
        "clip_range",
        "net_arch",
    }
    assert all(OmegaConf.select(cfg, k) is not None for k in dims)  # keys of agent=ppo


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["agent.hyperparams.gamma=interval(0.999, 0.9)"],
            "agent.hyperparams.gamma='interval(0.999, 0.9)' is invalid: expected "
            "choice(a, b, ...) or a,b,...; range(start, stop[, step]); interval(low, high), "
            "int(interval(low, high)) or tag(log, interval(...)); or a single value "
            "(the interval's low end 0.999 must be below its high end 0.9)",
        ),
        (  # trials are scored on the tuning split, which the DNN env lacks
            ["env=dnn"],
            "eval.split: split='tune' is invalid: expected one of ('train', 'test', 'heldout', "
            "'all') (in a trial's config, with hydra.sweeper.trial_overrides="
            "[eval.split=tune,eval.tune_split=train,eval.baselines=[],eval.unclipped=[]])",
        ),
        (  # a searched key the config lacks (the PPO space with agent=a2c)
            ["agent=a2c"],
            "Could not override 'agent.hyperparams.batch_size'.",
        ),
    ],
)
def test_a_bad_search_fails_in_one_line_before_any_trial(
    tmp_path: Path, args: list[str], message: str
) -> None:
    sweep = tmp_path / "sweep"
    done = _train(tmp_path, "debug=smoke", *args, sweep=sweep)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lrrl.train: error: {message}"), lines
    assert not sweep.exists()


def test_a_search_space_replaced_on_the_command_line_passes_the_checks() -> None:
    from lrrl.train import check_config, check_sweeper, sweep_jobs

    args = [
        "-m",
        "agent=a2c",
        "hydra/sweeper=lrrl_optuna",
        "~hydra.sweeper.params",  # Hydra's overrides, though they start with ~ and +
        "+hydra.sweeper.params={agent.hyperparams.learning_rate: 'interval(1e-4, 1e-2)'}",
    ]
    check_sweeper(args)
    assert sweep_jobs(args) == [["agent=a2c"]]
    check_config(args)


# -- the search, with an in-process launcher ------------------------------------------------


class Launcher:
    """Runs each job as ``objective(overrides as a dict)``; records the jobs it launched."""

    def __init__(self, objective: Any) -> None:
        self.objective = objective
        self.jobs: list[tuple[int, list[str]]] = []

    def launch(self, batch: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        out = []
        for i, overrides in enumerate(batch):
            num = initial_job_idx + i
            self.jobs.append((num, list(overrides)))
            ret = JobReturn(
                overrides=list(overrides),
                hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": f"job{num}"}}}),
            )
            try:
                ret.return_value = self.objective(dict(o.split("=", 1) for o in overrides))
                ret.status = JobStatus.COMPLETED
            except Exception as err:  # what Hydra's run_job does
                ret.return_value = err
                ret.status = JobStatus.FAILED
            out.append(ret)
        return out


def lr_objective(overrides: dict[str, str]) -> float:
    return (math.log10(float(overrides["agent.hyperparams.learning_rate"])) + 3) ** 2


def search(sweep_dir: Path, objective: Any = lr_objective, **options: Any) -> OptunaSearch:
    """An OptunaSearch set up as Hydra would, with the in-process launcher."""
    options = {
        "params": SPACE,
        "storage": f"sqlite:///{sweep_dir}/optuna.db",
        "trial_overrides": ["eval.split=tune"],
        **options,
    }
    s = OptunaSearch(**options)
    s.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    s.hydra_context = SimpleNamespace(  # type: ignore[assignment]
        config_loader=SimpleNamespace(load_sweep_config=lambda *args: None)
    )
    s.launcher = Launcher(objective)  # type: ignore[assignment]
    return s


def study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="lrrl", storage=f"sqlite:///{sweep_dir}/optuna.db")


def test_trials_run_as_hydra_jobs_in_batches_and_the_best_is_recorded(tmp_path: Path) -> None:
    s = search(tmp_path, n_trials=5, n_jobs=2)
    s.sweep(["env=nmf"])
    jobs = s.launcher.jobs  # type: ignore[union-attr]
    trials = study(tmp_path).trials
    # trial k is job k (its run dir), in batches of two
    assert [num for num, _ in jobs] == [t.number for t in trials] == [0, 1, 2, 3, 4]
    for (_, overrides), trial in zip(jobs, trials, strict=True):
        assert overrides[0] == "env=nmf"
        assert overrides[-1] == "eval.split=tune"  # trial_overrides come last
        lr = trial.params["agent.hyperparams.learning_rate"]
        assert f"agent.hyperparams.learning_rate={lr!r}" in overrides
        assert trial.value == pytest.approx(lr_objective(dict(o.split("=", 1) for o in overrides)))
        assert trial.user_attrs["run_dir"] == f"job{trial.number}"
    assert len({t.params["agent.hyperparams.learning_rate"] for t in trials}) == 5
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    best = min(trials, key=lambda t: t.value)
    assert results["best_trial"] == best.number
    assert results["best_value"] == best.value
    assert results["best_run_dir"] == f"job{best.number}"
    net = best.params["agent.hyperparams.policy_kwargs.net_arch"]
    assert results["best_params"]["agent.hyperparams.policy_kwargs.net_arch"] in (
        [32, 32],
        [64, 64],
    )
    assert f"agent.hyperparams.policy_kwargs.net_arch={net}" in results["best_overrides"]
    assert results["trials"] == {"complete": 5}


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    outcomes = iter([RuntimeError("agent diverged\nmore"), math.nan, None, 1.0, 2.0])

    def objective(overrides: dict[str, str]) -> Any:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    s = search(tmp_path, objective, n_trials=5)
    s.sweep([])
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE] * 2
    assert [t.user_attrs["error"] for t in trials[:3]] == [
        "RuntimeError: agent diverged",
        "the job returned nan (expected a finite number)",
        "the job returned None (expected a number)",
    ]
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    assert results["best_trial"] == 3 and results["trials"] == {"fail": 3, "complete": 2}


def test_a_search_where_no_trial_completes_says_why(tmp_path: Path) -> None:
    def objective(overrides: dict[str, str]) -> float:
        raise ValueError("unknown agent.hyperparams option(s) n_epochs for a2c")

    with pytest.raises(SearchError, match="2 failed; the first: ValueError: unknown agent"):
        search(tmp_path, objective, n_trials=2).sweep([])


def test_a_resumed_search_runs_only_the_missing_trials(tmp_path: Path) -> None:
    search(tmp_path / "a", n_trials=3).sweep([])
    resumed = search(tmp_path / "a", n_trials=5)
    resumed.sweep([])
    assert [num for num, _ in resumed.launcher.jobs] == [3, 4]  # type: ignore[union-attr]
    # and it asks what one uninterrupted search of five trials asks
    search(tmp_path / "b", n_trials=5).sweep([])
    params = [[t.params for t in study(tmp_path / d).trials] for d in ("a", "b")]
    assert params[0] == params[1]
    again = search(tmp_path / "a", n_trials=5)
    again.sweep([])
    assert again.launcher.jobs == []  # type: ignore[union-attr]


def test_a_trial_a_killed_search_left_running_runs_again(tmp_path: Path) -> None:
    first = search(tmp_path, n_trials=2)
    first.sweep([])
    killed = study(tmp_path).ask(
        {k: d.distribution for k, d in first.dimensions.items()}
    )  # what a search killed in the middle of trial 2 leaves
    resumed = search(tmp_path, n_trials=3)
    resumed.sweep([])
    trials = study(tmp_path).trials
    assert trials[2].state == TrialState.FAIL and "error" not in trials[2].user_attrs
    assert trials[3].user_attrs["rerun_of"] == 2
    assert trials[3].params == killed.params
    assert [num for num, _ in resumed.launcher.jobs] == [3]  # type: ignore[union-attr]
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    assert results["trials"] == {"complete": 3, "interrupted": 1}


def test_resuming_with_another_search_is_refused(tmp_path: Path) -> None:
    search(tmp_path, n_trials=1).sweep(["env.rank=4"])
    with pytest.raises(SearchError, match="created for another search .its fixed differ"):
        search(tmp_path, n_trials=2).sweep(["env.rank=8"])
    narrower = {**SPACE, "agent.hyperparams.learning_rate": "tag(log, interval(1e-4, 1e-3))"}
    with pytest.raises(SearchError, match="its params differ"):
        search(tmp_path, n_trials=2, params=narrower).sweep(["env.rank=4"])


# -- pruning: trials report progress to the stored study -------------------------------------


def test_a_trials_link_to_its_study_reaches_the_train_config_through_hydra() -> None:
    link = TrialLink.of(SweeperConfig(storage="sqlite:///runs/it's here/optuna.db"), trial=7)
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["env=nmf", "debug=smoke", link.override()])
    config = TrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    assert config.search == link
    assert link.pruner == "median" and link.report_every == 5_000  # the sweeper's defaults
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["env=nmf", "debug=smoke"])
    assert TrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True)).search is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pruner": "hyperband"}, "hydra.sweeper.pruner='hyperband' is invalid: expected one of"),
        ({"storage": None}, "hydra.sweeper.storage=None is invalid: expected a storage URL"),
        ({"direction": "maximize"}, "hydra.sweeper.direction='maximize' is invalid"),
        ({"report_every": 0}, "hydra.sweeper.report_every=0 is invalid: expected an integer >= 1"),
    ],
)
def test_a_bad_pruning_option_names_itself(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SweeperConfig(**{"storage": "sqlite:///x.db", **options})


def test_a_search_without_storage_or_minimising_runs_without_pruning() -> None:
    SweeperConfig(storage=None, pruner="none")
    SweeperConfig(storage="sqlite:///x.db", direction="maximize", pruner="none")


def reporting_objective(overrides: dict[str, str]) -> float:
    """A job that trains about 10,000 env steps in rollouts of 768, reporting through the real
    TrialReporter; its episode returns fall with the distance of log10(lr) from -3."""
    parser = OverridesParser.create()
    (override,) = parser.parse_overrides([f"search={overrides['search']}"])
    reporter = TrialReporter(TrialLink.from_dict(override.value()))
    loss = lr_objective(overrides)
    for t in range(768, 11_000, 768):  # the last rollout ends past 10,000
        reporter.episode(-loss * t / 10_000)
        reporter.step(t)
    return loss


def test_trials_report_their_progress_and_bad_ones_are_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = search(
        tmp_path,
        reporting_objective,
        n_trials=12,
        prune_startup_trials=3,
        prune_warmup_steps=4_000,
        report_every=2_000,
    )
    s.sweep([])
    trials = study(tmp_path).trials
    states = [t.state for t in trials]
    assert states[:3] == [TrialState.COMPLETE] * 3  # the startup trials always finish
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, states
    for t in trials:
        steps = sorted(t.intermediate_values)
        assert steps == [2_000, 4_000, 6_000, 8_000, 10_000][: len(steps)]  # aligned steps
        if t.state == TrialState.PRUNED:
            assert 4_000 <= steps[-1] < 10_000  # from the warm-up on, before the end
    # what was pruned was worse than the median of the finished trials at that step
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in pruned:
        step = max(t.intermediate_values)
        before = [d.intermediate_values[step] for d in done if d.number < t.number]
        assert t.intermediate_values[step] > sorted(before)[(len(before) - 1) // 2]
    results = yaml.safe_load((tmp_path / RESULTS_FILE).read_text())
    assert results["trials"] == {"complete": len(done), "pruned": len(pruned)}
    # the README's table of the search: best first, where pruned trials stopped
    import search_table

    best = min(done, key=lambda t: t.value)
    run_dir = tmp_path / "runs" / f"job{best.number}"  # the launcher's run dir, relative
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"train": {"wall_time_s": 12.3}}))
    monkeypatch.chdir(tmp_path / "runs")
    lines = search_table.table(tmp_path).splitlines()
    assert lines[0].startswith("| trial | state | objective (tune) | PPO s | ")
    assert all(line.count("|") == lines[0].count("|") for line in lines[1:-2])
    assert lines[2].startswith(f"| **{best.number}** | complete | {best.value:.3f} | 12 |")
    assert lines[3].split(" | ")[3] == "–"  # no run dir on disk: no seconds
    for t in pruned:
        step = max(t.intermediate_values)
        assert any(
            line.startswith(f"| {t.number} | pruned at {step:,} steps | – |") for line in lines
        )
    assert " ".join(results["best_overrides"]) in lines[-1]


def test_without_pruning_every_trial_finishes_and_still_reports(tmp_path: Path) -> None:
    s = search(tmp_path, reporting_objective, n_trials=6, pruner="none", report_every=2_000)
    s.sweep([])
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert all(len(t.intermediate_values) == 5 for t in trials)


# -- a real search through lrrl.train ----------------------------------------------------------

#: A search in seconds: smoke budgets, no baselines beside the agent, one process per trial.
FAST = (
    "env=nmf",
    "debug=smoke",
    "agent.checkpoint_every=0",
    "eval.baselines=[]",
    "eval.unclipped=[]",
    "eval.n_jobs=1",
)


def _train(cwd: Path, *args: str, sweep: Path) -> subprocess.CompletedProcess:
    return run_cli("-m", "hydra/sweeper=lrrl_optuna", f"hydra.sweep.dir={sweep}", *args, cwd=cwd)


def test_a_trial_the_config_rejects_fails_alone(tmp_path: Path) -> None:
    # lr_floor must be below 1: the up-front check passes (it tries the low end, 0.999), but
    # the sampled values are all above 1, so each trial's config check fails (a ConfigError
    # in the job); the search records both trials failed instead of exiting at the first
    sweep = tmp_path / "sweep"
    done = _train(
        tmp_path,
        *FAST,
        "hydra.sweeper.n_trials=2",
        "env.lr_floor=interval(0.999, 1000)",
        sweep=sweep,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    # the reason, without a traceback
    assert "Traceback" not in done.stderr
    expected = "no trial of study 'lrrl' completed (2 failed; the first: ConfigError: lr_floor="
    assert any(line.startswith(expected) for line in done.stderr.splitlines())
    trials = study(sweep).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all("lr_floor" in t.user_attrs["error"] for t in trials)


@pytest.mark.slow
def test_a_search_through_lrrl_train_and_its_resumption(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = _train(
        tmp_path, *FAST, "hydra.sweeper.n_trials=3", "hydra.sweeper.report_every=64", sweep=sweep
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("__")[0] for p in runs] == ["0", "1", "2"]
    metrics = [json.loads((p / "metrics.json").read_text()) for p in runs]
    # every trial is scored on the tuning instances, never the test ones
    assert {m["split"] for m in metrics} == {"tune"}
    configs = [OmegaConf.load(p / ".hydra" / "config.yaml") for p in runs]
    assert len({c.agent.hyperparams.learning_rate for c in configs}) == 3  # sampled per trial
    trials = study(sweep).trials
    assert [t.value for t in trials] == [m["objective"] for m in metrics]
    # each trial reported its training progress to the study (256 env steps, every 64)
    assert [sorted(t.intermediate_values) for t in trials] == [[64, 128, 192, 256]] * 3
    results = yaml.safe_load((sweep / RESULTS_FILE).read_text())
    best = min(range(3), key=lambda i: metrics[i]["objective"])
    assert results["best_value"] == metrics[best]["objective"]
    assert results["best_run_dir"] == str(runs[best])
    assert results["best_params"]["agent.hyperparams.learning_rate"] == (
        configs[best].agent.hyperparams.learning_rate
    )
    first = {p.name: (p / "metrics.json").stat().st_mtime_ns for p in runs}

    # the same command with more trials: only the new ones run, two at a time
    done = _train(
        tmp_path, *FAST, "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2", sweep=sweep
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("__")[0] for p in runs] == ["0", "1", "2", "3", "4"]
    assert {p.name: (p / "metrics.json").stat().st_mtime_ns for p in runs[:3]} == first
    assert [t.state for t in study(sweep).trials] == [TrialState.COMPLETE] * 5
