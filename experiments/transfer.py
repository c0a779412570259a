"""Transfer study: DNN agents trained on short, small runs, used on longer runs and a larger model.

    python experiments/transfer.py multirun/dnn_default --out outputs/transfer --jobs 2
    python experiments/transfer.py RUN_DIR [RUN_DIR ...] --seeds 10 --settings long large

The agents are ``python -m lrrl.train env=dnn`` runs (200-step episodes: 20 decisions of 10
SGD or Adam steps, width-32 MLPs on digits and blobs). Each is taken, in a plain torch loop,
to runs it never trained on:

* ``long``: the digits MLP at 2,000 steps (10x the agent's episodes);
* ``large``: a width-128 MLP on digits at 1,000 steps (4x the width, 5x the steps);

with data and initial parameters from the digits pool no training instance uses (the env's
``test`` pool), inner optimizers SGD (momentum 0.9) and Adam, minibatch 32. Three routes:

* ``policy``: the agent itself through :class:`lrrl.schedulers.PolicyScheduler`, fed the
  training loss every step and the validation loss, accuracy and gradient norm at the end of
  each of its 20 decision windows (so a window is 5-10x longer than in training);
* ``replay``: the agent's own schedule on a 200-step run (a tuning seed), written as a
  ``schedule.json`` and stretched to the longer run by :class:`lrrl.schedulers.ScheduleReplay`;
* ``greedylr``: GreedyLR with parameters fitted to the agent's 200-step schedules (both tuning
  seeds; :func:`lrrl.agents.greedylr_fit.fit_greedylr`, the open-loop fit of
  ``lrrl.distill``), stepped with the validation loss once per window;

against, at equal steps, schedules tuned *at the target length* on the tuning seeds (the
baselines see the target run; the agent never does): cosine annealing to 0,
warmup-stable-decay (5% linear warm-up, linear decay to 0 over the last 20%), each over a
7-point log grid of the optimizer's learning-rate range (the agent's action range); and the
learning-rate-free optimizers schedule-free AdamW (5% warm-up; lr over its range) and Prodigy
(with cosine annealing, as its authors recommend; ``lr`` multiplier over 0.3, 1, 3), which
replace the inner optimizer.

Reported per setting: each scheduler's geometric-mean final validation loss over tuned cosine's
on the same runs (optimizer x evaluation seed are the instances, agents the runs of lrrl.stats'
stratified bootstrap), its 95% interval, and the time to target (AlgoPerf's measure): the share
of the run's steps, and the seconds, until the validation loss first reaches tuned cosine's mean
final loss on that optimizer (median over runs, "–" when most never do; with the share of runs
that reach it). A run diverges
when its validation loss is not finite or exceeds 20x its initial value; it is scored at that
cap. A second table follows each scheduler along the run (geometric means over runs): the
learning rate of its first and last window, and the validation loss at a tenth of the steps,
at its lowest (and where) and at the end. Writes ``results.json`` (every run's validation
curve, learning rates and times), ``transfer.md`` (the tables) and ``transfer.png``
(validation loss against steps); ``--report-from results.json`` renders them again from the
saved runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dnn_pilot import lr_grid

from lrrl import stats
from lrrl.agents.baselines import Cosine, WarmupStableDecay
from lrrl.config import EnvSpec
from lrrl.envs.base import is_diverged
from lrrl.envs.dnn import PROBE, DNNConfig
from lrrl.envs.dnn_models import (
    DEFAULT_LR_RANGES,
    build_model,
    build_optimizer,
    gradient_norm,
    prediction_loss,
    reinitialise,
    validation,
)
from lrrl.envs.dnn_tasks import instance_data
from lrrl.outputs import schedule_payload, write_json
from lrrl.rollout import Episode
from lrrl.schedulers.policy import load_run

#: Decision windows per run: the agent's horizon, also where every run is validated.
WINDOWS = 20
#: A run whose validation loss exceeds this multiple of its initial one has diverged (the
#: DNN env's default), and SGD's momentum: as in the env the agent trained in.
MAX_LOSS_RATIO = DNNConfig.max_loss_ratio
MOMENTUM = DNNConfig.momentum
TUNE_SEEDS = (100, 101)
GRID_POINTS = 7
OPTIMIZERS = ("sgd", "adam")
ROUTES = ("policy", "replay", "greedylr")
BASELINES = ("cosine", "wsd", "schedulefree_adamw", "prodigy")
#: Learning-rate-free optimizers: they replace the inner optimizer, so one run per seed
#: serves the rows of both optimizers.
REFERENCES = ("schedulefree_adamw", "prodigy")
PRODIGY_LRS = (0.3, 1.0, 3.0)
#: The baselines' time schedules (lrrl.agents.baselines) as multipliers of their tuned lr;
#: Prodigy runs under cosine annealing.
SHAPES = {"cosine": Cosine(1.0), "prodigy": Cosine(1.0), "wsd": WarmupStableDecay(1.0)}


@dataclass(frozen=True)
class Setting:
    name: str
    steps: int
    width: int
    task: str = "digits"
    model: str = "mlp"
    batch_size: int = 32


#: The agent's training episodes (env=dnn) and the runs it is transferred to.
SHORT = Setting("short", steps=200, width=32)
SETTINGS = {
    "long": Setting("long", steps=2000, width=32),
    "large": Setting("large", steps=1000, width=128),
}


@dataclass(frozen=True)
class Run:
    """One training run: what it trains, with what, and how the learning rate moves."""

    setting: Setting
    optimizer: str  # the agent-side optimizer (sgd/adam); references replace it
    scheduler: str  # a route, a baseline, or "record" (the agent's short run)
    lr: float
    seed: int
    agent: str | None = None  # run dir of the agent (routes)
    schedule: str | None = None  # schedule.json (replay)
    greedylr: dict[str, Any] = field(default_factory=dict)  # params (greedylr)

    @property
    def inner(self) -> str:
        """The optimizer that runs: the references replace the agent-side one."""
        return self.scheduler if self.scheduler in REFERENCES else self.optimizer


def _scheduler(run: Run, opt: torch.optim.Optimizer, start: dict[str, float]) -> Any:
    from lrrl.schedulers import GreedyLR, PolicyScheduler, ScheduleReplay

    if run.scheduler in ("policy", "record"):
        assert run.agent is not None
        return PolicyScheduler(
            opt,
            run.agent,
            total_steps=run.setting.steps,
            steps_per_decision=run.setting.steps // WINDOWS,  # decide where it validates
            loss0=start["loss"],
            initial={k: start[k] for k in ("val_loss", "accuracy", "grad_norm")},
        )
    if run.scheduler == "replay":
        assert run.schedule is not None
        return ScheduleReplay(opt, run.schedule, total_steps=run.setting.steps)
    if run.scheduler == "greedylr":
        return GreedyLR(opt, **run.greedylr)
    shape = SHAPES.get(run.scheduler)
    if shape is None:
        return None
    steps = run.setting.steps
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: float(shape(min(k, steps), steps)))


def train(run: Run) -> dict[str, Any]:
    """The run in a plain torch loop: validation loss after each window, lrs, seconds."""
    torch.set_num_threads(1)
    s = run.setting
    data = instance_data(s.task, "test", run.seed)
    net = build_model(s.model, data.input_shape, data.classes, s.width)
    reinitialise(net, run.seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = build_optimizer(run.inner, params, run.lr, MOMENTUM, 0.0)
    if run.scheduler == "schedulefree_adamw":
        for group in opt.param_groups:
            group["warmup_steps"] = max(1, round(0.05 * s.steps))
    generator = torch.Generator().manual_seed(run.seed + 1)  # the minibatch order

    def validate() -> tuple[float, float]:
        if hasattr(opt, "eval"):
            opt.eval()  # schedule-free: validate at the averaged point
        result = validation(net, data.x_val, data.y_val)
        net.train()
        if hasattr(opt, "train"):
            opt.train()
        return result

    net.train()
    if hasattr(opt, "train"):
        opt.train()
    probe = prediction_loss(net(data.x_train[:PROBE]), data.y_train[:PROBE])
    probe.backward()
    val0, acc0 = validate()
    start = {
        "loss": float(probe.detach()),
        "val_loss": val0,
        "accuracy": acc0,
        "grad_norm": float(gradient_norm(params)),
    }
    opt.zero_grad(set_to_none=True)
    scheduler = _scheduler(run, opt, start)
    window = s.steps // WINDOWS
    n, size = len(data.y_train), min(s.batch_size, len(data.y_train))
    order, cursor = torch.randperm(n, generator=generator), 0
    curve, seconds, lrs = [val0], [0.0], []
    diverged = False
    began = time.perf_counter()
    for k in range(1, WINDOWS * window + 1):
        if cursor + size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        idx = order[cursor : cursor + size]
        cursor += size
        if k % window == 1 or window == 1:
            lrs.append(float(opt.param_groups[0]["lr"]))
        opt.zero_grad(set_to_none=True)
        loss = prediction_loss(net(data.x_train[idx]), data.y_train[idx])
        loss.backward()
        end = k % window == 0
        norm = float(gradient_norm(params)) if end else math.nan
        opt.step()
        metrics: dict[str, float] = {}
        if end:
            val, accuracy = validate()
            curve.append(val)
            seconds.append(time.perf_counter() - began)
            diverged = is_diverged(val, val0, MAX_LOSS_RATIO)
            metrics = {"val_loss": val, "accuracy": accuracy, "grad_norm": norm}
        if diverged:
            break
        if run.scheduler in ("policy", "record"):
            scheduler.step(float(loss.detach()), **metrics)
        elif run.scheduler == "greedylr":
            if end:
                scheduler.step(metrics["val_loss"])
        elif scheduler is not None:
            scheduler.step()
    cap = MAX_LOSS_RATIO * val0
    final = min(curve[-1], cap) if not diverged else cap
    return {
        "run": {**asdict(run), "setting": s.name},
        "curve": curve,
        "seconds": seconds,
        "lrs": lrs,
        "final": final,
        "diverged": diverged,
    }


def run_all(runs: Sequence[Run], jobs: int) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [train(r) for r in runs]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(train, runs, chunksize=1))


# -- the agent's short runs: the replayed schedule and the GreedyLR fit ------------------------


def record(agents: Sequence[str], out: Path, jobs: int, fit_budget: int) -> dict[tuple, Any]:
    """Per (agent, optimizer): the schedule.json of its short run and the fitted GreedyLR."""
    from lrrl.agents.greedylr_fit import fit_greedylr

    runs = [
        Run(SHORT, opt, "record", DEFAULT_LR_RANGES[opt][0], seed, agent=agent)
        for agent in agents
        for opt in OPTIMIZERS
        for seed in TUNE_SEEDS
    ]
    done = run_all(runs, jobs)
    learned: dict[tuple, Any] = {}
    for a, agent in enumerate(agents):
        for opt in OPTIMIZERS:
            mine = [
                (r, d)
                for r, d in zip(runs, done, strict=True)
                if (r.agent, r.optimizer) == (agent, opt)
            ]
            episodes = [
                Episode(
                    "policy",
                    f"{SHORT.task}-{SHORT.model}-{opt}-{r.seed}",
                    r.seed,
                    lr=d["lrs"],
                    lr_bound=[math.inf] * len(d["lrs"]),
                    loss=d["curve"],
                    diverged=d["diverged"],
                )
                for r, d in mine
            ]
            path = out / "schedules" / f"agent{a}_{opt}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            env = EnvSpec("lrrl/DNN-v0", "dnn", dict(load_run(agent)[0]["env"]))
            write_json(path, schedule_payload(episodes, env, TUNE_SEEDS[0], SHORT.steps // WINDOWS))
            fit = fit_greedylr(
                [e.loss for e in episodes], [e.lr for e in episodes], budget=fit_budget
            )
            learned[(agent, opt)] = {
                "schedule": str(path),
                "greedylr": dict(fit.params),
                "initial_lr": float(fit.initial_lr),
                "fit_log_lr_rmse": float(fit.log_lr_rmse),
            }
    return learned


# -- tuning and evaluation ---------------------------------------------------------------------


def baseline_grid(setting: Setting, opt: str, name: str) -> list[float]:
    if name == "prodigy":
        return list(PRODIGY_LRS)
    return lr_grid("schedulefree_adamw" if name == "schedulefree_adamw" else opt, GRID_POINTS)


def tune(settings: Sequence[Setting], jobs: int) -> dict[tuple, float]:
    """Per (setting, optimizer, baseline): the lr with the lowest mean log final validation
    loss over the tuning seeds, tuned at the target length. The references (which replace
    the optimizer) are tuned once per setting."""
    runs = []
    for s in settings:
        for opt in OPTIMIZERS:
            for name in BASELINES:
                if name in REFERENCES and opt != OPTIMIZERS[0]:
                    continue
                for lr in baseline_grid(s, opt, name):
                    runs += [Run(s, opt, name, lr, seed) for seed in TUNE_SEEDS]
    done = run_all(runs, jobs)
    scores: dict[tuple, dict[float, list[float]]] = {}
    for r, d in zip(runs, done, strict=True):
        scores.setdefault((r.setting.name, r.optimizer, r.scheduler), {}).setdefault(
            r.lr, []
        ).append(math.log(d["final"]))
    best = {}
    for key, by_lr in scores.items():
        best[key] = min(by_lr, key=lambda lr: float(np.mean(by_lr[lr])))
    for s in settings:  # the references serve both optimizers' rows
        for name in REFERENCES:
            best[(s.name, OPTIMIZERS[1], name)] = best[(s.name, OPTIMIZERS[0], name)]
    return best


def evaluation_runs(
    settings: Sequence[Setting],
    agents: Sequence[str],
    learned: dict[tuple, Any],
    tuned: dict[tuple, float],
    seeds: Sequence[int],
) -> list[Run]:
    runs = []
    for s in settings:
        for opt in OPTIMIZERS:
            for seed in seeds:
                for name in BASELINES:
                    if name in REFERENCES and opt != OPTIMIZERS[0]:
                        continue
                    runs.append(Run(s, opt, name, tuned[(s.name, opt, name)], seed))
                for agent in agents:
                    got = learned[(agent, opt)]
                    low = DEFAULT_LR_RANGES[opt][0]
                    runs.append(Run(s, opt, "policy", low, seed, agent=agent))
                    runs.append(
                        Run(s, opt, "replay", low, seed, agent=agent, schedule=got["schedule"])
                    )
                    runs.append(
                        Run(
                            s,
                            opt,
                            "greedylr",
                            got["initial_lr"],
                            seed,
                            agent=agent,
                            greedylr=got["greedylr"],
                        )
                    )
    return runs


# -- the report --------------------------------------------------------------------------------


def _key(d: dict[str, Any]) -> tuple:
    r = d["run"]
    return r["setting"], r["optimizer"], r["scheduler"]


def matrices(results: list[dict[str, Any]], setting: str) -> dict[str, np.ndarray]:
    """Per scheduler, ``(runs, instances)`` log final validation losses; instances are
    (optimizer, seed) pairs, runs the agents (baselines: one row, repeated). The references
    run once per seed and stand in both optimizers' columns."""
    seeds = sorted({d["run"]["seed"] for d in results if d["run"]["setting"] == setting})
    agents = sorted({d["run"]["agent"] for d in results if d["run"]["agent"]})
    cols = [(opt, seed) for opt in OPTIMIZERS for seed in seeds]
    out: dict[str, np.ndarray] = {}
    for name in (*BASELINES, *ROUTES):
        rows = agents if name in ROUTES else [None]
        m = np.full((len(rows), len(cols)), np.nan)
        for d in results:
            r = d["run"]
            if r["setting"] != setting or r["scheduler"] != name:
                continue
            for j, (opt, seed) in enumerate(cols):
                shared = name in REFERENCES
                if seed == r["seed"] and (opt == r["optimizer"] or shared):
                    m[rows.index(r["agent"]), j] = math.log(d["final"])
        if not np.isnan(m).all():
            out[name] = m
    return out


def time_to_target(results: list[dict[str, Any]], setting: str) -> dict[str, dict[str, float]]:
    """Per scheduler: median share of the run's steps and median seconds until the
    validation loss first reaches tuned cosine's mean final loss on that optimizer."""
    target = {}
    for opt in OPTIMIZERS:
        finals = [d["final"] for d in results if _key(d) == (setting, opt, "cosine")]
        target[opt] = float(np.exp(np.mean(np.log(finals))))
    out = {}
    for name in (*BASELINES, *ROUTES):
        shares, secs = [], []
        for d in results:
            r = d["run"]
            if r["setting"] != setting or r["scheduler"] != name:
                continue
            opts = OPTIMIZERS if name in REFERENCES else [r["optimizer"]]
            for opt in opts:
                hit = [i for i, v in enumerate(d["curve"]) if v <= target[opt]]
                shares.append(hit[0] / WINDOWS if hit else math.inf)
                secs.append(d["seconds"][hit[0]] if hit else math.inf)
        if shares:
            out[name] = {
                "share": float(np.median(shares)),
                "seconds": float(np.median(secs)),
                "reached": float(np.mean(np.isfinite(shares))),
            }
    return out


def summarise(results: list[dict[str, Any]], settings: Sequence[str], samples: int) -> dict:
    summary: dict[str, Any] = {}
    for s in settings:
        m = matrices(results, s)
        ttt = time_to_target(results, s)
        cosine = m["cosine"]
        rows = {}
        for name, x in m.items():
            diff = x - np.tile(cosine, (x.shape[0], 1))
            row = {
                "final_val_loss": float(np.exp(np.mean(x))),
                **stats.ratio(diff, samples),
                **ttt.get(name, {}),
            }
            rows[name] = row
        summary[s] = rows
    return summary


def table(summary: dict[str, Any]) -> str:
    settings = list(summary)
    head = "| scheduler | " + " | ".join(
        f"{s}: val loss / tuned cosine [95% CI] | {s}: steps to target (median) | "
        f"{s}: seconds to target"
        for s in settings
    )
    lines = [head + " |", "|---" * (1 + 3 * len(settings)) + "|"]
    names = list(next(iter(summary.values())))
    for name in names:
        cells = []
        for s in settings:
            row = summary[s].get(name)
            if row is None:
                cells += ["–", "–", "–"]
                continue
            low, high = row["ratio_ci"]
            cells.append(f"{row['ratio']:.3f} [{low:.3f}, {high:.3f}]")
            reached = f"{row['reached']:.0%} reach it"
            finite = math.isfinite(row["share"])  # the median run reached it
            cells.append(f"{row['share']:.0%} ({reached})" if finite else f"– ({reached})")
            cells.append(f"{row['seconds']:.2f}" if finite else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def complete_runs(
    results: list[dict[str, Any]], setting: str, optimizer: str, name: str
) -> list[dict[str, Any]]:
    """The runs of ``name`` on a setting and optimizer that went the whole way (the
    references, which replace the optimizer, stand in for both)."""
    return [
        d
        for d in results
        if d["run"]["setting"] == setting
        and d["run"]["scheduler"] == name
        and (d["run"]["optimizer"] == optimizer or name in REFERENCES)
        and len(d["curve"]) == WINDOWS + 1
    ]


def along_the_run(results: list[dict[str, Any]], settings: Sequence[str]) -> str:
    """Markdown: per setting, optimizer and scheduler (geometric means over its complete
    runs), the learning rate of the first and the last window and the validation loss at a
    tenth of the steps, at its lowest (and where) and at the end."""
    lines = [
        "| setting | optimizer | scheduler | first lr | last lr | val loss at 10% | "
        "lowest val loss (at) | final val loss |",
        "|---" * 8 + "|",
    ]
    for s in settings:
        for opt in OPTIMIZERS:
            for name in (*BASELINES, *ROUTES):
                runs = complete_runs(results, s, opt, name)
                if not runs:
                    continue
                curve = np.exp(np.mean(np.log([d["curve"] for d in runs]), axis=0))
                lrs = np.exp(np.mean(np.log([d["lrs"] for d in runs]), axis=0))
                low = int(np.argmin(curve))
                lines.append(
                    f"| {s} | {opt} | {name} | {lrs[0]:.3g} | {lrs[-1]:.3g} | "
                    f"{curve[WINDOWS // 10]:.3f} | {curve[low]:.3f} ({low / WINDOWS:.0%}) | "
                    f"{curve[-1]:.3f} |"
                )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], settings: Sequence[Setting], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(OPTIMIZERS), len(settings), figsize=(5 * len(settings), 7), squeeze=False
    )
    for j, setting in enumerate(settings):
        s = setting.name
        for i, opt in enumerate(OPTIMIZERS):
            ax = axes[i][j]
            for name in (*BASELINES, *ROUTES):
                curves = [d["curve"] for d in complete_runs(results, s, opt, name)]
                if not curves:
                    continue
                steps = np.linspace(0, setting.steps, WINDOWS + 1)
                style = "-" if name in ROUTES else "--"
                ax.plot(steps, np.exp(np.mean(np.log(curves), axis=0)), style, label=name)
            ax.set_yscale("log")
            ax.set_title(f"{s} ({setting.steps} steps, width {setting.width}), {opt}")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("validation loss (geometric mean)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def agent_dirs(paths: Sequence[Path]) -> list[str]:
    """Run dirs given, or found below a sweep dir (each with model.zip)."""
    found = []
    for p in paths:
        found += (
            [str(p)]
            if (p / "model.zip").is_file()
            else [str(m.parent) for m in sorted(p.glob("*/model.zip"))]
        )
    if not found:
        raise SystemExit(
            f"transfer: error: no agent run dir (with model.zip) in {list(map(str, paths))}"
        )
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="*", help="agent run dirs or a sweep dir")
    parser.add_argument("--out", type=Path, default=Path("outputs/transfer"))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", type=int, default=5, help="evaluation seeds per optimizer")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fit-budget", type=int, default=20_000, help="GreedyLR fit candidates")
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap samples")
    parser.add_argument(
        "--steps-scale",
        type=float,
        default=1.0,
        help="multiply every setting's steps (a quick look: 0.1; the agents' short runs stay)",
    )
    parser.add_argument(
        "--report-from",
        type=Path,
        help="re-render the tables and plot from this results.json (no training)",
    )
    args = parser.parse_args(argv)
    if args.report_from is not None:
        return render(json.loads(args.report_from.read_text()), args.out, args.samples)
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds {args.seeds} and --jobs {args.jobs}: expected integers >= 1")
    agents = agent_dirs(args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    if not 0 < args.steps_scale <= 1:
        parser.error(f"--steps-scale {args.steps_scale}: expected a number in (0, 1]")
    settings = [
        dataclasses.replace(
            SETTINGS[s],
            steps=WINDOWS * max(1, round(SETTINGS[s].steps * args.steps_scale / WINDOWS)),
        )
        for s in args.settings
    ]
    began = time.perf_counter()
    learned = record(agents, args.out, args.jobs, args.fit_budget)
    tuned = tune(settings, args.jobs)
    runs = evaluation_runs(settings, agents, learned, tuned, range(args.seeds))
    results = run_all(runs, args.jobs)
    document = {
        "agents": agents,
        "settings": {s.name: asdict(s) for s in settings},
        "tuned": {"/".join(k): v for k, v in tuned.items()},
        "learned": {f"{a}/{o}": v for (a, o), v in learned.items()},
        "results": results,
        "wall_time_s": time.perf_counter() - began,
    }
    return render(document, args.out, args.samples)


def render(document: dict[str, Any], out: Path, samples: int) -> dict[str, Any]:
    """The tables (printed and in ``transfer.md``), ``results.json`` and ``transfer.png`` of a
    study's runs."""
    results = document["results"]
    settings = [Setting(**s) for s in document["settings"].values()]
    names = [s.name for s in settings]
    document["summary"] = summarise(results, names, samples)
    seeds = len({d["run"]["seed"] for d in results})
    header = (
        f"{len(document['agents'])} agent(s), {seeds} evaluation seed(s) x {len(OPTIMIZERS)} "
        f"optimizers per setting; {len(results)} evaluation runs, wall time "
        f"{document['wall_time_s']:.0f} s"
    )
    text = "\n\n".join([header, table(document["summary"]), along_the_run(results, names)])
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(document, default=float) + "\n")
    plot(results, settings, out / "transfer.png")
    print(f"wrote {out}/results.json, transfer.md and transfer.png")
    return document


if __name__ == "__main__":
    main()
