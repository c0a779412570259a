"""Playing controllers in lrrl envs: the controller protocol, episode records and rollouts.

Every scheduler, learned or heuristic, is a :class:`Controller` that acts on a batch of
episodes at once (one row per episode) and either requests learning rates exactly (the
baselines: the env's clip still applies) or gives actions (trained agents). A job is one
episode to play: ``(controller, instance, seed)``. :func:`run_jobs` plays a list of jobs

* on the batched NMF env (:class:`lrrl.envs.nmf_batched.BatchedNMFEnv`), hundreds of episodes
  of every scheduler stepped together, sorted by shape into chunks that pad little; or
* episode by episode on any other lrrl env (the DNN env),

and returns the same :class:`Episode` records either way, in job order. Each episode depends
only on its controller, instance and seed (common random numbers: every scheduler meets the
same minibatches and noise on the same instance and seed), so the results do not depend on
how jobs are chunked or spread over processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from lrrl.envs.registration import make_env

#: Chunk size of the batched rollouts: episodes stepped together in one batched env.
CHUNK = 256


@dataclass
class DecisionState:
    """What a controller may know before a decision, one entry per episode (row)."""

    t: np.ndarray  # decisions taken so far
    horizon: np.ndarray  # decisions of the episode
    loss: np.ndarray  # the env's loss after the last decision (the initial loss at t = 0)
    clip: np.ndarray  # the largest lr the env will apply (inf: none)


@dataclass
class Decision:
    """A controller's choice for its rows: exact learning rates, or env actions."""

    lr: np.ndarray | None = None  # (n,) learning rates, requested exactly (then clipped)
    action: np.ndarray | None = None  # (n, 1) actions
    label: np.ndarray | None = None  # (n,) a value recorded beside the decision (Episode.label)


class Controller(Protocol):
    """Anything that schedules learning rates in an lrrl env: a baseline or a trained agent.

    ``reset(n)`` starts ``n`` episodes (rows); ``act`` decides for all of them. A controller
    with ``stepwise = True`` also reacts to every inner optimizer step's training loss through
    ``inner(k, rows, losses) -> lrs`` (``rows`` index its episodes; NaN keeps the lr): the
    harness feeds it each inner step's loss and applies the lrs it returns from the next inner
    step on. A decision may also carry a ``label`` per row, which the harness records in
    :attr:`Episode.label` beside the decision (e.g. the lr a teacher would have chosen there).
    """

    name: str

    def reset(self, n: int) -> None: ...

    def act(self, obs: np.ndarray, state: DecisionState) -> Decision: ...


@dataclass
class Episode:
    """One controller's run on one instance with one episode seed."""

    scheduler: str
    instance: str
    seed: int
    family: str = ""
    lr: list[float] = field(default_factory=list)
    lr_bound: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # loss[0] before the first decision
    clipped: list[bool] = field(default_factory=list)
    diverged: bool = False
    label: list[float] = field(default_factory=list)  # per decision, where the controller gives one

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if not self.diverged else math.inf

    @property
    def loss_0(self) -> float:
        return self.loss[0]

    @property
    def log_loss_ratio(self) -> float:
        """``log(loss_T / loss_0)``: comparable across instances of different scales."""
        if self.diverged or not self.loss[-1] > 0:
            return math.inf if self.diverged else -math.inf
        return math.log(self.loss[-1] / self.loss[0])

    @property
    def clip_rate(self) -> float:
        return float(np.mean(self.clipped)) if self.clipped else 0.0

    @property
    def spikes(self) -> int:
        """Decisions after which the loss rose more than 1.5x (a loss spike)."""
        loss = np.asarray(self.loss, dtype=float)
        with np.errstate(invalid="ignore"):
            return int(np.sum(loss[1:] > 1.5 * loss[:-1]))

    @property
    def lr_jitter(self) -> float:
        """Mean ``|log lr_t - log lr_{t-1}|`` over consecutive decisions (0 for a constant)."""
        lr = np.asarray(self.lr, dtype=float)
        ok = lr > 0
        if ok.sum() < 2:
            return 0.0
        return float(np.mean(np.abs(np.diff(np.log(lr[ok])))))

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "seed": self.seed,
            "lr": self.lr,
            "loss": self.loss,
            "lr_bound": [b if math.isfinite(b) else None for b in self.lr_bound],
            "diverged": self.diverged,
        }


@dataclass(frozen=True)
class Job:
    """One episode to play."""

    controller: Any
    instance: Any
    seed: int


def episode_seeds(
    instances: Sequence[Any], episodes_per_instance: int, base_seed: int
) -> list[tuple[Any, int]]:
    """``(instance, seed)`` pairs shared by every scheduler under comparison."""
    return [
        (inst, base_seed * 10_000 + 100 * i + k)
        for i, inst in enumerate(instances)
        for k in range(episodes_per_instance)
    ]


def jobs_for(controllers: Sequence[Any], runs: Sequence[tuple[Any, int]]) -> list[Job]:
    """Every controller on every ``(instance, seed)`` run, controller-major."""
    return [Job(c, inst, seed) for c in controllers for inst, seed in runs]


# -- playing a batch of episodes ----------------------------------------------------------


class _Rows:
    """Which rows of a batch each controller plays, and its per-step hook across them."""

    def __init__(self, jobs: Sequence[Job]) -> None:
        self.controllers: list[Any] = []
        self.rows: list[np.ndarray] = []
        ids: dict[int, int] = {}
        members: list[list[int]] = []
        for i, job in enumerate(jobs):
            key = id(job.controller)
            if key not in ids:
                ids[key] = len(self.controllers)
                self.controllers.append(job.controller)
                members.append([])
            members[ids[key]].append(i)
        self.rows = [np.array(m, dtype=np.int64) for m in members]
        self.size = len(jobs)
        self.local = np.empty(len(jobs), dtype=np.int64)  # row -> index within its controller
        self.owner = np.empty(len(jobs), dtype=np.int64)
        for c, rows in enumerate(self.rows):
            self.local[rows] = np.arange(rows.size)
            self.owner[rows] = c
        self.stepwise = [
            c for c, ctrl in enumerate(self.controllers) if getattr(ctrl, "stepwise", False)
        ]
        self.labels = np.full(self.size, math.nan)  # the last decision's labels, by row
        self.labelled = np.zeros(self.size, dtype=bool)

    def reset(self) -> None:
        for ctrl, rows in zip(self.controllers, self.rows, strict=True):
            ctrl.reset(rows.size)

    def decide(self, obs: np.ndarray, state: DecisionState) -> tuple[np.ndarray, np.ndarray]:
        """``(requests, actions)`` for the whole batch: NaN requests where actions rule.

        Labels the controllers give are kept in ``labels`` (``labelled`` marks their rows).
        """
        requests = np.full(self.size, math.nan)
        actions = np.zeros((self.size, 1), dtype=np.float32)
        self.labels = np.full(self.size, math.nan)
        self.labelled = np.zeros(self.size, dtype=bool)
        for ctrl, rows in zip(self.controllers, self.rows, strict=True):
            sub = DecisionState(*(getattr(state, f.name)[rows] for f in fields(DecisionState)))
            decision = ctrl.act(obs[rows], sub)
            if decision.lr is not None:
                requests[rows] = decision.lr
            if decision.action is not None:
                actions[rows] = np.asarray(decision.action, dtype=np.float32).reshape(-1, 1)
            if decision.label is not None:
                self.labels[rows] = decision.label
                self.labelled[rows] = True
        return requests, actions

    def inner_hook(self) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None:
        """The env's per-step hook over every controller that reacts to inner steps."""
        if not self.stepwise:
            return None

        def hook(k: int, slots: np.ndarray, losses: np.ndarray) -> np.ndarray:
            out = np.full(slots.size, math.nan)
            owners = self.owner[slots]
            for c in self.stepwise:
                mine = owners == c
                if mine.any():
                    out[mine] = self.controllers[c].inner(k, self.local[slots[mine]], losses[mine])
            return out

        return hook


def _family(instance: Any) -> str:
    return str(getattr(instance, "family", ""))


def run_jobs(
    env_id: str,
    env_kwargs: dict[str, Any],
    jobs: Sequence[Job],
    workers: int = 1,
    advance: Callable[[int], None] | None = None,
    chunk: int = CHUNK,
) -> list[Episode]:
    """Play every job and return its :class:`Episode`, in job order.

    Envs with a batched implementation (NMF) play chunks of up to ``chunk`` episodes at once,
    sorted by their instance's shape and minibatch size so that little is padded; other envs
    play episode by episode. ``workers > 1`` spreads chunks over joblib (loky) processes with
    one torch thread each; the episodes are the same whatever ``workers`` and ``chunk`` are.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    batched = gym.spec(env_id).vector_entry_point is not None
    if batched:
        order = sorted(range(len(jobs)), key=lambda i: _cost_key(jobs[i].instance))
        size = chunk
    else:
        order = list(range(len(jobs)))
        size = max(1, math.ceil(len(jobs) / (4 * max(workers, 1))))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    body = _play_batched if batched else _play_one_by_one
    out: list[Episode | None] = [None] * len(jobs)
    if workers <= 1 or len(chunks) == 1:
        results = (body(env_id, env_kwargs, [jobs[i] for i in c]) for c in chunks)
    else:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator")
        results = parallel(
            delayed(_in_worker)(body, env_id, env_kwargs, [jobs[i] for i in c]) for c in chunks
        )
    for c, episodes in zip(chunks, results, strict=True):
        for i, episode in zip(c, episodes, strict=True):
            out[i] = episode
        if advance is not None:
            advance(len(c))
    return out  # type: ignore[return-value]


def _cost_key(instance: Any) -> tuple:
    shape = getattr(instance, "shape", (0, 0))
    return (getattr(instance, "batch_size", None) or 0, shape[0] * shape[1], shape)


def _in_worker(body: Callable, *args: Any) -> list[Episode]:
    import torch

    torch.set_num_threads(1)  # small tensors: one thread per process is fastest
    return body(*args)


def _play_batched(env_id: str, env_kwargs: dict[str, Any], jobs: list[Job]) -> list[Episode]:
    """Play ``jobs`` together in one batched env (autoreset off: each episode plays once)."""
    B = len(jobs)
    venv: Any = gym.make_vec(
        env_id,
        num_envs=B,
        vectorization_mode="vector_entry_point",
        autoreset_mode="Disabled",
        **env_kwargs,
    )
    try:
        rows = _Rows(jobs)
        obs, info = venv.reset(
            seed=[job.seed for job in jobs], options={"instance": [job.instance for job in jobs]}
        )
        rows.reset()
        venv.unwrapped.set_inner_control(rows.inner_hook())
        episodes = [
            Episode(
                rows.controllers[rows.owner[i]].name,
                info["instance"][i],
                job.seed,
                _family(job.instance),
                loss=[float(info["loss"][i])],
            )
            for i, job in enumerate(jobs)
        ]
        t = np.zeros(B, dtype=np.int64)
        loss = np.asarray(info["loss"], dtype=np.float64)
        live = np.ones(B, dtype=bool)
        while live.any():
            state = DecisionState(
                t.copy(), venv.unwrapped.horizons, loss.copy(), venv.unwrapped.clips
            )
            requests, actions = rows.decide(obs, state)
            requests = np.where(live, requests, math.nan)
            venv.unwrapped.request_lr(requests)
            obs, _, terminated, truncated, info = venv.step(actions)
            for i in np.flatnonzero(live):
                e = episodes[i]
                e.lr.append(float(info["lr"][i]))
                e.lr_bound.append(float(info["lr_bound"][i]))
                e.loss.append(float(info["loss"][i]))
                e.clipped.append(bool(info["clipped"][i]))
                e.diverged = e.diverged or bool(info["diverged"][i])
                if rows.labelled[i]:
                    e.label.append(float(rows.labels[i]))
            loss = np.where(live, np.asarray(info["loss"], dtype=np.float64), loss)
            t += live
            live &= ~(terminated | truncated)
        return episodes
    finally:
        venv.close()


def _play_one_by_one(env_id: str, env_kwargs: dict[str, Any], jobs: list[Job]) -> list[Episode]:
    """Play ``jobs`` one after the other in a single env."""
    env = make_env(env_id, **env_kwargs)
    try:
        return [play(env, job) for job in jobs]
    finally:
        env.close()


def play(env: gym.Env, job: Job) -> Episode:
    """Play one job in a (single, unbatched) env and record the episode."""
    u: Any = env.unwrapped  # an lrrl env (LRControlEnv)
    ctrl = job.controller
    rows = _Rows([job])
    obs, info = env.reset(seed=job.seed, options={"instance": job.instance})
    rows.reset()
    hook = rows.inner_hook()
    if hook is not None:
        u.set_inner_control(hook)
    episode = Episode(ctrl.name, info["instance"], job.seed, _family(job.instance))
    episode.loss.append(float(info["loss"]))
    t, done = 0, False
    try:
        while not done:
            state = DecisionState(
                np.array([t]),
                np.array([u.horizon]),
                np.array([episode.loss[-1]]),
                np.array([u.clip]),
            )
            requests, actions = rows.decide(obs[None], state)
            if not math.isnan(requests[0]):
                u.request_lr(float(requests[0]))
            obs, _, terminated, truncated, info = env.step(actions[0])
            episode.lr.append(float(info["lr"]))
            episode.lr_bound.append(float(info["lr_bound"]))
            episode.loss.append(float(info["loss"]))
            episode.clipped.append(bool(info["clipped"]))
            episode.diverged = episode.diverged or bool(info["diverged"])
            if rows.labelled[0]:
                episode.label.append(float(rows.labels[0]))
            done = terminated or truncated
            t += 1
    finally:
        if hook is not None:
            u.set_inner_control(None)
    return episode
