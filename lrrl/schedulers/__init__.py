"""Drop-in PyTorch learning-rate schedulers."""

from __future__ import annotations

from lrrl.schedulers.greedylr import (
    GREEDYLR_DEFAULTS,
    GreedyLR,
    greedylr_reference,
    replay_greedylr,
)
from lrrl.schedulers.replay import ScheduleReplay

__all__ = [
    "GREEDYLR_DEFAULTS",
    "GreedyLR",
    "ScheduleReplay",
    "greedylr_reference",
    "replay_greedylr",
]
