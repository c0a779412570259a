"""The ``schedule.json`` format: its JSON Schema, a checked loader and log-space stretching.

A schedule file (schema ``lrrl.schedule/v1``, written by :func:`lrrl.outputs.schedule_payload`)
records what a scheduler did in an env: decision ``t`` applied ``lr[t]`` for
``steps_per_action`` optimizer steps, ``loss[0]`` was measured before the first decision and
``loss[t+1]`` after decision ``t``. The JSON Schema ships with the package
(``lrrl/schedule.schema.json``, :func:`schema`); :func:`load_schedule` validates a file
against it, then checks what a schema cannot say (matching lengths), and raises one
``ValueError`` naming the file and the problem for anything malformed, truncated or foreign.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

SCHEMA_NAME = "lrrl.schedule/v1"


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of ``schedule.json`` files (draft 2020-12), as shipped in the package."""
    text = resources.files("lrrl").joinpath("schedule.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class ScheduleEpisode:
    """One recorded episode: per-decision learning rates and bounds, losses around them."""

    lr: tuple[float, ...]
    loss: tuple[float, ...]  # len(lr) + 1 values; NaN where the file has null
    lr_bound: tuple[float, ...]  # inf where no bound applies
    instance: str | None = None
    seed: int | None = None
    diverged: bool = False

    def step_lrs(self, steps_per_action: int) -> np.ndarray:
        """The learning rate of every optimizer step: each decision's lr held for its steps."""
        return np.repeat(np.asarray(self.lr, dtype=np.float64), steps_per_action)


@dataclass(frozen=True)
class Schedule:
    """A loaded ``schedule.json``: the headline episode plus every recorded one."""

    path: str
    lr: tuple[float, ...]
    loss: tuple[float, ...]
    lr_bound: tuple[float, ...]
    steps_per_action: int
    seed: int
    env: dict[str, Any]
    env_id: str | None
    scheduler: str | None
    instance: str | None
    episodes: tuple[ScheduleEpisode, ...]

    @property
    def episode(self) -> ScheduleEpisode:
        """The headline episode (the top-level ``lr``/``loss``/``lr_bound``)."""
        return ScheduleEpisode(self.lr, self.loss, self.lr_bound, self.instance, self.seed)

    @property
    def total_steps(self) -> int:
        """Optimizer steps the headline episode spans: ``len(lr) * steps_per_action``."""
        return len(self.lr) * self.steps_per_action


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name} (write null for NaN)")


def _float(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, str):
        return math.inf if value == "inf" else -math.inf
    return float(value)


def _episode(doc: dict[str, Any], where: str) -> ScheduleEpisode:
    try:
        lr = tuple(float(x) for x in doc["lr"])
        loss = tuple(_float(x) for x in doc["loss"])
        bound = doc.get("lr_bound")
        lr_bound = tuple(math.inf if x is None else _float(x) for x in bound) if bound else ()
    except OverflowError:
        raise ValueError(f"{where}: a number is too large for a float") from None
    if len(loss) != len(lr) + 1:
        raise ValueError(
            f"{where}: loss has {len(loss)} values for {len(lr)} learning rates "
            f"(expected {len(lr) + 1}: one before the first decision and one after each)"
        )
    if lr_bound and len(lr_bound) != len(lr):
        raise ValueError(
            f"{where}: lr_bound has {len(lr_bound)} values for {len(lr)} learning rates"
        )
    if not all(math.isfinite(x) for x in lr):
        raise ValueError(f"{where}: lr holds a non-finite learning rate")
    return ScheduleEpisode(
        lr,
        loss,
        lr_bound or (math.inf,) * len(lr),
        doc.get("instance"),
        doc.get("seed"),
        bool(doc.get("diverged", False)),
    )


def parse_schedule(doc: Any, path: str = "<schedule>") -> Schedule:
    """Validate a decoded ``schedule.json`` document and build a :class:`Schedule`."""
    if not isinstance(doc, dict):
        raise ValueError(
            f"{path}: not an lrrl schedule file (top level is {type(doc).__name__}, "
            "expected a JSON object)"
        )
    if doc.get("schema") != SCHEMA_NAME:
        raise ValueError(
            f"{path}: not an lrrl schedule file or an unsupported version "
            f"(schema={doc.get('schema')!r}, expected {SCHEMA_NAME!r})"
        )
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        at = "/".join(str(p) for p in error.absolute_path) or "top level"
        raise ValueError(f"{path}: invalid {SCHEMA_NAME} file at {at}: {error.message}")
    head = _episode(doc, path)
    episodes = tuple(
        _episode(e, f"{path}: episodes/{i}") for i, e in enumerate(doc.get("episodes") or [])
    )
    return Schedule(
        path=path,
        lr=head.lr,
        loss=head.loss,
        lr_bound=head.lr_bound,
        steps_per_action=int(doc["steps_per_action"]),
        seed=int(doc["seed"]),
        env=dict(doc["env"]),
        env_id=doc.get("env_id"),
        scheduler=doc.get("scheduler"),
        instance=doc.get("instance"),
        episodes=episodes,
    )


def load_schedule(path: str | Path) -> Schedule:
    """Read and check a ``schedule.json``; any problem is a ``ValueError`` naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot read schedule file ({err.strerror or err})") from None
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a JSON file (not UTF-8 text: {err.reason})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt?): {err}") from None
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    return parse_schedule(doc, str(path))


def stretch_log_lr(step_lrs: Any, total_steps: int) -> np.ndarray:
    """Resample per-step learning rates to ``total_steps`` steps, linearly in log space.

    Step ``i`` of ``n`` sits at progress ``(i + 0.5) / n``; the new steps take the
    log-linear interpolation at their own progress (ends held), so ``total_steps == n``
    returns the input unchanged and a longer run keeps the schedule's shape.
    """
    lrs = np.asarray(step_lrs, dtype=np.float64)
    if lrs.ndim != 1 or lrs.size == 0 or not np.all(np.isfinite(lrs) & (lrs > 0)):
        raise ValueError("step_lrs must be a non-empty 1-d sequence of positive finite lrs")
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)):
        raise ValueError(f"total_steps={total_steps!r} is invalid: expected an integer >= 1")
    if total_steps < 1:
        raise ValueError(f"total_steps={total_steps!r} is invalid: expected an integer >= 1")
    n = lrs.size
    if total_steps == n:
        return lrs.copy()
    source = (np.arange(n) + 0.5) / n
    target = (np.arange(total_steps) + 0.5) / total_steps
    return np.exp(np.interp(target, source, np.log(lrs)))
