"""schedule.json: the shipped schema, the checked loader, ScheduleReplay and stretching."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lrrl.config import EnvSpec
from lrrl.outputs import schedule_payload, write_json
from lrrl.rollout import Episode
from lrrl.schedule import SCHEMA_NAME, load_schedule, parse_schedule, schema, stretch_log_lr
from lrrl.schedulers import ScheduleReplay

LRS = [0.1, 0.05, 0.2, 0.01]


def _payload() -> dict[str, Any]:
    first = Episode(
        "ppo",
        "inst-a",
        7,
        lr=list(LRS),
        lr_bound=[0.5, 0.4, math.inf, 0.3],
        loss=[10.0, 8.0, math.nan, 5.0, 4.0],
    )
    second = Episode("ppo", "inst-b", 8, lr=[0.3, 0.2], lr_bound=[1.0, 1.0], loss=[3.0, 2.0, 1.0])
    env = EnvSpec("lrrl/NMF-v0", "nmf", {"rank": 3})
    return schedule_payload([first, second], env, seed=0, steps_per_action=3)


def _doc() -> dict[str, Any]:
    """The payload as it reads back from disk (NaN written as null)."""
    return json.loads(json.dumps(_payload()).replace("NaN", "null"))


@pytest.fixture
def schedule_file(tmp_path: Path) -> Path:
    return write_json(tmp_path / "schedule.json", _payload())


def _optimizer(n_groups: int = 1) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(n_groups)]
    return torch.optim.SGD(groups, lr=1.0)


def test_schema_ships_with_the_package_and_matches_the_writer() -> None:
    assert schema()["properties"]["schema"]["const"] == SCHEMA_NAME
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.validate(_doc(), schema())


def test_loads_what_the_writer_wrote(schedule_file: Path) -> None:
    s = load_schedule(schedule_file)
    assert s.lr == tuple(LRS) and s.steps_per_action == 3 and s.seed == 0
    assert s.loss[:2] == (10.0, 8.0) and math.isnan(s.loss[2])
    assert s.lr_bound[2] == math.inf
    assert [e.instance for e in s.episodes] == ["inst-a", "inst-b"]
    assert s.env == {"rank": 3} and s.env_id == "lrrl/NMF-v0" and s.total_steps == 12


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("schema"), "schema=None"),
        (lambda d: d.update(schema="lrrl.schedule/v0"), "unsupported version"),
        (lambda d: d["lr"].__setitem__(1, None), "lr/1"),
        (lambda d: d["lr"].__setitem__(0, -0.1), "lr/0"),
        (lambda d: d["loss"].pop(), "loss has 4 values for 4 learning rates"),
        (lambda d: d["lr_bound"].pop(), "lr_bound has 3 values"),
        (lambda d: d.update(steps_per_action=0), "steps_per_action"),
        (lambda d: d.pop("lr"), "'lr' is a required property"),
        (lambda d: d["episodes"][1]["loss"].append(0.5), "episodes/1"),
    ],
)
def test_malformed_files_name_the_problem_and_the_file(
    tmp_path: Path, mutate: Any, message: str
) -> None:
    doc = _doc()
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as err:
        load_schedule(path)
    assert str(path) in str(err.value)


def test_non_json_truncated_nan_and_missing_files(schedule_file: Path, tmp_path: Path) -> None:
    text = schedule_file.read_text()
    cases = {
        "truncated.json": text[: len(text) // 2],
        "nan.json": text.replace("0.05", "NaN", 1),
        "binary.json": None,
        "list.json": "[1, 2]",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(b"\xff\xfe\x00garbage")
        else:
            path.write_text(content)
        with pytest.raises(ValueError, match=name):
            load_schedule(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_schedule(tmp_path / "missing.json")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_mutation_loads_consistently_or_raises_value_error(data: st.DataObject) -> None:
    base = _doc()
    doc = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        where = data.draw(st.sampled_from(paths))
        parent = doc
        for key in where[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = data.draw(json_values)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=4))] = data.draw(json_values)
        else:
            parent.insert(where[-1], data.draw(json_values))
    try:
        loaded = parse_schedule(doc, "mutated.json")
    except ValueError as err:
        assert "mutated.json" in str(err)
        return
    # Whatever loads is what the document says, with lengths that fit together.
    assert loaded.lr == tuple(float(x) for x in doc["lr"])
    assert len(loaded.loss) == len(loaded.lr) + 1 == len(loaded.lr_bound) + 1
    assert all(x > 0 and math.isfinite(x) for x in loaded.lr)
    assert loaded.steps_per_action >= 1


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 2000), junk=st.binary(max_size=8))
def test_any_truncation_or_corruption_raises_value_error_only(cut: int, junk: bytes) -> None:
    text = json.dumps(_doc())
    raw = text.encode()[: cut % (len(text) + 1)] + junk
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.json"
        path.write_bytes(raw)
        try:
            load_schedule(path)
        except ValueError as err:
            assert str(path) in str(err)


def test_replay_holds_each_decision_for_steps_per_action(schedule_file: Path) -> None:
    opt = _optimizer()
    sched = ScheduleReplay(opt, schedule_file)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(13):
        opt.step()
        sched.step()
        seen.append(sched.get_last_lr()[0])
    assert seen[:12] == [lr for lr in LRS for _ in range(3)]
    assert seen[12:] == [LRS[-1], LRS[-1]]  # held past the end


def test_replay_other_episode_and_per_group_scale(schedule_file: Path) -> None:
    opt = _optimizer(2)
    sched = ScheduleReplay(opt, schedule_file, episode=1, scale=[1.0, 0.5])
    assert sched.get_last_lr() == [0.3, 0.15]
    for _ in range(3):
        opt.step()
        sched.step()
    assert sched.get_last_lr() == [0.2, 0.1]
    with pytest.raises(ValueError, match="episode=5"):
        ScheduleReplay(_optimizer(), schedule_file, episode=5)
    with pytest.raises(ValueError, match="scale"):
        ScheduleReplay(_optimizer(2), schedule_file, scale=[1.0])


def test_replay_state_dict_round_trip(schedule_file: Path) -> None:
    opt = _optimizer()
    sched = ScheduleReplay(opt, schedule_file)
    for _ in range(5):
        opt.step()
        sched.step()
    opt2 = _optimizer()
    sched2 = ScheduleReplay(opt2, schedule_file)
    sched2.load_state_dict(sched.state_dict())
    sched.step()
    sched2.step()
    assert sched.get_last_lr() == sched2.get_last_lr() == [LRS[2]]


def test_stretch_keeps_length_equal_and_shape_longer(schedule_file: Path) -> None:
    steps = np.repeat(LRS, 3)
    assert stretch_log_lr(steps, 12).tolist() == steps.tolist()
    long = stretch_log_lr(steps, 120)
    assert long.shape == (120,)
    assert long[[0, -1]] == pytest.approx([LRS[0], LRS[-1]], rel=1e-12)
    assert long.min() >= min(LRS) * (1 - 1e-12) and long.max() <= max(LRS) * (1 + 1e-12)
    # Log-linear between neighbouring steps: the midpoint is the geometric mean.
    two = stretch_log_lr([0.1, 0.001], 3)
    assert two[1] == pytest.approx(0.01)
    opt = _optimizer()
    sched = ScheduleReplay(opt, schedule_file, total_steps=120)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(119):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs == pytest.approx(long.tolist())
    with pytest.raises(ValueError, match="total_steps"):
        stretch_log_lr(steps, 0)


schedule_like = st.fixed_dictionaries(
    {"schema": st.just(SCHEMA_NAME)},
    optional={
        key: json_values | st.lists(json_values, max_size=4)
        for key in ("lr", "loss", "lr_bound", "steps_per_action", "seed", "env", "episodes")
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=json_values | schedule_like)
def test_any_json_document_loads_or_raises_value_error(doc: Any) -> None:
    """Arbitrary JSON, or objects with the right schema name and arbitrary fields."""
    try:
        loaded = parse_schedule(doc, "any.json")
    except ValueError as err:
        assert "any.json" in str(err) and "\n" not in str(err)
        return
    assert len(loaded.loss) == len(loaded.lr) + 1
