"""README.md's "Use it in your trainer" snippets, extracted and run, so they cannot drift.

Each snippet sits between ``<!-- snippet: NAME -->`` and ``<!-- /snippet -->``. A test
takes its code, swaps the placeholders for a real smoke run and a tiny budget (every swap
must find its text, so an edited snippet fails here until the test follows), runs it with a
tiny model and data in scope, and checks the scheduler was wired and stepped as the text
says.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import hf_trainer
import lightning_example
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from stdlib_text import train_eval_blocks
from transformers.optimization import GreedyLR as HFGreedyLR

from lrrl.pipeline import validate
from lrrl.schedulers import GreedyLR, PolicyScheduler, ScheduleReplay, load_greedylr
from lrrl.tracking import TensorBoardTracker, make_tracker

README = Path(__file__).parents[1] / "README.md"
STEPS = 8


def snippet(name: str) -> str:
    """The code of README snippet ``name`` (inside its fence)."""
    match = re.search(
        rf"<!-- snippet: {re.escape(name)} -->\n```[a-z]*\n(.*?)```\n<!-- /snippet -->",
        README.read_text(),
        re.DOTALL,
    )
    assert match, f"README.md has no snippet {name!r}"
    return match.group(1)


def run_snippet(name: str, swaps: dict[str, str], namespace: dict[str, Any]) -> dict[str, Any]:
    code = snippet(name)
    for old, new in swaps.items():
        assert old in code, f"snippet {name!r} no longer contains {old!r}"
        code = code.replace(old, new)
    exec(compile(code, f"README.md:{name}", "exec"), namespace)
    return namespace


def _hf_scope() -> dict[str, Any]:
    torch.set_num_threads(1)
    train_set, eval_set = train_eval_blocks(32, 64, 16)
    return {"model": hf_trainer.tiny_gpt2(32, 0), "train_set": train_set, "eval_set": eval_set}


def _swaps(run_dir: Path, tmp_path: Path) -> dict[str, str]:
    return {
        '"outputs/<run>': f'"{run_dir}',
        'output_dir="trainer_out"': f'output_dir="{tmp_path}"',
        "max_steps=1000": f"max_steps={STEPS}",
    }


def test_hf_greedy(smoke_run: Path, tmp_path: Path) -> None:
    swaps = {**_swaps(smoke_run, tmp_path), "eval_steps=50": "eval_steps=2"}
    ns = run_snippet("hf-greedy", swaps, _hf_scope())
    trainer = ns["trainer"]
    assert isinstance(trainer.lr_scheduler, HFGreedyLR)
    spec = load_greedylr(smoke_run / "greedylr.json")
    assert trainer.lr_scheduler.factor == spec.params["factor"]
    assert trainer.lr_scheduler.patience == spec.params["patience"]
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert trainer.state.global_step == STEPS and len(evaluations) == STEPS // 2


@pytest.mark.parametrize("use_agent", [True, False])
def test_hf_optimizers(smoke_run: Path, tmp_path: Path, use_agent: bool) -> None:
    swaps = {**_swaps(smoke_run, tmp_path), "use_agent = True": f"use_agent = {use_agent}"}
    ns = run_snippet("hf-optimizers", swaps, _hf_scope())
    scheduler = ns["scheduler"]
    assert ns["trainer"].state.global_step == STEPS
    if use_agent:
        assert isinstance(scheduler, PolicyScheduler)
        assert scheduler.steps == STEPS  # the callback fed it every step's loss
    else:
        assert isinstance(scheduler, ScheduleReplay) and scheduler.total_steps == STEPS
        assert scheduler.last_epoch == STEPS  # the Trainer stepped it after every step


@pytest.mark.parametrize("schedule", ["agent", "greedy", "replay"])
def test_lightning(smoke_run: Path, schedule: str) -> None:
    ns = run_snippet("lightning", {'"outputs/<run>"': f'"{smoke_run}"'}, {})

    class Module(lightning_example.ByteLM):
        configure_optimizers = ns["configure_optimizers"]

    torch.set_num_threads(1)
    model = Module("cosine", smoke_run, STEPS, 1e-3, 2)  # the snippet picks the scheduler
    model.schedule = schedule
    trainer = lightning_example.make_trainer(STEPS, eval_steps=2)
    trainer.fit(model, *lightning_example.loaders(STEPS, batch_size=4, block_size=16))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    if schedule == "agent":
        assert isinstance(scheduler, PolicyScheduler) and scheduler.steps == STEPS
    elif schedule == "greedy":
        assert isinstance(scheduler, GreedyLR)
        assert scheduler.last_epoch == STEPS // 2  # one step per validation
    else:
        assert isinstance(scheduler, ScheduleReplay) and scheduler.last_epoch == STEPS


def test_logger_tensorboard(tmp_path: Path) -> None:
    line = snippet("logger-tensorboard").splitlines()[0].split("#")[0]
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "lrrl.train"]
    with initialize_config_module(config_module="lrrl.conf", version_base="1.3"):
        cfg = compose("train", overrides=[*words[3:], "debug=smoke"])
    config = OmegaConf.to_container(cfg, resolve=True)
    validate(config)  # type: ignore[arg-type]  # what lrrl.train checks before a run
    tracker = make_tracker(config["logger"], str(tmp_path), config, "readme")  # type: ignore[index, arg-type]
    assert isinstance(tracker, TensorBoardTracker)
    tracker.log({"charts/final_loss": 1.0}, step=1)
    tracker.finish()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_readme_output_blocks_come_from_the_command_and_survive_a_failure(tmp_path):
    # Benchmark figures reach the README through experiments/readme_output.py only.
    import readme_output

    py = sys.executable
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- output:x -->\nold\n<!-- /output:x -->\nb\n")
    readme_output.main(["x", "--readme", str(readme), "--", py, "-c", "print(6 * 7)"])
    text = readme.read_text()
    assert "old" not in text and "-c 'print(6 * 7)'\n42\n" in text
    assert text.startswith("a\n") and text.endswith("b\n")
    with pytest.raises(SystemExit, match="exited 3"):
        readme_output.main(["x", "--readme", str(readme), "--", py, "-c", "exit(3)"])
    assert readme.read_text() == text  # a failing command changes nothing
    with pytest.raises(SystemExit, match="no <!-- output:y -->"):
        readme_output.main(["y", "--readme", str(readme), "--", py, "-c", "pass"])
