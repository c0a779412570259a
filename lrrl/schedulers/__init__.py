"""Drop-in PyTorch learning-rate schedulers."""

from __future__ import annotations

from lrrl.schedulers.greedylr import (
    GREEDYLR_DEFAULTS,
    GreedyLR,
    greedylr_reference,
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
    "GreedyLR",
    "PolicyScheduler",
    "ScheduleReplay",
    "greedylr_reference",
    "register_observation_builder",
    "replay_greedylr",
]
