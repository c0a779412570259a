"""The ``hydra/sweeper=lrrl_optuna`` plugin: a thin Hydra ``Sweeper`` over
:class:`lrrl.sweeper.OptunaSearch`, which holds the search (documented in :mod:`lrrl.sweeper`).

lrrl (and optuna) are imported when the sweeper is instantiated, not when Hydra scans its
plugins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class LrrlOptunaSweeper(Sweeper):
    """Hyperparameter search with optuna's TPE sampler, trials launched in batches."""

    def __init__(self, **options: Any) -> None:
        from lrrl.sweeper import OptunaSearch

        self.search = OptunaSearch(**options)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.launcher = self.search.launcher

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        return self.search.sweep(arguments)
