"""``python -m lrrl.train``: learn a learning-rate schedule, compare it, export it.

    python -m lrrl.train env=nmf agent=ppo          # one run into outputs/
    python -m lrrl.train -m env=nmf seed=0,1,2      # a sweep into multirun/
    python -m lrrl.train env=nmf debug=smoke        # every stage in seconds

The run directory receives ``.hydra/`` (the composed config and overrides: enough to re-run),
``model.zip``, ``schedule.json`` (the learned schedule on the test instances),
``schedules/<baseline>.json``, ``metrics.json`` and ``schedules.png``. ``main`` returns the
mean test ``log(loss_T / loss_0)`` of the learned schedule, the objective a sweeper minimises.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lrrl.cli import ConfigError, check_group_choices, check_launcher, fail
from lrrl.pipeline import run_experiment


@hydra.main(version_base="1.3", config_path="pkg://lrrl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    try:
        result = run_experiment(config, run_dir, argv=sys.argv)
    except ConfigError as err:
        fail("lrrl.train", err)
    return result["objective"]


def main() -> None:
    """Console entry point: reject unknown config groups in one line, then run Hydra."""
    try:
        check_group_choices(sys.argv[1:])
        check_launcher(sys.argv[1:])
    except ConfigError as err:
        fail("lrrl.train", err)
    _hydra_main()


if __name__ == "__main__":
    main()
