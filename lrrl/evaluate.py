"""``python -m lrrl.evaluate``: compare schedulers fairly, with intervals and the optimality gap.

    python -m lrrl.evaluate run_dir=outputs/nmf__ppo__0__...      # re-evaluate a train run
    python -m lrrl.evaluate env=nmf schedulers=[constant,cosine,greedylr]
    python -m lrrl.evaluate env=nmf agents=[RUN_A,RUN_B] eval.tuner=optuna eval.tune_budget=20

Baselines are tuned on the tuning instances (``eval.tune_split``) and every scheduler is
then played on the test instances with the same episode seeds. With ``run_dir`` the run's
saved env and ``eval`` settings are used, so its end-of-training comparison is reproduced;
the outputs go to ``RUN_DIR/eval/<time>/`` and never overwrite the run's own. The files are
those of :mod:`lrrl.outputs` (every scheduler's schedule under ``schedules/``).
"""

from __future__ import annotations

import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lrrl import report
from lrrl.cli import ConfigError, check_group_choices, fail
from lrrl.comparison import compare
from lrrl.config import EnvSpec, EvalConfig, check_splits
from lrrl.envs.base import as_int
from lrrl.outputs import run_info, write_outputs
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
    return {str(k): v for k, v in config.items()}


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


@dataclass
class EvaluateConfig:
    """What ``lrrl.evaluate`` compares: the env, the eval settings and the agents' run dirs."""

    env: EnvSpec
    eval: EvalConfig
    agents: list[str]
    run_dir: str | None
    torch_threads: int = 1
    progress_bar: bool = True


def plan(config: Mapping[str, Any], overrides: Sequence[str] = ()) -> EvaluateConfig:
    """Resolve and check what to evaluate (one-line :class:`ConfigError` otherwise).

    With ``run_dir`` the run's saved env and ``eval`` block replace this config's; eval keys
    given on the command line (``overrides``) are applied on top.
    """
    run_dir = config.get("run_dir")
    agents = [str(p) for p in (config.get("agents") or [])]
    env_cfg = dict(config["env"])
    ev = dict(config["eval"])
    if run_dir:
        saved = read_run(run_dir)
        env_cfg = saved["env"]
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
        ev["baselines"] = [schedulers] if isinstance(schedulers, str) else list(schedulers)
    try:
        env = EnvSpec.from_dict(env_cfg)
        settings = EvalConfig.from_dict(ev)
        check_splits(env, settings)
        threads = as_int("torch_threads", config.get("torch_threads", 1), 1)
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None
    return EvaluateConfig(
        env, settings, agents, run_dir, threads, bool(config.get("progress_bar", True))
    )


def _agent_names(paths: Sequence[str]) -> dict[str, str]:
    """Row names for agent run dirs: the algorithm, made unique with the directory name."""
    algos = [read_run(p)["agent"]["algo"] for p in paths]
    names = {}
    for path, algo in zip(paths, algos, strict=True):
        name = algo if algos.count(algo) == 1 else f"{algo}@{Path(path).name}"
        names[name] = path
    return names


def run_evaluation(
    config: Mapping[str, Any],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate as ``config`` says and write the outputs into ``out_dir``; returns the metrics."""
    p = plan(config, overrides)
    seed_everything(p.eval.seed, p.torch_threads)
    console = Console(stderr=True)
    names = _agent_names(p.agents)
    agents = {name: load_run_agent(path, name) for name, path in names.items()}
    comparison = compare(
        p.env, p.eval, agents=agents, log=console.log, show_progress=p.progress_bar
    )
    if not comparison.episodes:
        raise ConfigError(
            "nothing to evaluate: every scheduler was skipped "
            f"({'; '.join(comparison.skipped.values())})"
        )
    report.output_console().print(
        report.table(comparison.summaries, comparison.details, p.eval.split, comparison.subject)
    )
    metrics = write_outputs(
        Path(out_dir),
        comparison,
        p.env,
        p.eval.seed,
        p.env.steps_per_action(),
        extra={
            "source_run": str(p.run_dir) if p.run_dir else None,
            "agents": names,
            "eval": p.eval.to_dict(),
            "run": run_info(argv),
        },
    )
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
