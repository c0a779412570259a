"""Hyperparameter search through Hydra with optuna's TPE sampler (``hydra/sweeper=lrrl_optuna``).

    python -m lrrl.train -m hydra/sweeper=lrrl_optuna hydra.sweep.dir=multirun/ppo_search
    python -m lrrl.train -m hydra/sweeper=lrrl_optuna hydra.sweep.dir=multirun/ppo_search \\
        hydra.sweeper.n_trials=40                      # the same search, 20 trials more

Hydra's own Optuna sweeper pins optuna<3; this one is written against Hydra's public
``Sweeper`` interface and optuna 5. The plugin class Hydra loads is
``hydra_plugins.lrrl_sweeper.lrrl_optuna_sweeper.LrrlOptunaSweeper`` (source in
``lrrl/hydra_plugin/``); it hands everything to :class:`OptunaSearch` here.

Search space
    ``hydra.sweeper.params`` maps override keys to values in Hydra's override grammar:

    ===================================== ===============================================
    value                                 sampled as
    ===================================== ===============================================
    ``choice(32, 64, 128)`` or ``32,64``  one of the values (categorical); lists allowed
    ``range(1, 9, 2)``                    one of 1, 3, 5, 7 (integers: ordered, stepped)
    ``interval(0.1, 0.4)``                a float in ``[0.1, 0.4]``
    ``int(interval(8, 256))``             an integer in ``[8, 256]``
    ``tag(log, interval(1e-4, 3e-3))``    log-uniform (also ``tag(log, int(interval(...)))``)
    ``0.99`` (no sweep)                   that value in every trial
    ===================================== ===============================================

    Command-line overrides join the space: ``agent.hyperparams.gamma='interval(0.9,0.999)'``
    adds (or replaces) a dimension, ``agent.hyperparams.gamma=0.99`` fixes one.
    ``hydra.sweeper.trial_overrides`` are applied last to every trial; lrrl's preset scores
    trials on the tuning instances there (``eval.split=tune``), never the test instances.

Objective
    The value the task function returns (``lrrl.train``: the mean ``log(loss_T / loss_0)`` of
    the learned schedule on ``eval.split``), minimised by default. A trial whose job raises
    (a diverged agent, a sampled value the config rejects) or returns a non-finite or
    non-numeric value is marked failed with the reason in its ``error`` attribute; the search
    goes on.

Pruning
    Each trial's config gets a ``search:`` block (:class:`TrialLink`) naming its study and
    trial, and ``lrrl.train`` reports the trial's progress there while it trains: every
    ``report_every`` env steps, the mean ``-return`` of the training episodes that ended since
    the last report (with lrrl's reward, ``log(loss_T / loss_0)`` on the training instances:
    the objective's measure, played by the exploring policy). With ``pruner: median`` (the
    default) a trial whose value from ``prune_warmup_steps`` on is worse than the median of the
    finished trials at the same step is stopped and marked pruned; the first
    ``prune_startup_trials`` trials are never pruned. Pruning needs ``storage`` (the jobs
    report to the stored study) and ``direction: minimize``.

Batches and resuming
    Each batch asks ``n_jobs`` trials and launches them together through the configured Hydra
    launcher (``hydra/launcher=lrrl_joblib`` runs them in parallel). Trial ``k`` runs as Hydra
    job ``k``, so its run dir is ``<sweep dir>/k__...``. With ``storage`` set (lrrl's preset:
    ``sqlite:///<sweep dir>/optuna.db``) the study survives the process: re-running the same
    command continues up to ``n_trials`` finished trials (complete or failed) and never re-runs
    a finished one; trials a killed search left running are marked failed and run again with
    their parameters. Resuming with another search space or other fixed overrides is refused.
    One search at a time per study. The sampler is re-seeded from ``seed`` and the trial
    number before every ask, so a resumed search asks what an uninterrupted one would have.

Outputs (in the sweep dir)
    ``multirun.yaml`` (the search's config), ``optuna.db`` (the study) and
    ``optimization_results.yaml``: best value, parameters, overrides and run dir, and the
    trial counts.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import CompactHydraException

from lrrl.envs.base import as_int, check_options, require

if TYPE_CHECKING:
    import optuna
    from hydra.core.override_parser.types import Override
    from hydra.core.utils import JobReturn
    from hydra.plugins.launcher import Launcher
    from hydra.types import HydraContext, TaskFunction
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: What a search-space value may be (the error message of a bad one lists it).
ACCEPTED = (
    "choice(a, b, ...) or a,b,...; range(start, stop[, step]); interval(low, high), "
    "int(interval(low, high)) or tag(log, interval(...)); or a single value"
)
DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("median", "none")
RESULTS_FILE = "optimization_results.yaml"
#: Study attribute holding the search a study was created for (checked on resume).
SEARCH_ATTR = "lrrl_search"


class SearchError(CompactHydraException):
    """A search that cannot start or ended without a result; Hydra prints its message alone."""


@dataclass
class SweeperConfig:
    """``hydra.sweeper`` of ``hydra/sweeper=lrrl_optuna`` (``conf/hydra/sweeper/lrrl_optuna.yaml``).

    Fields:
        params: the search space: override key -> value in Hydra's override grammar (module
            docstring); the preset's default is a PPO space.
        n_trials: finished trials (complete or failed) the study should hold; a search that
            is resumed runs only the missing ones.
        n_jobs: trials per batch, launched together through the Hydra launcher.
        seed: seed of the TPE sampler.
        direction: ``minimize`` or ``maximize`` the task function's return value.
        storage: optuna storage URL (``sqlite:///path.db``); ``None``: in memory, no resume.
        study_name: the study's name in the storage.
        trial_overrides: overrides applied last to every trial.
        pruner: ``median`` (stop trials worse than the median at the same step) or ``none``.
        prune_startup_trials: trials that finish before any is pruned.
        prune_warmup_steps: env steps a trial trains before it can be pruned.
        report_every: env steps between a trial's reports of its progress to the study.
    """

    params: dict[str, Any] = field(default_factory=dict)
    n_trials: int = 20
    n_jobs: int = 1
    seed: int = 0
    direction: str = "minimize"
    storage: str | None = None
    study_name: str = "lrrl"
    trial_overrides: list[str] = field(default_factory=list)
    pruner: str = "median"
    prune_startup_trials: int = 5
    prune_warmup_steps: int = 20_000
    report_every: int = 5_000

    def __post_init__(self) -> None:
        self.n_trials = as_int("hydra.sweeper.n_trials", self.n_trials, 1)
        self.prune_startup_trials = as_int(
            "hydra.sweeper.prune_startup_trials", self.prune_startup_trials, 0
        )
        self.prune_warmup_steps = as_int(
            "hydra.sweeper.prune_warmup_steps", self.prune_warmup_steps, 0
        )
        self.report_every = as_int("hydra.sweeper.report_every", self.report_every, 1)
        require(self.pruner in PRUNERS, "hydra.sweeper.pruner", self.pruner, f"one of {PRUNERS}")
        if self.pruner != "none":
            require(
                self.storage is not None,
                "hydra.sweeper.storage",
                self.storage,
                f"a storage URL with hydra.sweeper.pruner={self.pruner} (trials report to the "
                "stored study), or hydra.sweeper.pruner=none",
            )
            require(
                self.direction == "minimize",
                "hydra.sweeper.direction",
                self.direction,
                "'minimize' with pruning (trials report the negated training return), or "
                "hydra.sweeper.pruner=none",
            )
        self.n_jobs = as_int("hydra.sweeper.n_jobs", self.n_jobs, 1)
        self.seed = as_int("hydra.sweeper.seed", self.seed, 0)
        require(
            self.direction in DIRECTIONS,
            "hydra.sweeper.direction",
            self.direction,
            f"one of {DIRECTIONS}",
        )
        require(
            isinstance(self.params, Mapping),
            "hydra.sweeper.params",
            self.params,
            "a mapping from override keys to values",
        )
        self.params = dict(self.params)
        self.trial_overrides = [str(o) for o in self.trial_overrides or []]

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> SweeperConfig:
        """The config from the ``hydra.sweeper`` node (``_target_`` dropped, unknown keys
        rejected in one line)."""
        given = {k: v for k, v in _plain(options).items() if k != "_target_"}
        check_options("hydra.sweeper", given, [f.name for f in dataclasses.fields(cls)])
        return cls(**given)


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (resolved)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass
class TrialLink:
    """The ``search:`` block of a trial's config: where its job reports progress (Pruning).

    The sweeper writes it (:meth:`override`); ``lrrl.train`` reads it into
    ``TrainConfig.search`` and reports through :meth:`open`. Outside a search it is ``null``.
    """

    storage: str
    study_name: str
    trial: int
    pruner: str
    startup_trials: int
    warmup_steps: int
    report_every: int

    def __post_init__(self) -> None:
        self.trial = as_int("search.trial", self.trial, 0)
        self.startup_trials = as_int("search.startup_trials", self.startup_trials, 0)
        self.warmup_steps = as_int("search.warmup_steps", self.warmup_steps, 0)
        self.report_every = as_int("search.report_every", self.report_every, 1)
        require(self.pruner in PRUNERS, "search.pruner", self.pruner, f"one of {PRUNERS}")

    @classmethod
    def from_dict(cls, given: Mapping[str, Any]) -> TrialLink:
        require(isinstance(given, Mapping), "search", given, "a mapping (written by the sweeper)")
        given = dict(given)
        fields = [f.name for f in dataclasses.fields(cls)]
        check_options("search", given, fields)
        missing = sorted(set(fields) - set(given))
        require(not missing, "search", given, f"every one of {fields} (missing {missing})")
        return cls(**given)

    @classmethod
    def of(cls, cfg: SweeperConfig, trial: int) -> TrialLink:
        assert cfg.storage is not None
        return cls(
            storage=cfg.storage,
            study_name=cfg.study_name,
            trial=trial,
            pruner=cfg.pruner,
            startup_trials=cfg.prune_startup_trials,
            warmup_steps=cfg.prune_warmup_steps,
            report_every=cfg.report_every,
        )

    def override(self) -> str:
        """``search={...}`` in Hydra's override grammar (strings quoted)."""

        def text(value: Any) -> str:
            if isinstance(value, str):
                return "'" + value.replace("'", "\\'") + "'"
            return str(value)

        items = ",".join(
            f"{f.name}:{text(getattr(self, f.name))}" for f in dataclasses.fields(self)
        )
        return f"search={{{items}}}"

    def open(self) -> optuna.trial.Trial:
        """The trial in its stored study, with the search's pruner (public optuna API only)."""
        import optuna

        storage = optuna.storages.get_storage(self.storage)
        pruner: optuna.pruners.BasePruner = (
            optuna.pruners.MedianPruner(self.startup_trials, self.warmup_steps)
            if self.pruner == "median"
            else optuna.pruners.NopPruner()
        )
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
        study_id = storage.get_study_id_from_name(self.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.trial)
        return optuna.trial.Trial(study, trial_id)


# -- the search space -----------------------------------------------------------------------


@dataclass
class Dimension:
    """One searched override: its optuna distribution and how a sample becomes an override.

    ``strings`` (categoricals only) holds each choice's override text, and ``values`` the
    value it stands for (a list such as ``[64, 64]`` is a choice optuna cannot store itself).
    """

    key: str
    distribution: optuna.distributions.BaseDistribution
    strings: list[str] | None = None
    values: list[Any] | None = None

    def _index(self, sample: Any) -> int:
        import optuna

        assert isinstance(self.distribution, optuna.distributions.CategoricalDistribution)
        return self.distribution.choices.index(sample)

    def override(self, sample: Any) -> str:
        """The override ``key=value`` of a sampled value."""
        if self.strings is not None:
            return f"{self.key}={self.strings[self._index(sample)]}"
        return f"{self.key}={sample!r}"  # an int or a float (repr keeps every digit)

    def value(self, sample: Any) -> Any:
        """The config value a sample stands for."""
        return sample if self.values is None else self.values[self._index(sample)]

    def first(self) -> Any:
        """A sample to check configs with: the first choice, or the low end."""
        choices = getattr(self.distribution, "choices", None)
        return choices[0] if choices is not None else self.distribution.low  # type: ignore[attr-defined]


def _distribution(override: Override) -> Dimension:
    """The dimension of one sweep override; ``ValueError`` naming the reason if unsupported."""
    import optuna
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    dist = optuna.distributions
    key = override.get_key_element()
    value = override.value()
    tags = set(getattr(value, "tags", set()))
    if tags - {"log"}:
        raise ValueError(f"unknown tag(s) {sorted(tags - {'log'})}; only 'log' is accepted")
    if tags and not isinstance(value, IntervalSweep):
        raise ValueError("tag(log, ...) applies to interval() only")
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        assert low is not None and high is not None
        if not low < high:
            raise ValueError(f"the interval's low end {low} must be below its high end {high}")
        log_scale = "log" in tags
        if log_scale and low <= 0:
            raise ValueError(f"a log-scale interval needs a positive low end (got {low})")
        if isinstance(low, int) and isinstance(high, int):
            return Dimension(key, dist.IntDistribution(low, high, log=log_scale))
        return Dimension(key, dist.FloatDistribution(float(low), float(high), log=log_scale))
    if isinstance(value, RangeSweep) and all(
        isinstance(x, int) for x in (value.start, value.stop, value.step)
    ):
        ints = list(range(int(value.start), int(value.stop), int(value.step)))  # type: ignore[arg-type]
        if not ints:
            raise ValueError("the range is empty")
        step = abs(int(value.step))
        return Dimension(key, dist.IntDistribution(min(ints), max(ints), step=step))
    if isinstance(value, (ChoiceSweep, RangeSweep)):  # float ranges: their exact values
        values = list(override.sweep_iterator())
        strings = list(override.sweep_string_iterator())
        if not values:
            raise ValueError("nothing to choose from")
        primitive = all(isinstance(v, (bool, int, float, str)) for v in values)
        choices: list[Any] = values if primitive else strings
        return Dimension(key, dist.CategoricalDistribution(choices), strings, values)
    raise ValueError(f"{type(value).__name__} sweeps are not supported")


def _as_override_text(value: Any) -> str:
    """A config value (YAML may give numbers, booleans, lists) as override grammar text."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_search_space(
    params: Mapping[str, Any], arguments: Sequence[str] = ()
) -> tuple[dict[str, Dimension], list[str]]:
    """The dimensions and the fixed overrides of a search.

    ``params`` is ``hydra.sweeper.params`` (key -> grammar text); ``arguments`` are the
    command line's overrides, which replace params of the same key. A bad value raises a
    one-line ``ValueError`` naming it and what is accepted.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    entries: dict[str, tuple[str, Override]] = {}
    lines = [
        (f"hydra.sweeper.params.{k}", f"{k}={_as_override_text(v)}") for k, v in params.items()
    ]
    lines += [(line.split("=", 1)[0], line) for line in arguments]
    for label, line in lines:
        try:
            override = parser.parse_override(line)
        except HydraException as err:
            reason = str(err).strip().splitlines()[0]
            value = line.split("=", 1)[1] if "=" in line else line
            raise ValueError(
                f"{label}={value!r} is invalid: expected {ACCEPTED} ({reason})"
            ) from None
        entries[override.get_key_element()] = (label, override)
    dimensions: dict[str, Dimension] = {}
    fixed: list[str] = []
    for key, (label, override) in entries.items():
        if not override.is_sweep_override():
            fixed.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
            continue
        try:
            dimensions[key] = _distribution(override)
        except ValueError as err:
            text = override.input_line.split("=", 1)[1] if override.input_line else ""
            raise ValueError(f"{label}={text!r} is invalid: expected {ACCEPTED} ({err})") from None
    return dimensions, fixed


def _signature(dimensions: Mapping[str, Dimension], fixed: Sequence[str]) -> dict[str, Any]:
    """What a study was created for: its distributions and fixed overrides (JSON-able)."""
    import optuna

    to_json = optuna.distributions.distribution_to_json
    return {
        "params": {k: to_json(d.distribution) for k, d in sorted(dimensions.items())},
        "fixed": sorted(fixed),
    }


# -- the search -----------------------------------------------------------------------------


class OptunaSearch:
    """The sweeper's work: ask trials in batches, launch them, tell optuna their results."""

    def __init__(self, **options: Any) -> None:
        self.cfg = SweeperConfig.from_dict(options)
        # checked at instantiation, so a bad search space fails before any job starts
        self.dimensions, self.fixed = parse_search_space(self.cfg.params)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # -- study bookkeeping --------------------------------------------------------------

    def _study(self, signature: dict[str, Any]) -> optuna.Study:
        import optuna

        study = optuna.create_study(
            storage=self.cfg.storage,
            study_name=self.cfg.study_name,
            direction=self.cfg.direction,  # type: ignore[arg-type]
            load_if_exists=True,
        )
        stored = study.user_attrs.get(SEARCH_ATTR)
        if stored is None:
            study.set_user_attr(SEARCH_ATTR, signature)
        elif stored != signature:
            changed = [k for k in ("params", "fixed") if stored.get(k) != signature[k]]
            raise SearchError(
                f"study {self.cfg.study_name!r} in {self.cfg.storage} was created for another "
                f"search (its {' and '.join(changed)} differ); resume it with the same "
                "overrides, or start a new one in another hydra.sweep.dir or "
                "hydra.sweeper.study_name"
            )
        self._requeue_interrupted(study)
        return study

    @staticmethod
    def _requeue_interrupted(study: optuna.Study) -> None:
        """Trials a killed search left running: mark them failed, queue their params again."""
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
            log.warning(f"trial {trial.number} was interrupted; it runs again")

    @staticmethod
    def finished(study: optuna.Study) -> int:
        """Trials that count towards ``n_trials``: complete, pruned, or failed in their job
        (interrupted ones are run again and do not count)."""
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED)
        return sum(
            t.state in done or (t.state == TrialState.FAIL and "error" in t.user_attrs)
            for t in study.get_trials(deepcopy=False)
        )

    def _ask(self, study: optuna.Study, count: int) -> list[optuna.trial.Trial]:
        import optuna

        trials = []
        distributions = {k: d.distribution for k, d in self.dimensions.items()}
        for _ in range(count):
            # re-seeded per trial: a resumed search asks what an uninterrupted one would
            n = len(study.get_trials(deepcopy=False))
            study.sampler = optuna.samplers.TPESampler(seed=self.cfg.seed + n)
            trials.append(study.ask(distributions))
        return trials

    def _overrides(self, trial: optuna.trial.Trial) -> list[str]:
        sampled = [d.override(trial.params[k]) for k, d in self.dimensions.items()]
        link = [] if self.cfg.storage is None else [TrialLink.of(self.cfg, trial.number).override()]
        return [*self.fixed, *sampled, *link, *self.cfg.trial_overrides]

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: JobReturn) -> None:
        import optuna
        from optuna.trial import TrialState

        if ret.hydra_cfg is not None:
            trial.set_user_attr("run_dir", str(ret.hydra_cfg.hydra.runtime.output_dir))
        error = None
        value = math.nan
        try:
            result = ret.return_value  # raises the job's exception if it failed
        except optuna.TrialPruned as err:
            study.tell(trial, state=TrialState.PRUNED)
            log.info(f"trial {trial.number} pruned ({err})")
            return
        except Exception as err:
            message = str(err).strip().splitlines()
            error = f"{type(err).__name__}: {message[0]}" if message else type(err).__name__
        else:
            if isinstance(result, numbers.Real) and not isinstance(result, bool):
                value = float(result)
                if not math.isfinite(value):
                    error = f"the job returned {value} (expected a finite number)"
            else:
                error = f"the job returned {result!r} (expected a number)"
        if error is not None:
            trial.set_user_attr("error", error)
            study.tell(trial, state=TrialState.FAIL)
            log.warning(f"trial {trial.number} failed: {error}")
        else:
            study.tell(trial, value)
            best = study.best_trial
            log.info(
                f"trial {trial.number}: {value:.6g} (best {best.value:.6g}, trial {best.number})"
            )

    # -- the sweep ----------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        from omegaconf import OmegaConf
        from optuna.trial import TrialState

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        self.dimensions, self.fixed = parse_search_space(self.cfg.params, arguments)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        fixed = [*self.fixed, *self.cfg.trial_overrides]
        study = self._study(_signature(self.dimensions, fixed))
        already = self.finished(study)
        if already:
            log.info(f"study {self.cfg.study_name!r}: {already} trial(s) already finished")
        returns: list[Sequence[JobReturn]] = []
        while (left := self.cfg.n_trials - self.finished(study)) > 0:
            trials = self._ask(study, min(self.cfg.n_jobs, left))
            batch = [self._overrides(t) for t in trials]
            try:
                for overrides in batch:  # composition errors before any job starts
                    self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:
                for trial in trials:
                    trial.set_user_attr("error", f"the config does not compose: {err}")
                    study.tell(trial, state=TrialState.FAIL)
                raise
            # trial k is Hydra job k (its run dir); asked trials are numbered consecutively
            # except where a re-queued trial comes first, so launch runs of consecutive ones
            start = 0
            while start < len(trials):
                end = start + 1
                while end < len(trials) and trials[end].number == trials[end - 1].number + 1:
                    end += 1
                results = self.launcher.launch(
                    batch[start:end], initial_job_idx=trials[start].number
                )
                for trial, ret in zip(trials[start:end], results, strict=True):
                    self._tell(study, trial, ret)
                returns.append(results)
                start = end
        self._write_results(study, sweep_dir)
        return returns

    def _write_results(self, study: optuna.Study, sweep_dir: Path) -> None:
        from omegaconf import OmegaConf
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts: dict[str, int] = {}
        for t in trials:
            failed = t.state == TrialState.FAIL
            state = (
                "interrupted" if failed and "error" not in t.user_attrs else t.state.name.lower()
            )
            counts[state] = counts.get(state, 0) + 1
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if not complete:
            errors = [t.user_attrs["error"] for t in trials if "error" in t.user_attrs]
            raise SearchError(
                f"no trial of study {self.cfg.study_name!r} completed ({len(errors)} failed"
                + (f"; the first: {errors[0]})" if errors else ")")
            )
        best = study.best_trial
        params = {
            k: (self.dimensions[k].value(v) if k in self.dimensions else v)
            for k, v in best.params.items()
        }
        overrides = [
            self.dimensions[k].override(v) for k, v in best.params.items() if k in self.dimensions
        ]
        results = {
            "name": "lrrl_optuna",
            "study_name": self.cfg.study_name,
            "storage": self.cfg.storage,
            "direction": self.cfg.direction,
            "best_trial": best.number,
            "best_value": best.value,
            "best_params": params,
            "best_overrides": overrides,
            "best_run_dir": best.user_attrs.get("run_dir"),
            "fixed_overrides": [*self.fixed, *self.cfg.trial_overrides],
            "trials": counts,
        }
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
        log.info(f"best trial {best.number}: {best.value:.6g} with {' '.join(overrides)}")
        log.info(f"results in {sweep_dir / RESULTS_FILE}")
