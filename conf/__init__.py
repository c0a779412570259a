"""Hydra configuration tree of lrrl (a package so that configs install with it).

Importing it registers, in Hydra's ConfigStore, the defaults of every typed config under
``schema/``: ``schema/env/nmf`` (:class:`lrrl.envs.nmf.NMFConfig`), ``schema/env/dnn``
(:class:`lrrl.envs.dnn.DNNConfig`), ``schema/eval`` (:class:`lrrl.config.EvalConfig`),
``schema/agent`` (:class:`lrrl.config.AgentConfig`), for ``lrrl.distill`` ``schema/fit`` and
``schema/check`` (:class:`lrrl.config.FitConfig`, :class:`lrrl.config.CheckConfig`), and
``schema/hydra/sweeper/lrrl_optuna`` (:class:`lrrl.sweeper.SweeperConfig`).
The YAML files extend them (``defaults: [/schema/...]``) and hold only what differs, so each
default lives once, in its dataclass; ``python -m lrrl.train --cfg job`` prints them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def defaults(cls: type) -> dict[str, Any]:
    """A config dataclass's field defaults as plain values (tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def register() -> None:
    """Store the typed configs' defaults under ``schema/`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    from lrrl.config import AgentConfig, CheckConfig, EvalConfig, FitConfig
    from lrrl.envs.dnn import DNNConfig
    from lrrl.envs.nmf import NMFConfig
    from lrrl.sweeper import SweeperConfig

    cs = ConfigStore.instance()
    cs.store(group="schema/env", name="nmf", node=defaults(NMFConfig))
    cs.store(group="schema/env", name="dnn", node=defaults(DNNConfig))
    cs.store(group="schema", name="eval", node=defaults(EvalConfig))
    cs.store(group="schema", name="agent", node=defaults(AgentConfig))
    cs.store(group="schema", name="fit", node=defaults(FitConfig))
    cs.store(group="schema", name="check", node=defaults(CheckConfig))
    cs.store(group="schema/hydra/sweeper", name="lrrl_optuna", node=defaults(SweeperConfig))


register()
