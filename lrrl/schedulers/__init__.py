"""Drop-in PyTorch learning-rate schedulers."""

from __future__ import annotations

from lrrl.schedulers.greedylr import (
    GREEDYLR_DEFAULTS,
    DistilledGreedyLR,
    GreedyLR,
    greedylr_reference,
    load_greedylr,
    replay_greedylr,
)
from lrrl.schedulers.policy import (
    OBSERVATION_BUILDERS,
    PolicyScheduler,
    register_observation_builder,
)
from lrrl.schedulers.replay import ScheduleReplay

__all__ = [
    "GREEDYLR_DEFAULTS",
    "OBSERVATION_BUILDERS",
    "DistilledGreedyLR",
    "GreedyLR",
    "PolicyScheduler",
    "ScheduleReplay",
    "greedylr_reference",
    "load_greedylr",
    "register_observation_builder",
    "replay_greedylr",
]
