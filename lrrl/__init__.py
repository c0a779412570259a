"""lrrl: learning learning-rate schedules with reinforcement learning.

Importing the package registers the environments with Gymnasium.
"""

from __future__ import annotations

from lrrl.envs.registration import register_envs

__version__ = "0.1.0"

register_envs()
