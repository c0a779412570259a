"""The noisy-training comparison at tiny scale: problems, noise, cadences, tuning, figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from noisy.problems import FAMILIES, NoiseStrengths
from noisy.study import StudyConfig, tune
from noisy.summary import cluster_bootstrap, recovery_steps, summarise
from noisy.training import RunResult, RunSpec, cosine_factor, train
from noisy.tuning import Dimension, candidates, objective, pick_best, search_space

torch.set_num_threads(1)

#: A learning rate that trains each family well (from a constant-rate sweep).
GOOD_LR = {"mlp": 0.07, "cnn": 0.1, "softmax": 1.0, "gru": 0.01, "nmf": 20.0}
GREEDY = {
    "factor": 0.5,
    "patience": 1,
    "min_lr_ratio": 0.01,
    "max_lr_ratio": 10.0,
    "smooth": False,
    "window_size": 5,
}


def _cosine(lr: float) -> dict[str, float]:
    return {"lr": lr, "min_ratio": 0.1, "warmup": 0.0}


def _spec(family="mlp", noise="none", scheduler="cosine", params=None, seed=0, steps=40, **kw):
    if params is None:
        params = (
            _cosine(GOOD_LR.get(family, 0.1))
            if scheduler == "cosine"
            else {"lr": GOOD_LR.get(family, 0.1), **GREEDY}
        )
    return RunSpec(family, noise, scheduler, params, seed, steps, kw.pop("eval_every", 10), **kw)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_its_loss_falls(family):
    steps = 150 if family == "cnn" else 60  # the small CNN sits on a plateau for ~100 steps
    r = train(_spec(family, params={**_cosine(GOOD_LR[family]), "min_ratio": 1.0}, steps=steps))
    assert not r.diverged
    assert r.eval_steps == list(range(0, steps + 1, 10))
    assert r.loss[-1] < 0.8 * r.loss[0]


def test_same_seed_same_run_and_schedulers_share_init_and_batches():
    a, b = train(_spec()), train(_spec())
    assert a.loss == b.loss and a.lr == b.lr
    greedy = train(_spec(scheduler="greedy_step", params={"lr": GOOD_LR["mlp"], **GREEDY}))
    assert greedy.loss[0] == a.loss[0]  # same initialisation whatever the scheduler
    other_seed = train(_spec(seed=1))
    assert other_seed.loss[0] != a.loss[0]


def test_spike_raises_the_loss_at_the_configured_step():
    strengths = NoiseStrengths(event_at=0.5)
    spike = train(_spec("softmax", noise="spike", strengths=strengths))
    clean = train(_spec("softmax", noise="none", strengths=strengths))
    assert spike.event_step == 20
    before = spike.eval_steps.index(20)
    # identical until the spike (same seed), then the perturbation lifts the loss
    assert spike.loss[: before + 1] == clean.loss[: before + 1]
    assert spike.event_loss > 2.0 * spike.loss[before]
    assert spike.loss[before + 1] > clean.loss[before + 1]


@pytest.mark.parametrize("family", ["softmax", "nmf"])
def test_shift_and_noise_conditions_take_effect(family):
    base = train(_spec(family))
    shift = train(_spec(family, noise="shift"))
    at = shift.eval_steps.index(shift.event_step)
    assert shift.loss[: at + 1] == base.loss[: at + 1]
    assert shift.loss[at + 1] > 1.5 * base.loss[at + 1]  # the new data is not yet learnt
    label = train(_spec(family, noise="label"))
    assert label.loss[-1] > label.clean_loss[-1]  # corrupted targets cannot be fitted
    assert base.loss == base.clean_loss
    gradient = train(_spec(family, noise="gradient"))
    assert gradient.loss[0] == base.loss[0] and gradient.loss[1] != base.loss[1]


def test_greedylr_per_step_changes_its_lr_between_evaluations():
    r = train(_spec(scheduler="greedy_step"))
    changes = [t for t in range(1, r.steps) if r.lr[t] != r.lr[t - 1]]
    assert any(t % 10 for t in changes), changes
    per_eval = train(_spec(scheduler="greedy_eval"))
    changes = [t for t in range(1, r.steps) if per_eval.lr[t] != per_eval.lr[t - 1]]
    assert changes and all(t % 10 == 0 for t in changes), changes


def test_equal_step_budgets_for_every_scheduler():
    runs = [train(_spec(scheduler=s, steps=30)) for s in ("cosine", "greedy_step", "greedy_eval")]
    for r in runs:
        assert r.optimizer_steps == 30 and len(r.lr) == 30
        assert r.eval_steps == [0, 10, 20, 30]


def test_a_diverged_run_counts_as_infinite_loss():
    r = train(_spec(params=_cosine(1e4), steps=30))
    assert r.diverged and r.final_loss == math.inf
    assert r.optimizer_steps < 30

    # through JSON (where a non-finite loss is null) and back, a run is the same
    spike = train(_spec("softmax", noise="spike", steps=20))
    assert RunResult.from_json(json.loads(json.dumps(spike.to_json()))) == spike
    blown = _result("cosine", "mlp", "none", 0, math.inf)
    text = json.dumps(blown.to_json())
    assert "NaN" not in text and "Infinity" not in text
    assert RunResult.from_json(json.loads(text)) == blown


def test_cosine_factor_warms_up_then_anneals_to_the_min_ratio():
    assert cosine_factor(0, 100, 0.1, 0.01) == pytest.approx(1 / 11)
    assert cosine_factor(10, 100, 0.1, 0.01) == pytest.approx(1.0)
    assert cosine_factor(99, 100, 0.1, 0.01) == pytest.approx(0.01)
    assert cosine_factor(0, 100, 0.0, 0.01) == pytest.approx(1.0)


def test_candidates_stay_in_range_and_stratify_each_dimension():
    space = search_space("greedy_step", "mlp", metrics_per_run=300)
    cands = candidates(space, budget=8, seed=3)
    assert cands == candidates(space, budget=8, seed=3)
    lo, hi = FAMILIES["mlp"].lr_range
    strata = np.floor(8 * np.log(np.array([c["lr"] for c in cands]) / lo) / np.log(hi / lo))
    assert sorted(strata) == list(range(8))  # one candidate per log-lr stratum
    for c in cands:
        assert 1 <= c["patience"] <= 50 and 2 <= c["window_size"] <= 100
        assert 0.5 <= c["factor"] < 0.99 and isinstance(c["smooth"], bool)
    assert Dimension("p", "int", 0, 5).value(0.9999) == 5
    assert Dimension("w", "int_log", 2, 10).value(0.9999) == 10


def test_tuning_picks_the_best_candidate():
    assert pick_best([3.0, math.inf, 1.0, 1.0]) == 2
    # the objective is the log of the geometric mean: one lucky seed cannot carry a candidate
    pair = [_result("cosine", "mlp", "none", s, x) for s, x in ((0, 0.01), (1, 1.0))]
    assert objective(pair) == pytest.approx(math.log(0.1))
    diverged = train(_spec(params=_cosine(1e4), steps=20))
    assert objective([diverged]) == math.inf
    config = StudyConfig(
        families=("softmax",),
        noises=("none",),
        schedulers=("cosine", "greedy_step"),
        steps=20,
        budget=3,
        tune_seeds=2,
        eval_seeds=1,
    )
    best, records, _ = tune(config, n_jobs=1)
    for record in records:
        scheduler = record["scheduler"]
        # each candidate retrained on its own: the recorded objectives belong to it
        redone = [
            objective(
                [
                    train(config.spec("softmax", "none", scheduler, c["params"], s))
                    for s in (10_000, 10_001)
                ]
            )
            for c in record["candidates"]
        ]
        assert redone == [c["objective"] for c in record["candidates"]]
        assert (
            best[("softmax", "none", scheduler)]
            == record["candidates"][int(np.argmin(redone))]["params"]
        )


def _result(scheduler, family, noise, seed, final, best=None):
    return RunResult(
        family=family,
        noise=noise,
        scheduler=scheduler,
        params={},
        seed=seed,
        steps=20,
        eval_steps=[0, 10, 20],
        loss=[10.0, final if best is None else best, final],
        clean_loss=[10.0, final, final],
        lr=[0.1] * 20,
        optimizer_steps=20,
        diverged=math.isinf(final),
        event_step=None,
        event_loss=None,
        wall_s=0.0,
        cpu_s=0.0,
    )


def test_report_fractions_come_from_the_paired_runs():
    runs = [
        # mlp/gradient: GreedyLR wins seed 0, ties seed 1, loses seed 2
        _result("greedy_step", "mlp", "gradient", 0, 1.0),
        _result("cosine", "mlp", "gradient", 0, 2.0),
        _result("greedy_step", "mlp", "gradient", 1, 2.0),
        _result("cosine", "mlp", "gradient", 1, 2.0),
        _result("greedy_step", "mlp", "gradient", 2, 3.0, best=0.5),
        _result("cosine", "mlp", "gradient", 2, 1.0),
        # nmf/label: both diverge (a tie), then GreedyLR loses
        _result("greedy_step", "nmf", "label", 0, math.inf),
        _result("cosine", "nmf", "label", 0, math.inf),
        _result("greedy_step", "nmf", "label", 1, 5.0),
        _result("cosine", "nmf", "label", 1, 4.0),
        # noise-free: GreedyLR loses both; a run without a cosine partner is not compared
        _result("greedy_step", "mlp", "none", 0, 2.0),
        _result("cosine", "mlp", "none", 0, 1.0),
        _result("greedy_step", "mlp", "none", 1, 2.0),
        _result("cosine", "mlp", "none", 1, 1.0),
        _result("greedy_step", "mlp", "none", 7, 0.1),
    ]
    groups = summarise(runs, ["greedy_step"])["variants"]["greedy_step"]["groups"]
    noisy = groups["noisy"]
    assert noisy["comparisons"] == 5 and noisy["problems"] == 2
    assert noisy["as_good_final"]["value"] == pytest.approx(3 / 5)
    assert noisy["as_good_best"]["value"] == pytest.approx(4 / 5)  # seed 2's best loss wins
    assert groups["gradient"]["as_good_final"]["value"] == pytest.approx(2 / 3)
    assert groups["none"]["as_good_final"]["value"] == 0.0
    assert groups["none"]["comparisons"] == 2
    assert noisy["median_final_greedy"] == 3.0 and noisy["median_final_cosine"] == 2.0
    assert noisy["diverged_greedy"] == 1 and noisy["diverged_cosine"] == 1
    # two diverged runs tie (log ratio 0), so one problem's geometric mean is sqrt(1 * 5/4)
    assert groups["label"]["ratio_final"]["value"] == pytest.approx(math.sqrt(5 / 4))
    assert groups["label"]["ratio_final"]["ci"] == pytest.approx([math.sqrt(5 / 4)] * 2)
    lo, hi = noisy["as_good_final"]["ci"]
    assert 0.5 <= lo <= 0.6 <= hi <= 2 / 3  # clusters: 2/3 (mlp) and 1/2 (nmf)
    assert groups["none"]["as_good_final"]["ci"] == [0.0, 0.0]
    assert groups["none"]["ratio_final"]["value"] == pytest.approx(2.0)


def test_bootstrap_resamples_whole_problems():
    # two problems, one all wins and one all losses: only two clusters, so the interval spans
    # everything (resampling the 20 comparisons one by one would give about [0.3, 0.7])
    assert cluster_bootstrap([10.0, 0.0], [10.0, 10.0]) == (0.0, 1.0)
    # 40 problems, half won: the interval is about +-1.96 * sqrt(0.25 / 40) = +-0.155
    lo, hi = cluster_bootstrap([1.0, 0.0] * 20, [1.0] * 40)
    assert lo < 0.5 < hi and 0.22 < hi - lo < 0.4


def test_recovery_steps_counts_until_the_loss_is_back_within_tolerance():
    steps, loss = [0, 10, 20, 30, 40, 50], [5.0, 1.0, 3.0, 1.2, 1.05, 0.9]
    assert recovery_steps(steps, loss, 10) == 30
    assert recovery_steps(steps, [5.0, 2.0, 4.0, 3.0, 1.0, 1.0], 10, tolerance=0.5) == 20
    assert recovery_steps(steps, loss, 10, tolerance=0.25) == 20
    assert recovery_steps(steps, [5.0, 1.0, 3.0, 2.0, 2.0, 2.0], 10) is None
    with pytest.raises(ValueError, match="event_step=15"):
        recovery_steps(steps, loss, 15)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: _spec(family="resnet"), r"family='resnet' is invalid: expected one of"),
        (lambda: _spec(noise="salt"), r"noise='salt' is invalid: expected one of"),
        (lambda: _spec(scheduler="linear", params={}), r"scheduler='linear' is invalid"),
        (lambda: _spec(steps=45), r"steps=45 is invalid: expected a multiple of eval_every=10"),
        (lambda: NoiseStrengths(label_fraction=1.5), r"label_fraction=1.5 is invalid"),
        (lambda: StudyConfig(budget=0), r"budget=0 is invalid: expected >= 1"),
        (lambda: StudyConfig(schedulers=("greedy_step",)), r"expected cosine and at least one"),
        (lambda: candidates([Dimension("lr", "log", 1e-3, 1)], 0, 0), r"budget=0 is invalid"),
    ],
)
def test_bad_input_gives_a_one_line_error_naming_the_value(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


def _row(report: str, label: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    script = Path(__file__).parents[1] / "experiments" / "greedylr_noisy.py"
    cmd = [sys.executable, str(script), "--quick", "--out", str(tmp_path), "--n-jobs", "1"]
    cmd += ["--families", "softmax", "nmf", "--noises", "none", "spike", "--eval-seeds", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "report.md").read_text()
    assert "reported by the GreedyLR authors" in report and "86.73%" in report
    assert (tmp_path / "noisy.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 3 * 3  # families x noises x schedulers x eval seeds
    assert {r["seed"] for r in data["runs"]} == {0, 1, 2}  # tuning seeds never evaluated
    # every table row recomputed here from the per-run traces in the JSON
    final = {
        (r["scheduler"], r["problem"], r["seed"]): math.inf if r["diverged"] else r["loss"][-1]
        for r in data["runs"]
    }
    for variant, label in (("greedy_step", "per step"), ("greedy_eval", "per evaluation")):
        for noise in ("spike", "none"):
            keys = [k for k in final if k[0] == variant and k[1].endswith(noise)]
            greedy = [final[k] for k in keys]
            cosine = [final[("cosine", *k[1:])] for k in keys]
            wins = np.mean([g <= c for g, c in zip(greedy, cosine, strict=True)])
            row = _row(report, f"GreedyLR {label} (tuned): {noise}")
            assert row[2] == "6" and row[3].startswith(f"{wins:.1%} [")
            assert row[5] == f"{np.median(greedy):.3g}" and row[6] == f"{np.median(cosine):.3g}"
    for record in data["runs"]:
        if record["problem"].endswith("spike") and not record["diverged"]:
            assert record["recovery_steps"] is None or record["recovery_steps"] % 10 == 0
    # re-rendering from results.json alone gives the same tables
    again = tmp_path / "again"
    cmd = [sys.executable, str(script), "--report-from", str(tmp_path), "--out", str(again)]
    assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    tables = (again / "report.md").read_text().split("\n\n", 1)
    assert tables[0].endswith("(`--report-from`).") and tables[1] == report.split("\n\n", 1)[1]
