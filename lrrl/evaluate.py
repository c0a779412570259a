"""``python -m lrrl.evaluate``: compare schedulers fairly, with intervals and the optimality gap.

    python -m lrrl.evaluate run_dir=outputs/nmf__ppo__0__...      # re-evaluate a train run
    python -m lrrl.evaluate env=nmf schedulers=[constant,cosine,greedylr]
    python -m lrrl.evaluate env=nmf agents=[RUN_A,RUN_B] eval.tuner=optuna eval.tune_budget=20

Baselines are tuned on the training instances (``eval.tune_split``) and every scheduler is
then played on the test instances with the same episode seeds. With ``run_dir`` the run's
saved env, seed and ``eval`` settings are used, so its end-of-training comparison is
reproduced; the outputs go to ``RUN_DIR/eval/<time>/`` and never overwrite the run's own.
The output directory receives ``metrics.json``, ``episodes.csv`` (one row per scheduler x
instance x seed), ``schedules.png`` (learning rate and loss per decision),
``intervals.png`` (IQM with bootstrap intervals) and ``schedules/<name>.json``.
"""

from __future__ import annotations

import platform
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lrrl import report
from lrrl.cli import ConfigError, check_group_choices, fail
from lrrl.harness import Comparison, EvalSettings, compare, make_env, split_env_config
from lrrl.outputs import plot_schedules, schedule_payload, write_json
from lrrl.seeding import seed_everything


def _eval_dir(run_dir: str | None, env_name: str, stamp: str) -> str:
    """Where an evaluation writes: inside the train run it re-evaluates, else ``outputs/``."""
    if run_dir:
        return str(Path(run_dir) / "eval" / stamp)
    return f"outputs/eval__{env_name}__{stamp}"


OmegaConf.register_new_resolver("lrrl_eval_dir", _eval_dir, replace=True)


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a ``lrrl.train`` run saved, checking that its agent is there."""
    run_dir = Path(run_dir)
    config_path = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r} is invalid: expected a lrrl.train run dir")
    if not config_path.is_file():
        raise ConfigError(
            f"run_dir={str(run_dir)!r} is invalid: it has no .hydra/config.yaml "
            "(expected a lrrl.train run dir)"
        )
    if not (run_dir / "model.zip").is_file():
        raise ConfigError(
            f"run_dir={str(run_dir)!r} is invalid: it has no model.zip "
            "(expected a finished lrrl.train run dir)"
        )
    if not zipfile.is_zipfile(run_dir / "model.zip"):
        raise ConfigError(f"{run_dir / 'model.zip'}: not a saved agent (truncated or corrupt?)")
    try:
        config = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as err:  # omegaconf and yaml raise many types for a bad file
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{config_path}: cannot read the run's config: {message}") from None
    if not isinstance(config, dict) or not {"env", "agent", "eval"} <= set(config):
        raise ConfigError(
            f"run_dir={str(run_dir)!r} is invalid: its config lacks env/agent/eval sections"
        )
    return config


def load_run_agent(run_dir: str | Path, name: str | None = None) -> Any:
    """The trained agent of a run as an :class:`~lrrl.agents.sb3.AgentController`."""
    from lrrl.agents.sb3 import AgentController, load_agent

    config = read_run(run_dir)
    algo = config["agent"]["algo"]
    model = load_agent(Path(run_dir) / "model.zip", algo=algo)
    return AgentController(name or algo, model)


def _cli_overrides(overrides: Sequence[str], prefix: str) -> list[str]:
    """The keys under ``prefix`` that the command line set (``eval.tuner=optuna`` etc.)."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.startswith(prefix):
            keys.append(key[len(prefix) :])
    return keys


def plan(config: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Resolve what to evaluate: env, seed, eval settings, baselines and agent run dirs.

    With ``run_dir`` the run's saved env, seed and ``eval`` block replace this config's; eval
    keys given on the command line (``overrides``) are applied on top.
    """
    run_dir = config.get("run_dir")
    agents = [str(p) for p in (config.get("agents") or [])]
    env_cfg = dict(config["env"])
    seed = config.get("seed", 0)
    ev = dict(config["eval"])
    if run_dir:
        saved = read_run(run_dir)
        env_cfg, seed = saved["env"], saved.get("seed", 0)
        ev = {**ev, **saved["eval"]}
        for key in _cli_overrides(overrides, "eval."):
            top = key.split(".", 1)[0]
            ev[top] = config["eval"][top]
        agents = [str(run_dir), *agents]
    for path in agents[1 if run_dir else 0 :]:
        trained_on = read_run(path)["env"].get("id")
        if trained_on != env_cfg.get("id"):
            raise ConfigError(
                f"agents entry {path!r} is invalid: its agent was trained on {trained_on}, "
                f"expected a run on {env_cfg.get('id')}"
            )
    schedulers = config.get("schedulers")
    if schedulers is not None:
        if isinstance(schedulers, str):
            schedulers = [schedulers]
        ev["baselines"] = list(schedulers)
    try:
        env_id, env_kwargs = split_env_config(env_cfg)
        make_env(env_id, **env_kwargs).close()
        settings = EvalSettings.from_config(ev)
        seed = int(seed)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    return {
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "env_name": env_cfg.get("name", env_id),
        "seed": seed,
        "settings": settings,
        "agents": agents,
        "run_dir": run_dir,
    }


def _agent_names(paths: Sequence[str]) -> dict[str, str]:
    """Row names for agent run dirs: the algorithm, made unique with the directory name."""
    algos = [read_run(p)["agent"]["algo"] for p in paths]
    names = {}
    for path, algo in zip(paths, algos, strict=True):
        name = algo if algos.count(algo) == 1 else f"{algo}@{Path(path).name}"
        names[name] = path
    return names


def metrics_document(
    comparison: Comparison,
    env_id: str,
    seed: int,
    subject: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``metrics.json`` of an evaluation (the keys ``lrrl.train`` writes, plus more)."""
    summaries = comparison.summaries
    ref = summaries[subject]
    return {
        "objective": ref["log_loss_ratio"],
        "objective_name": f"mean log(loss_T/loss_0) of {subject} on the {comparison.split} instances",
        "env_id": env_id,
        "seed": seed,
        "split": comparison.split,
        "subject": subject,
        "schedulers": comparison.schedulers(),
        "wins": {
            name: ref["log_loss_ratio"] < s["log_loss_ratio"]
            for name, s in summaries.items()
            if name != subject
        },
        "win_rate": {name: s["win_rate"] for name, s in summaries.items()},
        "probability_of_improvement": {
            name: s["probability_of_improvement"] for name, s in summaries.items()
        },
        "skipped": comparison.skipped,
        "reference_loss": comparison.references,
        **dict(extra or {}),
    }


def run_evaluation(
    config: Mapping[str, Any],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate as ``config`` says and write the outputs into ``out_dir``; returns the metrics."""
    p = plan(config, overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(p["seed"], int(config.get("torch_threads", 1)))
    console = Console(stderr=True)
    agents = {name: load_run_agent(path, name) for name, path in _agent_names(p["agents"]).items()}
    settings: EvalSettings = p["settings"]
    comparison = compare(
        p["env_id"],
        p["env_kwargs"],
        settings,
        p["seed"],
        agents=agents,
        log=console.log,
        show_progress=bool(config.get("progress_bar", True)),
    )
    if not comparison.episodes:
        raise ConfigError(
            "nothing to evaluate: every scheduler was skipped "
            f"({'; '.join(comparison.skipped.values())})"
        )
    subject = next(iter(comparison.episodes))
    Console().print(report.table(comparison.schedulers(), comparison.details, settings.split))

    probe = make_env(p["env_id"], **p["env_kwargs"])
    env_config = probe.unwrapped.config()
    steps_per_action = probe.unwrapped.steps_per_action
    probe.close()
    for name, eps in comparison.episodes.items():
        payload = schedule_payload(eps, p["env_id"], env_config, p["seed"], steps_per_action)
        write_json(out_dir / "schedules" / f"{name}.json", payload)
    report.write_csv(out_dir / "episodes.csv", comparison.episodes, comparison.references)
    first = {name: eps[0] for name, eps in comparison.episodes.items()}
    plot_schedules(
        out_dir / "schedules.png",
        first,
        f"{p['env_id']} · {first[subject].instance} · seed {first[subject].seed}",
    )
    report.plot_intervals(
        out_dir / "intervals.png",
        comparison.summaries,
        f"{p['env_id']} · {settings.split} instances · {len(comparison.episodes[subject])} "
        "episodes per scheduler",
    )
    metrics = metrics_document(
        comparison,
        p["env_id"],
        p["seed"],
        subject,
        {
            "source_run": str(p["run_dir"]) if p["run_dir"] else None,
            "agents": dict(_agent_names(p["agents"])),
            "eval": {k: v for k, v in vars(settings).items()},
            "run": {"argv": list(argv or []), "python": platform.python_version()},
        },
    )
    write_json(out_dir / "metrics.json", metrics)
    console.log(f"outputs in {out_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://lrrl.conf", config_name="evaluate")
def _hydra_main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    try:
        metrics = run_evaluation(
            config, hc.runtime.output_dir, list(hc.overrides.task), argv=sys.argv
        )
    except ValueError as err:  # ConfigError included: one line, exit status 2
        fail("lrrl.evaluate", err)
    return metrics["objective"]


def main() -> None:
    """Console entry point: check the run dir and config groups in one line, then run Hydra."""
    try:
        check_group_choices(sys.argv[1:])
        for arg in sys.argv[1:]:
            if arg.startswith("run_dir=") and arg.split("=", 1)[1] not in ("", "null"):
                read_run(arg.split("=", 1)[1])
    except ConfigError as err:
        fail("lrrl.evaluate", err)
    _hydra_main()


if __name__ == "__main__":
    main()
