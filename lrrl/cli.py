"""Command-line plumbing shared by the entry points: one-line errors, config-group checks."""

from __future__ import annotations

import importlib.util
import sys
from importlib import resources
from typing import NoReturn

#: Config groups selectable on the command line as ``group=choice``.
GROUPS = ("env", "agent", "logger", "debug")
#: Hydra launchers (``hydra/launcher=...``, ours in ``conf/hydra/launcher/``): the plugin
#: module each needs and the extra that installs it.
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    "lrrl_joblib": ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "lrrl_submitit_local": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "lrrl_slurm": ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "lrrl_ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
}


#: lrrl's Hydra sweepers (``hydra/sweeper=...``, in ``conf/hydra/sweeper/``): the plugin class,
#: the module it needs and the extra that installs that.
SWEEPER_PLUGINS = {
    "lrrl_optuna": (
        "hydra_plugins.lrrl_sweeper.lrrl_optuna_sweeper.LrrlOptunaSweeper",
        "optuna",
        "tune",
    ),
}


class ConfigError(ValueError):
    """A bad option found before any work started; reported in one line, exit status 2."""


def fail(program: str, err: BaseException) -> NoReturn:
    """Print ``program: error: message`` (first line only) to stderr and exit with status 2."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"{program}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def group_choices(group: str) -> list[str]:
    """The configs available in ``conf/<group>/``."""
    folder = resources.files("lrrl.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_group_choices(args: list[str]) -> None:
    """Reject ``env=foo`` (and sweeps ``env=nmf,foo``) naming a config that does not exist."""
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        if key not in GROUPS:
            continue
        choices = group_choices(key)
        for choice in value.split(","):
            choice = choice.strip()
            if choice in ("null", "") and key == "debug":
                continue
            if choice not in choices:
                raise ConfigError(f"{key}={choice!r} is invalid: expected one of {choices}")


def check_launcher(args: list[str]) -> None:
    """Reject ``hydra/launcher=X`` whose plugin is not installed, naming the extra to install."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key != "hydra/launcher" or value not in LAUNCHER_PLUGINS:
            continue
        module, extra = LAUNCHER_PLUGINS[value]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # hydra_plugins itself missing
            found = False
        if not found:
            raise ConfigError(
                f"hydra/launcher={value!r} needs the {module.split('.')[-1]} plugin, "
                f"which is not installed: pip install 'lrrl[{extra}]'"
            )


def requested_sweeper(args: list[str]) -> str | None:
    """The lrrl sweeper a command line selects (``hydra/sweeper=lrrl_optuna``), if any."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra/sweeper" and value in SWEEPER_PLUGINS:
            return value
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def check_sweeper_installed(name: str) -> None:
    """Reject an lrrl sweeper whose library or plugin module is missing, saying what to do."""
    target, module, extra = SWEEPER_PLUGINS[name]
    if not _importable(module):
        raise ConfigError(
            f"hydra/sweeper={name!r} needs {module}, which is not installed: "
            f"pip install 'lrrl[{extra}]'"
        )
    plugin = target.rpartition(".")[0]
    if not _importable(plugin):
        raise ConfigError(
            f"hydra/sweeper={name!r} needs the module {plugin}, which this install of lrrl "
            "predates: reinstall lrrl (pip install -e . in its checkout)"
        )


def register_plugins() -> None:
    """Make lrrl's Hydra plugins known to Hydra.

    Hydra finds plugins by listing the ``hydra_plugins`` folders on ``sys.path``. A regular
    install puts ``hydra_plugins/lrrl_sweeper/`` there; an editable install serves it through
    an import hook that such a listing cannot see, so the classes are registered by hand.
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    for target, _, _ in SWEEPER_PLUGINS.values():
        module, _, name = target.rpartition(".")
        if target in plugins.class_name_to_class or not _importable(module):
            continue  # found by Hydra, or an install of lrrl older than the plugin
        plugins.register(getattr(importlib.import_module(module), name))
