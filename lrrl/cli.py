"""Command-line plumbing shared by the entry points: one-line errors, config-group checks."""

from __future__ import annotations

import sys
from importlib import resources
from typing import NoReturn

#: Config groups selectable on the command line as ``group=choice``.
GROUPS = ("env", "agent", "logger", "debug", "experiment")


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
            if choice in ("null", "") and key in ("debug", "experiment"):
                continue
            if choice not in choices:
                raise ConfigError(f"{key}={choice!r} is invalid: expected one of {choices}")
