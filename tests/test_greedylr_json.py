"""greedylr.json: the loader lrrl.distill's output is read with, and moving it to another lr scale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lrrl.schedulers import DistilledGreedyLR, greedylr_reference, load_greedylr


def test_reads_what_distill_wrote(smoke_run: Path) -> None:
    raw = json.loads((smoke_run / "greedylr.json").read_text())
    spec = load_greedylr(smoke_run / "greedylr.json")
    assert spec.params == raw["params"]
    assert spec.initial_lr == raw["initial_lr"]
    assert spec.steps_per_action == raw["steps_per_action"]


def test_rescaled_scales_the_whole_path_clamps_included() -> None:
    # patience 0 and a rising-then-falling metric drive the lr into max_lr, then min_lr.
    params = {"factor": 0.5, "patience": 0, "min_lr": 0.01, "max_lr": 0.4, "reset_start": 1000}
    spec = DistilledGreedyLR(params, initial_lr=0.1, steps_per_action=3)
    metrics = [*np.linspace(1.0, 0.1, 8), *np.linspace(0.1, 2.0, 12)]
    original = np.array(greedylr_reference(metrics, spec.initial_lr, **spec.params))
    assert original.max() == 0.4 and original.min() == 0.01  # both clamps are hit

    moved = spec.rescaled(1e-4)
    assert moved.initial_lr == 1e-4 and moved.steps_per_action == 3
    path = np.array(greedylr_reference(metrics, moved.initial_lr, **moved.params))
    np.testing.assert_allclose(path, original * 1e-3, rtol=1e-12)
    assert spec.params["max_lr"] == 0.4  # the original is left as it was

    per_group = DistilledGreedyLR({"min_lr": [0.01, 0.02]}, 0.1, 1).rescaled(0.2)
    assert per_group.params["min_lr"] == pytest.approx([0.02, 0.04])
    with pytest.raises(ValueError, match=r"lr=0 is invalid"):
        spec.rescaled(0)


GOOD = {"schema": "lrrl.greedylr/v1", "params": {}, "initial_lr": 0.1, "steps_per_action": 2}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"cannot read a greedylr.json"),
        (json.dumps({**GOOD, "schema": "lrrl.schedule/v1"}), r"schema='lrrl.schedule/v1'"),
        (json.dumps([1, 2]), r"schema='list' is invalid"),
        (json.dumps({**GOOD, "params": {"gamma": 0.5}}), r"params=\{'gamma': 0.5\} is invalid"),
        (json.dumps({**GOOD, "initial_lr": -1}), r"initial_lr=-1 is invalid"),
        (json.dumps({**GOOD, "initial_lr": True}), r"initial_lr=True is invalid"),
        (json.dumps({**GOOD, "steps_per_action": 0}), r"steps_per_action=0 is invalid"),
    ],
)
def test_bad_files_give_one_line_naming_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "greedylr.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_greedylr(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"cannot read"):
        load_greedylr(tmp_path / "missing.json")
