"""``python -m lrrl.train``: learn a learning-rate schedule, compare it, export it.

    python -m lrrl.train env=nmf agent=ppo          # one run into outputs/
    python -m lrrl.train -m env=nmf seed=0,1,2      # a sweep into multirun/
    python -m lrrl.train env=nmf debug=smoke        # every stage in seconds
    python -m lrrl.train resume=outputs/RUN         # continue a killed run from its checkpoint
    python -m lrrl.train -m hydra/sweeper=lrrl_optuna hydra.sweep.dir=multirun/search
                                                    # hyperparameter search (lrrl.sweeper)

The run directory receives ``.hydra/`` (the composed config and overrides: enough to re-run),
``model.zip``, ``schedule.json`` (the learned schedule on the test instances),
``schedules/<baseline>.json``, ``metrics.json`` and ``schedules.png``, and while training
``checkpoint/`` (see :mod:`lrrl.checkpoint`). ``main`` returns the mean
``log(loss_T / loss_0)`` of the learned schedule on ``eval.split`` (the test instances; the
tuning ones in a search), the objective a sweeper minimises.

A single run's config is composed and checked before Hydra creates the run dir, so a bad
option is one line on stderr (exit status 2) and leaves nothing on disk.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrrl import checkpoint
from lrrl.cli import (
    ConfigError,
    check_group_choices,
    check_launcher,
    check_sweeper_installed,
    fail,
    register_plugins,
    requested_sweeper,
)
from lrrl.pipeline import run_experiment, validate

# The process id in default run dir names: two runs started in the same microsecond differ.
OmegaConf.register_new_resolver("lrrl_pid", os.getpid, replace=True)

#: Overrides ``resume=DIR`` accepts besides itself: they change no result.
RESUME_OVERRIDES = ("progress_bar", "torch_threads")


@hydra.main(version_base="1.3", config_path="pkg://lrrl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    try:
        result = run_experiment(config, run_dir, argv=sys.argv)
    except ConfigError as err:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # one job of a sweep: the launcher records it failed, the others go on
        fail("lrrl.train", err)
    return result["objective"]


def _error(err: BaseException) -> ConfigError:
    """Hydra's composition errors in one line: its message and the reason under it."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        message = f"{message} ({str(cause).strip().splitlines()[0]})"
    return ConfigError(message)


def is_hydra_override(arg: str) -> bool:
    """An override of Hydra's own config (``hydra.run.dir=``, ``+hydra.x=``, ``hydra/launcher=``)."""
    return arg.lstrip("+~").startswith("hydra")


def check_config(args: list[str]) -> dict[str, Any]:
    """Compose the config of a single run from its command-line overrides and validate it."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = [a for a in args if not a.startswith("-") and not is_hydra_override(a)]
    try:
        with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
        config = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise _error(err) from None
    validate(config)  # type: ignore[arg-type]
    return config  # type: ignore[return-value]


def check_sweeper(args: list[str]) -> None:
    """Check the search of ``hydra/sweeper=lrrl_optuna`` and the config its trials run with.

    The search space (``hydra.sweeper.params`` and the command line's sweeps) is parsed, and
    the config of a trial (the fixed overrides, each searched key at its first choice or low
    end, ``hydra.sweeper.trial_overrides``) is checked, so a bad search fails before any trial.
    """
    name = requested_sweeper(args)
    if name is None:
        return
    check_sweeper_installed(name)
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lrrl.sweeper import SweeperConfig, parse_search_space

    overrides = [a for a in args if not a.startswith("-")]
    hydra_overrides = [a for a in overrides if is_hydra_override(a)]
    try:
        with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
            cfg = compose(config_name="train", overrides=hydra_overrides, return_hydra_config=True)
        sweeper = SweeperConfig.from_dict(cfg.hydra.sweeper)
        task = [a for a in overrides if a not in hydra_overrides]
        dimensions, fixed = parse_search_space(sweeper.params, task)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise _error(err) from None
    sampled = [d.override(d.first()) for d in dimensions.values()]
    try:
        check_config([*fixed, *sampled, *sweeper.trial_overrides])
    except ConfigError as err:
        raise ConfigError(
            f"{err} (in a trial's config, with hydra.sweeper.trial_overrides="
            f"[{','.join(sweeper.trial_overrides)}])"
        ) from None


#: Sweeps with more jobs than this are checked by each job instead of up front.
MAX_CHECKED_JOBS = 64


def sweep_jobs(args: list[str]) -> list[list[str]] | None:
    """The override lists of every job a ``-m`` command line expands to (``None``: not enumerable).

    Comma lists and ``range()`` are expanded as Hydra's basic sweeper does; sweeps a sweeper
    samples (``interval()``) or more than ``MAX_CHECKED_JOBS`` jobs are left to the jobs.
    """
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    overrides = [a for a in args if not a.startswith("-") and not is_hydra_override(a)]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        choices = []
        for override in parsed:
            key = override.get_key_element()
            if override.is_sweep_override():
                values = list(override.sweep_string_iterator())
            else:
                values = [override.get_value_element_as_str()]
            choices.append([f"{key}={value}" for value in values])
    except HydraException as err:
        if "enumerate" in str(err):
            return None
        raise _error(err) from None
    jobs = list(itertools.islice(itertools.product(*choices), MAX_CHECKED_JOBS + 1))
    return None if len(jobs) > MAX_CHECKED_JOBS else [list(job) for job in jobs]


def resume(run_dir: str, extra: list[str]) -> None:
    """Continue the run stored in ``run_dir`` with its saved config; finished runs are left be."""
    path = Path(run_dir)
    config_path = path / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(
            f"resume={run_dir!r} is invalid: expected a lrrl.train run dir (no .hydra/config.yaml)"
        )
    allowed = [a for a in extra if a.split("=", 1)[0] in RESUME_OVERRIDES and "=" in a]
    others = [a for a in extra if a not in allowed]
    if others:
        raise ConfigError(
            f"resume={run_dir} continues the saved config and takes no other overrides "
            f"(got {' '.join(others)}; accepted: {', '.join(RESUME_OVERRIDES)})"
        )
    if checkpoint.is_finished(path):
        print(f"lrrl.train: {run_dir} is already finished; nothing to do", file=sys.stderr)
        return
    try:
        saved = OmegaConf.merge(OmegaConf.load(config_path), OmegaConf.from_dotlist(allowed))
        config: dict[str, Any] = OmegaConf.to_container(saved, resolve=True)  # type: ignore[assignment]
    except Exception as err:  # omegaconf and yaml raise many types for a bad file
        raise ConfigError(f"{config_path}: cannot read the saved config: {_error(err)}") from None
    if not checkpoint.has_checkpoint(path):
        # Killed before its first checkpoint (or run with agent.checkpoint_every=0): the
        # only way on is from the start, with the same config and seed.
        print(f"lrrl.train: {run_dir} has no checkpoint; training from the start", file=sys.stderr)
    run_experiment(config, path, argv=sys.argv, resume=checkpoint.has_checkpoint(path))


def main() -> None:
    """Console entry point: check the command line in one line, then run (or resume) it."""
    args = sys.argv[1:]
    try:
        check_group_choices(args)
        check_launcher(args)
        check_sweeper(args)
        resumes = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
        if resumes:
            resume(resumes[-1], [a for a in args if not a.startswith("resume=")])
            return
        flags = [a for a in args if a.startswith("-")]
        if flags and set(flags) <= {"-m", "--multirun"}:
            for job in sweep_jobs(args) or []:
                check_config(job)
        elif not flags:
            check_config(args)
            # Hydra would rewrite .hydra/ of a run already there before run_experiment sees it.
            for arg in args:
                if arg.startswith("hydra.run.dir="):
                    checkpoint.check_fresh(Path(arg.split("=", 1)[1]))
    except ConfigError as err:
        fail("lrrl.train", err)
    register_plugins()
    _hydra_main()


if __name__ == "__main__":
    main()
