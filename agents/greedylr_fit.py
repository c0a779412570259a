"""Distil learned schedules into GreedyLR: a vectorised replay and a black-box fitter.

GreedyLR is a deterministic function of the metric sequence, so a learned schedule
can be compared with GreedyLR(params) *open loop*: feed the losses seen under the
learned policy into GreedyLR and compare the learning rates it would have chosen
with the ones the policy chose.

Alignment with a schedule (the ``schedule.json`` convention)
-------------------------------------------------------------
A schedule of ``T`` decisions has ``lr[t]``, the learning rate applied at decision
``t`` (``t = 0 .. T-1``), and ``loss[0 .. T]``: ``loss[0]`` is measured before the first
decision and ``loss[t+1]`` after decision ``t``. GreedyLR is stepped once per decision
with the loss observed after it, so

* ``lr[0]`` is the optimizer's starting learning rate (``initial_lr``), before any step;
* ``lr[t]`` for ``t >= 1`` is GreedyLR's learning rate after ``step(loss[1]), ...,
  step(loss[t])``.

``loss[0]`` is never fed to the scheduler and ``loss[T]`` does not influence any of the
``T`` learning rates. :func:`schedule_lrs` implements exactly this; :func:`fit_greedylr`
uses it. In a training loop the fitted scheduler is used the same way::

    optimizer = torch.optim.SGD(params, lr=result.initial_lr)
    scheduler = GreedyLR(optimizer, **result.params)   # or transformers'
    # get_scheduler("greedy", optimizer, scheduler_specific_kwargs=result.params)
    for decision in range(T):
        loss = train_for(steps_per_action)               # at the current lr
        scheduler.step(loss)                             # sets the lr of the next decision
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lrrl.agents.baselines import GreedyLRSchedule, ScheduleController
from lrrl.envs.nmf import NMFEnv, nmf_lrs_for_actions
from lrrl.rollout import Decision, DecisionState
from lrrl.schedulers.greedylr import GREEDYLR_DEFAULTS, replay_greedylr

__all__ = [
    "FIT_PARAMS",
    "AgentLabeller",
    "FitResult",
    "action_lrs",
    "fit_greedylr",
    "replay_log_lr_rmse",
    "schedule_lrs",
]

#: GreedyLR keyword arguments that :func:`fit_greedylr` fits (besides ``initial_lr``).
FIT_PARAMS = (
    "factor",
    "patience",
    "threshold",
    "threshold_mode",
    "cooldown",
    "warmup",
    "min_lr",
    "max_lr",
    "smooth",
    "window_size",
)


def schedule_lrs(loss: Any, n_decisions: int, initial_lr: Any, **params: Any) -> np.ndarray:
    """GreedyLR's learning rates for the ``n_decisions`` decisions of a schedule.

    ``loss`` follows the schedule convention (``loss[0]`` before the first decision,
    ``loss[t+1]`` after decision ``t``; see the module docstring), shape ``(>= T,)`` or
    ``(R, >= T)`` where ``T = n_decisions``. Returns ``(R, T)``: column 0 is ``initial_lr``,
    column ``t`` the lr after stepping with ``loss[1..t]``.
    """
    loss = np.atleast_2d(np.asarray(loss, dtype=np.float64))
    if n_decisions < 1 or loss.shape[1] < n_decisions:
        raise ValueError(
            f"need 1 <= n_decisions <= len(loss), got n_decisions={n_decisions}, len(loss)={loss.shape[1]}"
        )
    after = replay_greedylr(loss[:, 1:n_decisions], initial_lr, **params)
    first = np.broadcast_to(np.asarray(initial_lr, dtype=np.float64), (after.shape[0],))
    return np.concatenate([first[:, None], after], axis=1)


@dataclass
class FitResult:
    """Outcome of :func:`fit_greedylr`.

    ``params`` are keyword arguments for ``lrrl.schedulers.GreedyLR(optimizer, **params)``
    and for transformers' ``get_scheduler("greedy", optimizer,
    scheduler_specific_kwargs=params)``; parameters not in it (``mode``, ``eps``,
    ``reset_start``, ``verbose``) keep their defaults. ``initial_lr`` is not a scheduler
    argument: create the optimizer with ``lr=initial_lr``.
    """

    params: dict[str, Any]
    initial_lr: float
    log_lr_rmse: float  # sqrt of the mean squared log-lr error over all decisions
    default_log_lr_rmse: float  # the same for GreedyLR's defaults, started at the best constant lr
    n_evaluations: int  # candidate parameter sets evaluated
    history: list[float] = field(default_factory=list)  # best rmse after each search round


class _Space:
    """Box-bounded real coding of the fitted parameters, scaled to the data."""

    names = ("log_neg_log_factor", "patience", "log10_threshold", "rel", "cooldown", "warmup",
             "log_min_lr", "log_max_lr", "smooth", "log_window_size", "log_initial_lr")  # fmt: skip
    integer = np.array([0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], bool)
    binary = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)

    def __init__(self, log_lo: float, log_hi: float, n_steps: int, loss_scale: float) -> None:
        n = max(n_steps, 1)
        self.loss_scale = loss_scale
        self.low = np.array([math.log(1e-3), 0, -8, 0, 0, 0, log_lo - 3, log_lo, 0, 0, log_lo - 1])
        self.high = np.array([math.log(1.5), min(n, 30), -0.3, 1, min(n, 20), min(n, 20),
                              log_hi, log_hi + 3, 1, math.log(min(n, 100)), log_hi + 1])  # fmt: skip

    def sample(self, rng: np.random.Generator, k: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size=(k, len(self.low)))

    def clip(self, z: np.ndarray) -> np.ndarray:
        return np.clip(z, self.low, self.high)

    def encode(self, params: Mapping[str, Any], initial_lr: float) -> np.ndarray:
        """The coding of GreedyLR keyword arguments (defaults for missing ones), unclipped."""
        p = {**GREEDYLR_DEFAULTS, **params}
        rel = p["threshold_mode"] == "rel"
        return np.array([
            math.log(-math.log(p["factor"])), p["patience"],
            math.log10(p["threshold"] / (1.0 if rel else self.loss_scale)), float(rel),
            p["cooldown"], p["warmup"], math.log(p["min_lr"]), math.log(p["max_lr"]),
            float(bool(p["smooth"])), math.log(p["window_size"]), math.log(initial_lr),
        ], dtype=np.float64)  # fmt: skip

    def decode(self, z: np.ndarray) -> dict[str, np.ndarray]:
        rel = z[:, 3] > 0.5
        threshold = 10.0 ** z[:, 2] * np.where(rel, 1.0, self.loss_scale)
        min_lr = np.exp(np.minimum(z[:, 6], z[:, 7]))
        max_lr = np.exp(np.maximum(z[:, 6], z[:, 7]))
        return {
            "factor": np.exp(-np.exp(z[:, 0])),
            "patience": np.rint(z[:, 1]).astype(np.int64),
            "threshold": threshold,
            "threshold_mode": np.where(rel, "rel", "abs"),
            "cooldown": np.rint(z[:, 4]).astype(np.int64),
            "warmup": np.rint(z[:, 5]).astype(np.int64),
            "min_lr": min_lr,
            "max_lr": max_lr,
            "smooth": z[:, 8] > 0.5,
            "window_size": np.maximum(np.rint(np.exp(z[:, 9])), 1).astype(np.int64),
            "initial_lr": np.exp(z[:, 10]),
        }


class _Data:
    """Schedules padded to one length, so all (candidate, schedule) pairs replay together."""

    def __init__(self, losses: Sequence[Any], lrs: Sequence[Any]) -> None:
        if len(losses) != len(lrs) or not lrs:
            raise ValueError(
                f"need as many loss as lr sequences (>= 1), got {len(losses)} and {len(lrs)}"
            )
        lrs = [np.asarray(x, dtype=np.float64).ravel() for x in lrs]
        losses = [np.asarray(x, dtype=np.float64).ravel() for x in losses]
        for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            if len(lr) < 1 or len(loss) != len(lr) + 1:
                raise ValueError(
                    f"schedule {i}: need len(loss) == len(lr) + 1 >= 2 (loss[0] before the first "
                    f"decision), got len(loss)={len(loss)}, len(lr)={len(lr)}"
                )
            if not np.all(np.isfinite(lr) & (lr > 0)):
                raise ValueError(f"schedule {i}: learning rates must be positive and finite")
        self.n = len(lrs)
        self.t_max = max(len(x) for x in lrs)
        self.loss = np.zeros((self.n, self.t_max + 1))
        self.log_lr = np.zeros((self.n, self.t_max))
        self.mask = np.zeros((self.n, self.t_max))
        for i, (loss, lr) in enumerate(zip(losses, lrs, strict=True)):
            self.loss[i, : len(loss)] = loss
            self.loss[i, len(loss) :] = loss[-1]  # padding never reaches the scored columns
            self.log_lr[i, : len(lr)] = np.log(lr)
            self.mask[i, : len(lr)] = 1.0
        self.n_points = self.mask.sum()
        all_log_lr = np.concatenate([np.log(x) for x in lrs])
        self.log_lo, self.log_hi = float(all_log_lr.min()), float(all_log_lr.max())
        self.log_lr_mean = float(all_log_lr.mean())
        finite = np.concatenate(losses)
        finite = np.abs(finite[np.isfinite(finite)])
        self.loss_scale = float(np.median(finite)) if finite.size and np.median(finite) > 0 else 1.0

    def mse(self, cand: dict[str, np.ndarray], chunk: int = 512) -> np.ndarray:
        """Mean squared log-lr error over all decisions, one value per candidate."""
        k = len(cand["initial_lr"])
        out = np.empty(k)
        for lo in range(0, k, chunk):
            sl = slice(lo, min(lo + chunk, k))
            kk = sl.stop - sl.start
            rep = {name: np.repeat(v[sl], self.n) for name, v in cand.items()}
            initial_lr = rep.pop("initial_lr")
            pred = schedule_lrs(np.tile(self.loss, (kk, 1)), self.t_max, initial_lr, **rep)
            with np.errstate(divide="ignore"):
                err = (np.log(pred) - np.tile(self.log_lr, (kk, 1))) ** 2 * np.tile(
                    self.mask, (kk, 1)
                )
            out[sl] = err.reshape(kk, self.n * self.t_max).sum(axis=1) / self.n_points
        return out


def replay_log_lr_rmse(
    losses: Sequence[Any], lrs: Sequence[Any], params: Mapping[str, Any], initial_lr: float
) -> float:
    """:func:`fit_greedylr`'s error of one parameter set: the root mean squared log-lr error
    of GreedyLR(``params``) started at ``initial_lr`` and replayed on ``losses``, against ``lrs``
    (schedules as in :func:`fit_greedylr`)."""
    cand = {name: np.array([value]) for name, value in params.items()}
    cand["initial_lr"] = np.array([float(initial_lr)])
    return math.sqrt(float(_Data(losses, lrs).mse(cand)[0]))


def _python_params(cand: dict[str, np.ndarray], i: int) -> tuple[dict[str, Any], float]:
    params = {
        "factor": float(cand["factor"][i]),
        "patience": int(cand["patience"][i]),
        "threshold": float(cand["threshold"][i]),
        "threshold_mode": str(cand["threshold_mode"][i]),
        "cooldown": int(cand["cooldown"][i]),
        "warmup": int(cand["warmup"][i]),
        "min_lr": float(cand["min_lr"][i]),
        "max_lr": float(cand["max_lr"][i]),
        "smooth": bool(cand["smooth"][i]),
        "window_size": int(cand["window_size"][i]),
    }
    if not params["smooth"]:  # irrelevant then; report the default rather than noise
        params["window_size"] = GREEDYLR_DEFAULTS["window_size"]
    return params, float(cand["initial_lr"][i])


class _Archive:
    """The best candidate seen for each discrete structure (patience, threshold mode, smooth)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[int, bool, bool], tuple[float, np.ndarray]] = {}

    def update(self, z: np.ndarray, f: np.ndarray) -> None:
        keys = zip(np.rint(z[:, 1]).astype(int), z[:, 3] > 0.5, z[:, 8] > 0.5, strict=True)
        for i, key in enumerate(keys):
            key = (int(key[0]), bool(key[1]), bool(key[2]))
            if key not in self.entries or f[i] < self.entries[key][0]:
                self.entries[key] = (float(f[i]), z[i].copy())

    def best(self, k: int) -> list[tuple[np.ndarray, float]]:
        ranked = sorted(self.entries.values(), key=lambda e: e[0])[:k]
        return [(z, f) for f, z in ranked]


def _coordinate_sweeps(
    space: _Space, data: _Data, z: np.ndarray, f: float, max_sweeps: int = 4, n_grid: int = 33
) -> tuple[np.ndarray, float, int]:
    evaluated = 0
    for _ in range(max_sweeps):
        improved = False
        for d in range(len(z)):
            if space.binary[d]:
                values = np.array([0.0, 1.0])
            elif space.integer[d]:
                values = np.arange(space.low[d], space.high[d] + 1)
            else:
                coarse = np.linspace(space.low[d], space.high[d], n_grid)
                fine = z[d] + np.linspace(-0.05, 0.05, n_grid) * (space.high[d] - space.low[d])
                values = np.clip(np.concatenate([coarse, fine]), space.low[d], space.high[d])
            cand = np.repeat(z[None], len(values), axis=0)
            cand[:, d] = values
            cand_f = data.mse(space.decode(cand))
            evaluated += len(values)
            i = int(np.argmin(cand_f))
            if cand_f[i] < f - 1e-15:
                z, f, improved = cand[i], float(cand_f[i]), True
        if not improved:
            break
    return z, f, evaluated


def min_budget(rounds: int = 20, restarts: int = 4) -> int:
    """The smallest ``budget`` :func:`fit_greedylr` accepts: two candidates per round and
    restart (one to explore, one to keep)."""
    return 2 * max(restarts, 1) * (rounds + 1)


def fit_greedylr(
    losses: Sequence[Any],
    lrs: Sequence[Any],
    budget: int = 40_000,
    seed: int = 0,
    rounds: int = 20,
    n_elite: int = 32,
    n_polish: int = 4,
    restarts: int = 4,
    start: tuple[Mapping[str, Any], float] | None = None,
) -> FitResult:
    """Fit GreedyLR's parameters and starting lr so it reproduces given schedules.

    Each schedule ``i`` is a pair ``(losses[i], lrs[i])`` in the ``schedule.json``
    convention: ``len(losses[i]) == len(lrs[i]) + 1`` (see the module docstring for how
    they align with scheduler steps). The objective is the mean, over all decisions of
    all schedules, of ``(log lr_greedy - log lr_given)^2``; ``FitResult.log_lr_rmse`` is
    its square root.

    The search is black box and vectorised over candidates. Each of ``restarts``
    independent populations gets ``budget / restarts`` candidates: a third drawn at random
    in a box scaled to the data (log-uniform factor, threshold and lrs, uniform integers;
    the defaults among the first), then ``rounds`` rounds of mutating its ``n_elite`` best
    with a shrinking step (real-coded, integers rounded, binary choices flipped now and
    then). The best of each population, and the best seen for each of the ``n_polish``
    best discrete structures, are finished by coordinate sweeps. Same inputs and ``seed``
    give the same result.

    Args:
        losses: per schedule, ``T_i + 1`` losses (non-finite values are allowed).
        lrs: per schedule, ``T_i`` positive finite learning rates.
        budget: total number of candidate parameter sets to evaluate.
        seed: seed of the search.
        rounds: refinement rounds after the random phase.
        n_elite: parents kept for refinement.
        n_polish: discrete structures (patience, threshold mode, smoothing) whose best
            candidate is finished by coordinate sweeps (each dimension over a grid of its
            range, repeated until no sweep improves).
        restarts: independent search populations.
        start: ``(params, initial_lr)`` of an earlier fit (e.g. :attr:`FitResult.params`,
            :attr:`FitResult.initial_lr`) to warm-start from: it joins the first population,
            clipped to the search box, so the result is never worse than it on these
            schedules unless the clipping moved it. ``None`` leaves the search unchanged.
    """
    if restarts < 1 or budget < min_budget(rounds, restarts):
        raise ValueError(
            f"budget={budget} and restarts={restarts} are invalid: expected restarts >= 1 and "
            f"budget >= {min_budget(rounds, restarts)}"
        )
    data = _Data(losses, lrs)
    space = _Space(data.log_lo, data.log_hi, data.t_max, data.loss_scale)
    rng = np.random.default_rng(seed)

    # GreedyLR's defaults started at the best constant lr (exp of the mean log lr).
    default = {k: np.array([GREEDYLR_DEFAULTS[k]]) for k in FIT_PARAMS}
    default["initial_lr"] = np.array([math.exp(data.log_lr_mean)])
    default_mse = float(data.mse(default)[0])
    z_default = np.array([[
        math.log(-math.log(GREEDYLR_DEFAULTS["factor"])), GREEDYLR_DEFAULTS["patience"],
        math.log10(GREEDYLR_DEFAULTS["threshold"] / data.loss_scale), 0.0,
        GREEDYLR_DEFAULTS["cooldown"], GREEDYLR_DEFAULTS["warmup"],
        math.log(GREEDYLR_DEFAULTS["min_lr"]), math.log(GREEDYLR_DEFAULTS["max_lr"]),
        0.0, math.log(GREEDYLR_DEFAULTS["window_size"]), data.log_lr_mean,
    ]])  # fmt: skip

    # Independent restarts: one population collapses into one basin (one patience, one
    # threshold mode); several, each with its own random phase, rarely all miss the best.
    archive = _Archive()
    finals: list[tuple[np.ndarray, float]] = []
    n_eval, history = 0, []
    share = budget // restarts
    width = space.high - space.low
    for restart in range(restarts):
        n_random = max(share // 3, n_elite)
        z = space.sample(rng, n_random)
        if restart == 0:
            z[0] = space.clip(z_default)[0]
            if start is not None:
                z[1] = space.clip(space.encode(*start))
        f = data.mse(space.decode(z))
        archive.update(z, f)
        n_eval += len(z)
        per_round = max((share - n_random) // max(rounds, 1), 1)
        for r in range(rounds):
            order = np.argsort(f, kind="stable")[:n_elite]
            elite_z, elite_f = z[order], f[order]
            sigma = 0.2 * (0.05 / 0.2) ** (r / max(rounds - 1, 1))  # 0.2 -> 0.05 of the box
            parents = elite_z[np.minimum(rng.geometric(0.15, per_round) - 1, len(elite_z) - 1)]
            moved = rng.random(parents.shape) < 0.4
            child = parents + moved * rng.normal(0.0, sigma, parents.shape) * width
            step = rng.choice([-1.0, 1.0], parents.shape) * (rng.random(parents.shape) < 0.15)
            child = np.where(space.integer, child + step, child)
            flip = space.binary & (rng.random(parents.shape) < 0.1)
            child = np.where(flip, 1.0 - parents, child)
            child = space.clip(child)
            child_f = data.mse(space.decode(child))
            n_eval += len(child)
            archive.update(child, child_f)
            z = np.concatenate([elite_z, child])
            f = np.concatenate([elite_f, child_f])
        i = int(np.argmin(f))
        finals.append((z[i], float(f[i])))
        history.append(math.sqrt(min(e[1] for e in finals)))

    # Mutation stalls where one parameter must jump (a patience of 5 instead of 2, the
    # other threshold mode); sweep each coordinate over its range from the best few.
    # Starts come from different discrete structures (patience, threshold mode, smoothing)
    # seen anywhere in the search, so one basin's population cannot hide another's.
    for start_z, start_f in finals + archive.best(n_polish):
        best_z, best_f, evaluated = _coordinate_sweeps(space, data, start_z, start_f)
        n_eval += evaluated
        finals.append((best_z, best_f))
    best_z, best_f = min(finals, key=lambda e: e[1])
    history.append(math.sqrt(best_f))
    params, initial_lr = _python_params(space.decode(best_z[None]), 0)
    return FitResult(
        params=params,
        initial_lr=initial_lr,
        log_lr_rmse=math.sqrt(best_f),
        default_log_lr_rmse=math.sqrt(default_mse),
        n_evaluations=n_eval,
        history=history,
    )


def greedylr_controller(name: str, params: dict[str, Any], initial_lr: float) -> ScheduleController:
    """Plays GreedyLR in an lrrl env, one ``step(loss)`` per decision (as the fit replays it).

    Decision 0 requests ``initial_lr``; before decision ``t >= 1`` the scheduler steps with the
    loss after decision ``t - 1`` and decision ``t`` requests its lr exactly through
    ``env.request_lr`` (the env's clipping to its bound still applies). GreedyLR runs as
    :class:`lrrl.schedulers.GreedyLR` on a one-parameter optimizer, so what is measured here is
    what a user gets from the drop-in scheduler.
    """
    return ScheduleController(
        name, GreedyLRSchedule(lr=float(initial_lr), cadence="decision", **params)
    )


#: ``lrs_for_actions(actions, clip, fraction)``: the learning rates a batch of env actions
#: requests (before clipping), given each row's clip and last lr over its clip.
LrsForActions = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def action_lrs(env: Any) -> LrsForActions | None:
    """The action -> lr mapping of an lrrl env (``lrrl/NMF-v0``), ``None`` for other envs."""
    u = env.unwrapped
    if not isinstance(u, NMFEnv):
        return None
    config = u.cfg

    def lrs(actions: np.ndarray, clip: np.ndarray, fraction: np.ndarray) -> np.ndarray:
        return nmf_lrs_for_actions(np.asarray(actions).reshape(-1), config, clip, fraction)

    return lrs


class AgentLabeller:
    """Plays ``controller`` and labels every decision with the lr ``agent`` would apply there.

    DAgger's data collection: at each decision the agent is asked on the same observation,
    and its action becomes a learning rate through the env's mapping ``lrs_for_actions``
    (:func:`action_lrs`), capped at the decision's clip as the env caps it. That lr is the
    decision's ``label`` (recorded in :attr:`lrrl.rollout.Episode.label`). The mapping's
    ``fraction`` (the last applied lr over the clip it was applied under, NaN before the first
    decision; only ``action_mode="delta"`` uses it) is tracked from ``controller``'s own
    requests, the way the env tracks it. ``controller``'s decisions pass unchanged, so the
    episodes are the ones it plays alone.
    """

    def __init__(self, controller: Any, agent: Any, lrs_for_actions: LrsForActions) -> None:
        self.controller = controller
        self.agent = agent
        self.lrs_for_actions = lrs_for_actions
        self.name = controller.name
        self.stepwise = getattr(controller, "stepwise", False)
        self._fraction = np.empty(0)

    @property
    def params(self) -> dict[str, Any]:
        return dict(getattr(self.controller, "params", {}))

    def reset(self, n: int) -> None:
        self.controller.reset(n)
        self.agent.reset(n)
        self._fraction = np.full(n, math.nan)

    def act(self, obs: np.ndarray, state: DecisionState) -> Decision:
        clip = np.asarray(state.clip, dtype=np.float64)
        decision = self.controller.act(obs, state)
        wanted = self.agent.act(obs, state)
        label = np.minimum(self.lrs_for_actions(wanted.action, clip, self._fraction), clip)
        request = (
            np.asarray(decision.lr, dtype=np.float64)
            if decision.lr is not None
            else self.lrs_for_actions(decision.action, clip, self._fraction)
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            applied = np.minimum(request, clip)
            self._fraction = np.where(np.isfinite(clip), applied / clip, self._fraction)
        return Decision(lr=decision.lr, action=decision.action, label=label)

    def inner(self, k: int, rows: np.ndarray, losses: np.ndarray) -> np.ndarray:
        return self.controller.inner(k, rows, losses)
