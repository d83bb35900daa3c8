"""A sweep's ``search:`` block: Ray Tune samples trial settings (Optuna's TPE or random search), optionally
stopping poor trainers early with ASHA, towards one or two objectives under constraints.

A sweep file with ``search:`` instead of ``groups:``::

    search:
      name: robust                 # the searched trials' group (MLflow tag `group`; default: search)
      algorithm: optuna            # optuna (TPE, ray.tune.search.optuna.OptunaSearch) or random
      num_samples: 24              # trials sampled in all, across launch and resume
      seed: 0                      # the trials' own seed (weights, data order, attacks)
      searcher_seed: 0             # the sampler's seed
      set: {epochs: 6}             # settings of every searched trial (over base)
      space:                       # setting -> one domain
        lr: {loguniform: [0.001, 0.3]}
        momentum: {uniform: [0.0, 0.95]}
        batch_size: {choice: [32, 64, 128, 256]}
        epochs: {int: [2, 6]}
        variant: {choice: [sgd, sam]}
      objective:                   # one metric (best trial), or two (a Pareto front)
        - {metric: pgd_ratio_eps0.03, mode: max}
      constraints: ["clean_acc >= 0.98"]   # Optuna's own constraint support (feasible when all hold)
      scheduler: {asha: {grace_period: 1, reduction_factor: 2}}  # or `asha`; on the per-epoch test_acc
      resources: {cpu: 1}          # optional, over the sweep's

Every sampled trial is a normal trial: ``base`` + ``set`` + the sample + ``seed``, validated like a grid's
trial, with its id hashed from its settings (:func:`robustsweep.sweep._trial_id`), one MLflow run, checkpoints
and retries. The trials are known only once sampled: their MLflow runs (tag ``group`` = the search's name) are
the record of them, and ``num_samples`` is the budget that status and audit count against. A trial that ASHA
stops ends its run FINISHED with tag ``outcome = pruned``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .config import FIELDS, coerce, coerce_each, is_setting, make_trial_config
from .errors import ConfigError

if TYPE_CHECKING:
    from .sweep import Trial

SEARCH_KEYS = {"name", "description", "algorithm", "num_samples", "seed", "searcher_seed", "set", "space",
               "objective", "constraints", "scheduler", "resources"}
ALGORITHMS = ("optuna", "random")
DOMAINS = ("loguniform", "uniform", "int", "choice")
MODES = ("max", "min")
#: Settings a search may not sample: set by the sweep (seed, the store) or places, not science.
_NOT_SEARCHED = {"seed", "mlflow_tracking_uri", "mlflow_experiment", "data_root", "download", "verify_checksums",
                 "device"}
#: The per-epoch metric ASHA compares trials on (each epoch's report carries it; see ray_backend).
ASHA_METRIC = "test_acc"
#: The key of an epoch's report to Tune that says how many epochs the trial trains in all.
PLANNED_EPOCHS = "epochs_planned"
#: Outcome tag of a trial ASHA stopped: its run is FINISHED, with only its learning curves.
PRUNED = "pruned"
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # max or min


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``, op ``>=`` or ``<=``; Optuna's convention: a value <= 0 is feasible."""

    metric: str
    op: str
    bound: float

    def violation(self, value: float) -> float:
        return self.bound - value if self.op == ">=" else value - self.bound

    def holds(self, value: float | None) -> bool:
        return value is not None and not math.isnan(value) and self.violation(value) <= 0

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Asha:
    """ASHA (ray.tune.schedulers.ASHAScheduler) on the per-epoch ``test_acc``, time in epochs."""

    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class Search:
    """A validated ``search:`` block, with the settings every sampled trial starts from (``template``)."""

    group: str
    algorithm: str
    num_samples: int
    space: dict[str, tuple[str, tuple[Any, ...]]]
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    scheduler: Asha | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    searcher_seed: int = 0
    description: str = ""
    #: base + set + forced + seed + store: a trial's values before its sample (filled by load_sweep).
    template: dict[str, Any] = field(default_factory=dict)
    #: per-trial resources (sweep.Resources; filled by load_sweep)
    resources: Any = None

    # ---- trials ---------------------------------------------------------
    def lowest_sample(self) -> dict[str, Any]:
        """Each domain's first end (a choice's first value): a sample the load-time checks made a valid trial."""
        return {k: args[0] for k, (kind, args) in self.space.items()}

    def probe_trial(self) -> "Trial":
        """The trial of :meth:`lowest_sample`: what the search's trials need (data, resources), before any is drawn."""
        return self.trial(self.lowest_sample())

    def trial(self, sample: Mapping[str, Any]) -> "Trial":
        """The trial of one sample: its settings validated, its id from them (as a grid trial's)."""
        from .sweep import Trial, _science, _trial_id

        values = {**self.template}
        for key, value in sample.items():
            values[key] = coerce(key, value)
        config = make_trial_config(values, validate=False).resolved()
        return Trial(_trial_id(self.group, _science(config)), self.group, self.resources, config)

    def max_epochs(self) -> int:
        """The most epochs a sampled trial trains (ASHA's max_t)."""
        if "epochs" in self.space:
            kind, args = self.space["epochs"]
            return int(max(args))
        return int(make_trial_config(self.template, validate=False).resolved().epochs)

    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    def describe(self) -> dict[str, Any]:
        """The search as plain data: the space, objectives, constraints, algorithm, scheduler and budget."""
        return {"group": self.group, "algorithm": self.algorithm, "num_samples": self.num_samples,
                "space": {k: {kind: list(args)} for k, (kind, args) in self.space.items()},
                "objective": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
                "constraints": [str(c) for c in self.constraints],
                "scheduler": dataclasses.asdict(self.scheduler) | {"name": "asha", "metric": ASHA_METRIC}
                if self.scheduler else None,
                "seed": self.seed, "searcher_seed": self.searcher_seed}

    # ---- saved sweep ----------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "algorithm": self.algorithm, "num_samples": self.num_samples,
                "space": {k: [kind, list(args)] for k, (kind, args) in self.space.items()},
                "objectives": [[o.metric, o.mode] for o in self.objectives],
                "constraints": [[c.metric, c.op, c.bound] for c in self.constraints],
                "scheduler": dataclasses.asdict(self.scheduler) if self.scheduler else None,
                "settings": self.settings, "seed": self.seed, "searcher_seed": self.searcher_seed,
                "description": self.description, "template": self.template,
                "resources": dataclasses.asdict(self.resources) if self.resources is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Search":
        from .sweep import Resources

        return cls(data["group"], data["algorithm"], int(data["num_samples"]),
                   {k: (kind, tuple(args)) for k, (kind, args) in data["space"].items()},
                   tuple(Objective(m, mode) for m, mode in data["objectives"]),
                   tuple(Constraint(m, op, float(b)) for m, op, b in data["constraints"]),
                   Asha(**data["scheduler"]) if data.get("scheduler") else None, dict(data.get("settings", {})),
                   int(data.get("seed", 0)), int(data.get("searcher_seed", 0)), data.get("description", ""),
                   dict(data["template"]), Resources(**data["resources"]) if data.get("resources") else None)

    # ---- Ray Tune -------------------------------------------------------
    def tune_space(self) -> dict[str, Any]:
        """The space as Ray Tune domains (the Tuner's ``param_space["sample"]``)."""
        from ray import tune

        out = {}
        for key, (kind, args) in self.space.items():
            if kind == "loguniform":
                out[key] = tune.loguniform(*args)
            elif kind == "uniform":
                out[key] = tune.uniform(*args)
            elif kind == "int":
                out[key] = tune.randint(args[0], args[1] + 1)  # both bounds included, as the file reads
            else:
                out[key] = tune.choice(list(args))
        return out


# ---------------------------------------------------------------------------------------------
# validation of the block


def parse_search(raw: Any, where, resources) -> Search:
    """The ``search:`` mapping of a sweep file, validated (``where``: sweep._Where, for the messages)."""
    data = where.mapping(raw, "search", SEARCH_KEYS)
    if not data:
        raise where.error("search", "expected a mapping with at least space, objective and num_samples.")
    group = where.safe_name(data.get("name", "search"), "search.name", "search")
    algorithm = data.get("algorithm", "optuna")
    if algorithm not in ALGORITHMS:
        raise where.error("search.algorithm", f"expected one of {', '.join(ALGORITHMS)} (optuna: TPE through "
                                              f"Ray Tune's OptunaSearch; random: random search), got {algorithm!r}.")
    if "num_samples" not in data:
        raise where.error("search.num_samples", "missing: give how many trials the search samples in all.")
    num_samples = where.integer(data["num_samples"], "search.num_samples", 1)
    seed = where.integer(data.get("seed", 0), "search.seed", 0)
    searcher_seed = where.integer(data.get("searcher_seed", 0), "search.searcher_seed", 0)
    settings = where.settings(data.get("set"), "search.set")
    space = _space(data.get("space"), where, settings)
    objectives = _objectives(data.get("objective"), where)
    constraints = _constraints(data.get("constraints", []), where)
    scheduler = _scheduler(data.get("scheduler"), where)
    for key in list(settings):
        if key in ("seed", "mlflow_tracking_uri", "mlflow_experiment"):
            raise where.error(f"search.set.{key}", f"{key} is set by the sweep (search.seed, mlflow), not per trial.")
    # the template is filled by load_sweep, which knows the store and the command line's --set
    return Search(group, algorithm, num_samples, space, objectives, constraints, scheduler, settings, seed,
                  searcher_seed, str(data.get("description", "")),
                  resources=where.resources(data.get("resources"), "search.resources", resources))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _space(raw: Any, where, settings: Mapping[str, Any]) -> dict[str, tuple[str, tuple[Any, ...]]]:
    if not isinstance(raw, dict) or not raw:
        raise where.error("search.space", "expected a mapping of settings to domains, e.g. "
                                          "{lr: {loguniform: [0.001, 0.3]}, batch_size: {choice: [32, 64]}}.")
    out = {}
    for key, domain in raw.items():
        path = f"search.space.{key}"
        if not is_setting(key):
            where.setting_keys({key: None}, "search.space")  # the unknown-key error, with the allowed keys
        if key in _NOT_SEARCHED:
            raise where.error(path, f"{key} cannot be searched: it is set by the sweep or says where things are, "
                                    "not what is trained.")
        if key in settings:
            raise where.error(path, f"{key} is both searched and fixed in search.set: keep one.")
        if not isinstance(domain, dict) or len(domain) != 1 or next(iter(domain)) not in DOMAINS:
            raise where.error(path, f"expected one domain, {{loguniform: [low, high]}}, {{uniform: [low, high]}}, "
                                    f"{{int: [low, high]}} or {{choice: [v1, v2, ...]}}, got {domain!r}.")
        kind, args = next(iter(domain.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise where.error(f"{path}.choice", f"expected a non-empty list of values, got {args!r}.")
            values = coerce_each(key, args, where, f"{path}.choice")
            if len({repr(v) for v in values}) != len(values):
                raise where.error(f"{path}.choice", f"the choice repeats a value: {args}.")
            out[key] = ("choice", tuple(values))
            continue
        if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
            raise where.error(f"{path}.{kind}", f"expected [low, high], two numbers, got {args!r}.")
        low, high = args
        if not low < high:
            raise where.error(f"{path}.{kind}", f"low must be below high, got [{low}, {high}].")
        if kind == "loguniform" and low <= 0:
            raise where.error(f"{path}.loguniform", f"a log-uniform range needs low > 0, got {low}.")
        if kind == "int" and not all(isinstance(a, int) for a in args):
            raise where.error(f"{path}.int", f"expected two integers, got {args!r}.")
        if kind != "int" and FIELDS.get(key) is not None and "int" in str(FIELDS[key].type) \
                and "float" not in str(FIELDS[key].type):
            raise where.error(f"{path}.{kind}", f"{key} is an integer setting: use {{int: [low, high]}} or a "
                                                "choice.")
        for bound in (low, high):  # the setting's own type and range check, at both ends
            try:
                coerce(key, bound if kind == "int" else float(bound))
            except ConfigError as exc:
                raise where.error(f"{path}.{kind}", str(exc)) from None
        out[key] = (kind, (low, high) if kind == "int" else (float(low), float(high)))
    return out


def _objectives(raw: Any, where) -> tuple[Objective, ...]:
    items = [raw] if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not 1 <= len(items) <= 2:
        raise where.error("search.objective", "expected one objective or a list of two (a Pareto search), each "
                                              f"{{metric: KEY, mode: max|min}}, got {raw!r}.")
    out = []
    for i, item in enumerate(items):
        path = f"search.objective[{i}]"
        item = where.mapping(item, path, {"metric", "mode"})
        metric, mode = item.get("metric"), item.get("mode")
        if not isinstance(metric, str) or not metric:
            raise where.error(f"{path}.metric", f"expected a metric key a trial logs (e.g. pgd_ratio_eps0.03), "
                                                f"got {metric!r}.")
        if mode not in MODES:
            raise where.error(f"{path}.mode", f"expected max or min, got {mode!r}.")
        out.append(Objective(metric, mode))
    if len(out) == 2 and out[0].metric == out[1].metric:
        raise where.error("search.objective", f"the two objectives are the same metric {out[0].metric!r}.")
    return tuple(out)


def _constraints(raw: Any, where) -> tuple[Constraint, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise where.error("search.constraints", f"expected a list such as [\"clean_acc >= 0.98\"], got {raw!r}.")
    out = []
    for i, text in enumerate(raw):
        match = _CONSTRAINT.match(text) if isinstance(text, str) else None
        if match is None:
            raise where.error(f"search.constraints[{i}]", f"expected 'METRIC >= NUMBER' or 'METRIC <= NUMBER' "
                                                          f"(e.g. 'clean_acc >= 0.98'), got {text!r}.")
        out.append(Constraint(match.group(1), match.group(2), float(match.group(3))))
    return tuple(out)


def _scheduler(raw: Any, where) -> Asha | None:
    if raw is None:
        return None
    if raw == "asha":
        return Asha()
    data = where.mapping(raw, "search.scheduler", {"asha"})
    if not data:
        return None
    options = where.mapping(data["asha"], "search.scheduler.asha", {"grace_period", "reduction_factor"})
    grace = where.integer(options.get("grace_period", 1), "search.scheduler.asha.grace_period", 1)
    factor = where.integer(options.get("reduction_factor", 2), "search.scheduler.asha.reduction_factor", 2)
    return Asha(grace, factor)


def check_search(search: Search, where) -> None:
    """What needs the template: every domain's ends (and each choice) make a valid trial, and the objectives
    and constraints are metrics such a trial logs."""
    from .metrics import trial_metric_keys

    low = search.lowest_sample()
    probes = [low, {k: args[-1] for k, (kind, args) in search.space.items()}]
    probes += [{**low, k: v} for k, (kind, args) in search.space.items() if kind == "choice" for v in args[1:]]
    logged: set[str] = set()
    for probe in probes:
        try:
            trial = search.trial(probe)
        except ConfigError as exc:
            described = ", ".join(f"{k}={v}" for k, v in probe.items())
            raise where.error("search.space", f"the sample {described} is not a valid trial: {exc}") from None
        logged |= set(trial_metric_keys(trial.config))
    for path, metric in [*((f"search.objective[{i}].metric", o.metric) for i, o in enumerate(search.objectives)),
                         *((f"search.constraints[{i}]", c.metric) for i, c in enumerate(search.constraints))]:
        if metric not in logged:
            raise where.error(path, f"{metric!r} is not a metric these trials log; they log "
                                    f"{', '.join(sorted(logged))} (attack metrics need the attack in `attacks` and "
                                    "the radius in `eps`).")
    if search.scheduler is not None and search.scheduler.grace_period >= search.max_epochs():
        raise where.error("search.scheduler.asha.grace_period",
                          f"{search.scheduler.grace_period} epochs is not below the trials' {search.max_epochs()} "
                          "epochs: ASHA could never stop a trial. Lower it, or drop the scheduler.")


# ---------------------------------------------------------------------------------------------
# results: best trial, Pareto front


def non_dominated(points: list[tuple[float, ...]], modes: tuple[str, ...] | list[str]) -> list[bool]:
    """For each point (one value per objective), whether no other point dominates it: at least as good in
    every objective (``modes``: max or min each) and strictly better in one. NaN points are never on the front."""
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    scored = [None if any(v is None or math.isnan(v) for v in p) else [s * v for s, v in zip(sign, p)]
              for p in points]
    out = []
    for i, p in enumerate(scored):
        if p is None:
            out.append(False)
            continue
        dominated = any(q is not None and j != i and all(a >= b for a, b in zip(q, p))
                        and any(a > b for a, b in zip(q, p)) for j, q in enumerate(scored))
        out.append(not dominated)
    return out


def feasible(row: Mapping[str, Any], constraints: tuple[Constraint, ...] | list[Constraint]) -> bool:
    def value(key: str) -> float | None:
        v = row.get(key)
        return None if v is None else float(v)

    return all(c.holds(value(c.metric)) for c in constraints)


def best_trials(rows: list[Mapping[str, Any]], search: Search) -> list[Mapping[str, Any]]:
    """Single objective: the best feasible trial (a list of one, or none). Two objectives: the feasible
    non-dominated trials, best first in the first objective. Rows are dicts of metrics (a trial's run);
    pruned, diverged and collapsed trials take no part."""
    usable = [r for r in rows if r.get("outcome", "finished") == "finished" and feasible(r, search.constraints)
              and all(r.get(m) is not None and not math.isnan(float(r[m])) for m in search.metrics())]
    first = search.objectives[0]
    usable.sort(key=lambda r: float(r[first.metric]), reverse=first.mode == "max")
    if len(search.objectives) == 1:
        return usable[:1]
    front = non_dominated([tuple(float(r[m]) for m in search.metrics()) for r in usable],
                          [o.mode for o in search.objectives])
    return [r for r, keep in zip(usable, front) if keep]


def search_summary(search: Search, runs: dict[str, list[Any]]) -> dict[str, Any]:
    """The hook for the sweep's parent MLflow run (issue 22, part 5): the search space as data and the best
    trial(s) so far, from the sweep's runs (runs.trial_runs). Plain JSON-able values only."""
    from .runs import trial_state

    rows = []
    counts: dict[str, int] = {}
    for trial_id, mine in runs.items():
        state, run = trial_state(mine)
        if run is None or run.data.tags.get("group") != search.group:
            continue
        outcome = run.data.tags.get("outcome", "finished") if state == "finished" else state
        counts[outcome] = counts.get(outcome, 0) + 1
        if state == "finished":
            rows.append({"trial_id": trial_id, "run_id": run.info.run_id, "outcome": outcome,
                         **{k: run.data.params.get(k) for k in search.space}, **run.data.metrics})
    best = best_trials(rows, search)
    keep = search.metrics() + [c.metric for c in search.constraints]
    return {"search": search.describe(), "trials": counts,
            "best": [{"trial_id": r["trial_id"], "run_id": r["run_id"],
                      "settings": {k: r.get(k) for k in search.space},
                      "metrics": {k: r.get(k) for k in keep}} for r in best]}


def searched_ids(runs: dict[str, list[Any]], group: str) -> list[str]:
    """The ids of the searched trials that have an MLflow run (tag ``group``): the trials sampled so far."""
    return sorted(t for t, mine in runs.items() if t and any(r.data.tags.get("group") == group for r in mine))


# ---------------------------------------------------------------------------------------------
# the searcher and scheduler


def sample_of(params: Mapping[str, str], search: Search) -> dict[str, Any]:
    """A finished run's sample (its MLflow params for the space's keys), typed."""
    from .config import yaml_load

    return {k: coerce(k, yaml_load(params[k])) for k in search.space if k in params}


def make_searcher(search: Search, max_concurrent: int, points: list[dict[str, Any]] = (),
                  told: list[tuple[dict[str, Any], dict[str, float], str]] = ()):
    """Ray Tune's search algorithm for the block. ``points``: samples to run first (trials a lost Ray state
    left unfinished: they continue into their own runs). ``told``: (sample, metrics, outcome) of trials that
    finished before this searcher existed, given to Optuna as completed trials."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # A searcher over trials that already ran draws a sequence of its own: with the search's seed it would draw the
    # first searcher's samples again, trials that already have runs (each one spent a sample, none ran).
    seed = search.searcher_seed + 7919 * (len(told) + len(points))
    if search.algorithm == "random":
        return BasicVariantGenerator(points_to_evaluate=[{"sample": dict(p)} for p in points] or None,
                                     max_concurrent=max_concurrent, random_state=seed)
    import optuna

    from .optuna_search import ConstrainedOptunaSearch

    single = len(search.objectives) == 1
    searcher = ConstrainedOptunaSearch(
        # Optuna's distributions, named by the flattened path (sample/lr) Tune's suggestion unflattens
        space=ConstrainedOptunaSearch.convert_search_space({"sample": search.tune_space()}),
        metric=search.metrics()[0] if single else search.metrics(),
        mode=search.objectives[0].mode if single else [o.mode for o in search.objectives],
        # Optuna names the parameters by their flattened path (sample/lr)
        points_to_evaluate=[{f"sample/{k}": v for k, v in p.items()} for p in points] or None,
        sampler=optuna.samplers.TPESampler(seed=seed))
    searcher.constraints = list(search.constraints)
    for sample, metrics, outcome in told:
        searcher.tell_finished(sample, metrics, outcome)
    return ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher


def make_scheduler(search: Search):
    """ASHA on the per-epoch test accuracy (tune_extensions.FinishingASHA: never at a trial's last epoch), or None."""
    if search.scheduler is None:
        return None
    from .tune_extensions import FinishingASHA

    # time in epochs (each epoch's report carries `epoch`; the final report repeats the last one)
    return FinishingASHA(time_attr="epoch", metric=ASHA_METRIC, mode="max", max_t=search.max_epochs(),
                         grace_period=search.scheduler.grace_period,
                         reduction_factor=search.scheduler.reduction_factor, stop_last_trials=False)
