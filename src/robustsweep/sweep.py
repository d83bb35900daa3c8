"""Sweep files: a readable schema, validated at load, expanded to one TrialConfig per trial.

A sweep file (``sweeps/*.yaml``)::

    name: table1                   # sweep name: Ray experiment folder, MLflow experiment (default)
    description: free text
    storage_path: ray_results      # Ray checkpoints and experiment state (S3/GCS/NFS on a cluster)
    mlflow:
      tracking_uri: sqlite:///mlflow.db
      experiment: table1           # default: the sweep name
    resources: {cpu: 1, gpu: 0.25} # per trial; a fractional GPU lets several trials share one
    max_concurrent: 8              # trials running at once (0 = as many as resources allow)
    max_failures: 2                # retries of a failed trial, from its latest checkpoint
    seeds: [0]                     # every trial runs once per seed
    base: {dataset: mnist, ...}    # trial settings shared by every group
    groups:                        # regimes; each one expands its grid
      - name: constant-lr
        set: {schedule: constant}  # settings for this group (override base)
        grid:                      # axes: setting -> list of values; the product is taken
          batch_size: [32, 64]
          variant: [sgd, svrg]
        points:                    # optional explicit settings, each one crossed with the grid
          - {momentum: 0.9}
          - {weight_decay: 0.005}
        resources: {gpu: 0.5}      # optional, overrides the sweep's per-trial resources
                                   # (gpu: auto = a quarter of a GPU where the cluster has GPUs, else none)
        seeds: [0, 1, 2]           # optional, overrides the sweep's seeds for this group

Instead of ``groups``, a ``search:`` block (schema in :mod:`robustsweep.search`) asks Ray Tune to sample
trials (Optuna's TPE or random search, ASHA optionally) towards one or two objectives under constraints.

A trial = base + set + one point (if any) + one grid point + one seed. Unknown keys, wrong types,
impossible values, empty grid axes and duplicate trials are rejected with a
:class:`~robustsweep.errors.ConfigError` naming the file, the key path, the
bad value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .config import (FIELDS, TrialConfig, check_keys, coerce, coerce_each, default_data_root, is_setting,
                     make_trial_config, parse_overrides, read_yaml_mapping, yaml_load)
from .plugin_settings import defaults_for
from .errors import ConfigError
from .preflight import MAX_TRIALS, check_trial_count, resolve_folder
from .tracking import normalize_tracking_uri

if TYPE_CHECKING:  # robustsweep.search imports this module
    from .search import Search

_TOP_KEYS = {"name", "description", "storage_path", "mlflow", "resources", "max_concurrent", "max_failures",
             "seeds", "base", "groups", "search"}
_GROUP_KEYS = {"name", "description", "set", "grid", "points", "resources", "seeds"}
#: Settings that say where things are, not what is trained: left out of trial ids.
_LOCATION_KEYS = {"data_root", "download", "verify_checksums", "device", "mlflow_tracking_uri", "mlflow_experiment"}
_RESOURCE_KEYS = {"cpu", "gpu"}
#: Sweep and group names: one path component (no '/', no '..'), safe in MLflow filter strings.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MLFLOW_KEYS = {"tracking_uri", "experiment"}


#: The GPU share of a trial whose sweep says ``gpu: auto`` when the cluster has GPUs (four M1 trials a GPU).
AUTO_GPU_SHARE = 0.25


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0
    #: ``gpu: auto`` in the sweep file: ``gpu`` where the Ray cluster has GPUs, none where it has none.
    gpu_auto: bool = False

    def as_dict(self) -> dict[str, float]:
        return {"CPU": self.cpu, "GPU": self.gpu}

    def for_cluster(self, has_gpus: bool) -> "Resources":
        """``gpu: auto`` settled: the share where there are GPUs, 0 (and the CPU) where there are none."""
        if not self.gpu_auto:
            return self
        return Resources(self.cpu, self.gpu if has_gpus else 0.0)


@dataclass(frozen=True)
class Trial:
    """One expanded trial: its id, group, resources and fully resolved settings."""

    trial_id: str
    group: str
    resources: Resources
    config: TrialConfig

    @property
    def run_name(self) -> str:
        """The MLflow run's name: what the trial is, e.g. ``sgd lr=0.01 bs=128 seed=0`` (the id stays in its
        ``trial_id`` tag). The dataset leads when it is not MNIST; momentum, weight decay, the step schedule
        and a training-accuracy stop appear when set."""
        c = self.config
        parts = [] if c.dataset == "mnist" else [c.dataset]
        parts.append(c.variant)
        parts.append(f"lr/bs={c.lr_batch_ratio:.3g}" if c.lr_batch_ratio is not None else f"lr={c.lr:g}")
        parts.append(f"bs={c.batch_size}")
        parts += [f"{name}={value:g}" for name, value in (("momentum", c.momentum), ("wd", c.weight_decay)) if value]
        if c.schedule != "constant":
            parts.append(c.schedule)
        if c.stop_train_acc is not None:
            parts.append(f"until train acc {c.stop_train_acc:g}")
        parts.append(f"seed={c.seed}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "group": self.group, "resources": dataclasses.asdict(self.resources),
                "settings": self.config.to_dict()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], made: "SeedlessMemo | None" = None) -> "Trial":
        """A saved trial (``to_json``); ``made``: a memo shared by the trials of one sweep (its seeds)."""
        config, _ = (made or SeedlessMemo()).made(data["settings"])
        return cls(data["trial_id"], data["group"], Resources(**data["resources"]), config)


@dataclass(frozen=True)
class Group:
    name: str
    settings: dict[str, Any]
    grid: dict[str, list[Any]]
    resources: Resources
    description: str = ""
    points: tuple[dict[str, Any], ...] = ({},)
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class SweepOverrides:
    """What the command line changes in a sweep file (the flags of ``launch`` and ``validate``).

    ``local``: storage under ./ray_results and SQLite MLflow in ./mlflow.db, and the file's
    ``base.data_root`` dropped (so ``--set data_root=`` or ROBUSTSWEEP_DATA_ROOT decide). ``settings``:
    ``key=value`` forced on every trial (not on a grid axis or a point's key: that would merge trials).
    ``only``: group-name globs. ``seeds``: for every group. ``cpu``/``gpu``: per-trial resources.
    ``name``: the sweep's name; without it, flags that change the trials (settings, only, seeds) derive
    one from the file's name and a digest of those flags, so two different sweeps never share a name
    and storage.
    """

    local: bool = False
    settings: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    seeds: tuple[int, ...] | None = None
    cpu: float | None = None
    gpu: float | None = None
    name: str | None = None
    #: ``key=v1,v2``: keep only these values of a grid axis (the same trials, with the same ids, as in the full sweep).
    grid: tuple[str, ...] = ()

    def flags(self) -> str:
        parts = ["--local"] if self.local else []
        parts += [f"--set {s}" for s in self.settings] + [f"--only {g}" for g in self.only]
        parts += [f"--grid {g}" for g in self.grid]
        if self.seeds is not None:
            parts.append("--seeds " + ",".join(map(str, self.seeds)))
        parts += [f"--{k} {v:g}" for k, v in (("cpu", self.cpu), ("gpu", self.gpu)) if v is not None]
        return " ".join(parts + ([f"--name {self.name}"] if self.name else []))

    def trial_flags(self) -> str:
        """The flags that change which trials exist or what they train (resources and places do not)."""
        parts = [f"--set {s}" for s in sorted(self.settings)] + [f"--only {g}" for g in sorted(self.only)]
        parts += [f"--grid {g}" for g in sorted(self.grid)]
        return " ".join(parts + ([f"--seeds {sorted(self.seeds)}"] if self.seeds is not None else []))


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    name: str
    source: str
    storage_path: str
    tracking_uri: str
    experiment: str
    resources: Resources
    max_concurrent: int
    max_failures: int
    seeds: tuple[int, ...]
    base: dict[str, Any]
    groups: tuple[Group, ...]
    description: str = ""
    trials: tuple[Trial, ...] = field(default=(), compare=False)
    #: Settings the command line forces on every trial (``--set``), over the file's.
    forced: dict[str, Any] = field(default_factory=dict)
    #: The command-line flags that changed the file's sweep ("" when none), recorded on every run.
    flags: str = ""
    #: What the command line's flags did that the user should hear of (printed by validate and launch).
    notes: tuple[str, ...] = ()
    #: The ``search:`` block (robustsweep.search): trials Ray Tune samples, known only once sampled.
    search: "Search | None" = None

    @property
    def experiment_dir(self) -> str:
        """Ray Tune's experiment folder for this sweep (storage_path/name)."""
        return self.storage_path.rstrip("/") + "/" + self.name

    def warnings(self) -> list[str]:
        """What the sweep asks for that runs, but likely not as meant: a batch larger than the training set."""
        from . import datasets

        out = {}
        for trial in self.trials:
            c = trial.config
            size = datasets.get(c.dataset).train_size
            if size is None:
                continue
            size = min(size, c.subset) if c.subset else size
            if c.batch_size > size:
                out.setdefault((trial.group, c.batch_size, size), (
                    f"group {trial.group}: batch_size {c.batch_size} is larger than its training set ({size} "
                    f"examples{', subset' if c.subset else ''}): every epoch is one full-batch step of {size}, "
                    f"not batches of {c.batch_size}. Lower batch_size or raise subset, unless full batch is meant."))
        return list(out.values())

    def summary(self) -> list[tuple[str, int, str]]:
        """(group, number of trials, axes) per group."""
        rows = []
        for g in self.groups:
            count = sum(1 for t in self.trials if t.group == g.name)
            axes = [f"points[{len(g.points)}]"] if len(g.points) > 1 else []
            axes = " x ".join(axes + [f"{k}[{len(v)}]" for k, v in g.grid.items()]) or "single point"
            if len(g.seeds) > 1:
                axes += f" x seed[{len(g.seeds)}]"
            rows.append((g.name, count, axes))
        if self.search is not None:
            s = self.search
            goal = ", ".join(f"{o.mode} {o.metric}" for o in s.objectives)
            rows.append((s.group, s.num_samples, f"search ({s.algorithm}{', asha' if s.scheduler else ''}) over "
                         f"{', '.join(s.space)}: {goal}"
                         + (f" with {', '.join(map(str, s.constraints))}" if s.constraints else "")))
        return rows


class _Where:
    """Builds error messages naming the file and key path."""

    def __init__(self, source: str):
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"Sweep file {self.source}, at {path}: {message}")

    def mapping(self, value: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(path, f"expected a mapping, got {type(value).__name__} {value!r}.")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.error(f"{path}.{unknown[0]}" if path else unknown[0],
                             f"unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}.")
        return value

    def safe_name(self, value: Any, path: str, what: str) -> str:
        """A name that is one safe path component and needs no quoting in an MLflow filter."""
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
            raise self.error(path, f"expected a {what} name of letters, digits, '.', '_' and '-' that starts "
                                   f"with a letter or digit (it names folders and MLflow tags), got {value!r}.")
        return value

    def integer(self, value: Any, path: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(path, f"expected an integer >= {minimum}, got {value!r}.")
        return value

    def resources(self, value: Any, path: str, default: Resources) -> Resources:
        data = self.mapping(value, path, _RESOURCE_KEYS)
        out = {}
        if data.get("gpu") == "auto":
            data = {**data, "gpu": AUTO_GPU_SHARE}
            out["gpu_auto"] = True
        elif "gpu" not in data and default.gpu_auto:
            out["gpu_auto"] = True
        for key in ("cpu", "gpu"):
            v = data.get(key, getattr(default, key))
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise self.error(f"{path}.{key}", f"expected a number >= 0{' or auto' if key == 'gpu' else ''}, "
                                                  f"got {v!r}.")
            out[key] = float(v)
        if out["gpu"] > 1 and out["gpu"] != int(out["gpu"]):
            raise self.error(f"{path}.gpu", f"a trial takes a fraction of one GPU or whole GPUs, not {out['gpu']}.")
        if out["cpu"] == 0 and out["gpu"] == 0:
            raise self.error(path, "a trial needs some CPU or GPU (cpu > 0 or gpu > 0).")
        return Resources(**out)

    def seeds(self, value: Any, path: str) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(path, f"expected a non-empty list of integers, got {value!r}.")
        for i, s in enumerate(value):
            self.integer(s, f"{path}[{i}]", 0)
        if len(set(value)) != len(value):
            raise self.error(path, f"seeds repeat: {value}.")
        return tuple(value)

    def setting_keys(self, value: Any, path: str) -> dict[str, Any]:
        """A mapping whose keys are trial settings, built-in or a plugin's."""
        if isinstance(value, dict):
            unknown = [k for k in value if not is_setting(k)]
            if unknown:
                self.mapping({unknown[0]: None}, path, set(FIELDS))  # the unknown-key error, with allowed keys
        elif value is not None:
            self.mapping(value, path, set())
        return value or {}

    def settings(self, value: Any, path: str) -> dict[str, Any]:
        data = self.setting_keys(value, path)
        out = {}
        for key, v in data.items():
            try:
                out[key] = coerce(key, v)
            except ConfigError as exc:
                raise self.error(f"{path}.{key}", str(exc)) from None
        return out


def _absolute_paths(settings: dict[str, Any], base_dir: Path,
                    memo: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """Ray runs trials in their own folders: make relative data roots and SQLite stores absolute. ``memo``: the
    paths already made absolute in this expansion (each costs a walk of the filesystem; a sweep of 10,000 trials
    has one or two)."""
    memo = {} if memo is None else memo
    out = dict(settings)
    root = out.get("data_root")
    if root is not None and "://" not in root:
        if ("data_root", root) not in memo:
            absolute = Path(root).expanduser().is_absolute()
            memo["data_root", root] = root if absolute else str((base_dir / root).resolve())
        out["data_root"] = memo["data_root", root]
    uri = out.get("mlflow_tracking_uri")
    if uri is not None:
        if ("mlflow_tracking_uri", uri) not in memo:
            memo["mlflow_tracking_uri", uri] = normalize_tracking_uri(uri, base_dir)
        out["mlflow_tracking_uri"] = memo["mlflow_tracking_uri", uri]
    return out


def _science(config: TrialConfig) -> dict[str, Any]:
    """The settings that identify a trial: those that differ from the defaults, locations left out.

    Leaving defaults out keeps trial ids (and so the match between a trial and its finished MLflow
    run, on which launch's skip and ``robustsweep import`` rely) stable when a new setting is
    added with a default that keeps the old behaviour.
    """
    defaults = {**_default_settings(), **defaults_for(config.variant, config.attacks + config.curvature)}
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return {k: v for k, v in config.to_dict().items()
            if k not in _LOCATION_KEYS and (k not in defaults or v != defaults[k])}


@functools.lru_cache(maxsize=1)
def _default_settings() -> dict[str, Any]:
    return TrialConfig().to_dict()


def _trial_id(group: str, settings: Mapping[str, Any]) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{group}-{digest}"


def load_sweep(path: str | Path, base_dir: str | Path | None = None, max_trials: int = MAX_TRIALS,
               overrides: SweepOverrides | None = None) -> SweepSpec:
    """Read, validate and expand a sweep file. Relative paths are taken from ``base_dir`` (default: cwd).

    ``overrides``: the command line's changes (:class:`SweepOverrides`), applied before expansion.
    A sweep of more than ``max_trials`` trials is refused before its grid is expanded.
    """
    source = str(path)
    where = _Where(source)
    try:
        raw = read_yaml_mapping(path)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("Config file", "Sweep file")) from None
    base_dir = Path(base_dir or Path.cwd())
    data = where.mapping(raw, "", _TOP_KEYS)
    name = where.safe_name(data.get("name"), "name", "sweep")
    storage = data.get("storage_path", "ray_results")
    if not isinstance(storage, str) or not storage:
        raise where.error("storage_path", f"expected a folder or s3://, gs:// URI, got {storage!r}.")
    if "://" not in storage:
        storage = resolve_folder(base_dir / storage)
    mlflow = where.mapping(data.get("mlflow"), "mlflow", _MLFLOW_KEYS)
    uri = mlflow.get("tracking_uri", "sqlite:///mlflow.db")
    experiment = mlflow.get("experiment", name)
    for key, value in (("tracking_uri", uri), ("experiment", experiment)):
        if not isinstance(value, str) or not value.strip():
            raise where.error(f"mlflow.{key}", f"expected a non-empty string, got {value!r}.")
    uri = normalize_tracking_uri(uri, base_dir)
    resources = where.resources(data.get("resources"), "resources", Resources())
    max_concurrent = where.integer(data.get("max_concurrent", 0), "max_concurrent", 0)
    max_failures = where.integer(data.get("max_failures", 2), "max_failures", 0)
    seeds = where.seeds(data.get("seeds", [0]), "seeds")
    base = where.settings(data.get("base"), "base")
    for key in ("seed", "mlflow_tracking_uri", "mlflow_experiment"):
        if key in base:
            raise where.error(f"base.{key}", f"{key} is set by the sweep (seeds, mlflow), not per trial.")
    groups_raw = data.get("groups")
    search = None
    if "search" in data:
        if "groups" in data:
            raise where.error("search", "a sweep file has groups (a grid) or a search, not both: one Ray experiment "
                                        "holds one searcher. Put the grid and the search in two sweep files (two "
                                        "names), or turn the grid's axes into the search's choices.")
        from .search import parse_search

        search = parse_search(data["search"], where, resources)
        groups_raw = []
    elif not isinstance(groups_raw, list) or not groups_raw:
        raise where.error("groups", "expected a non-empty list of groups (each with a name, and set and/or grid), "
                                    "or a search: block.")
    groups: list[Group] = []
    for gi, g in enumerate(groups_raw):
        gpath = f"groups[{gi}]"
        g = where.mapping(g, gpath, _GROUP_KEYS)
        gname = where.safe_name(g.get("name"), f"{gpath}.name", "group")
        if gname in {x.name for x in groups}:
            raise where.error(f"{gpath}.name", f"group name {gname!r} is used twice.")
        settings = where.settings(g.get("set"), f"{gpath}.set")
        grid_raw = where.setting_keys(g.get("grid"), f"{gpath}.grid")
        grid: dict[str, list[Any]] = {}
        for key, values in grid_raw.items():
            axis = f"{gpath}.grid.{key}"
            if not isinstance(values, list):
                raise where.error(axis, f"expected a list of values for this axis, got {values!r}.")
            if not values:
                raise where.error(axis, "the axis is empty: give at least one value (an empty axis means no trials).")
            checked = coerce_each(key, values, where, axis)
            if len({json.dumps(v, default=str) for v in checked}) != len(checked):
                raise where.error(axis, f"the axis repeats a value: {values}.")
            grid[key] = checked
        points_raw = g.get("points", [{}])
        if not isinstance(points_raw, list) or not points_raw:
            raise where.error(f"{gpath}.points", f"expected a non-empty list of settings mappings, got {points_raw!r}.")
        points = tuple(where.settings(p, f"{gpath}.points[{pi}]") for pi, p in enumerate(points_raw))
        for key in list(settings) + list(grid) + [k for p in points for k in p]:
            if key in ("seed", "mlflow_tracking_uri", "mlflow_experiment"):
                raise where.error(f"{gpath}.{key}", f"{key} is set by the sweep (seeds, mlflow), not per trial.")
        group_seeds = where.seeds(g["seeds"], f"{gpath}.seeds") if "seeds" in g else seeds
        groups.append(Group(gname, settings, grid, where.resources(g.get("resources"), f"{gpath}.resources",
                                                                   resources), g.get("description", ""), points,
                            group_seeds))
    spec = SweepSpec(name=name, source=source, storage_path=storage, tracking_uri=uri, experiment=experiment,
                     resources=resources, max_concurrent=max_concurrent, max_failures=max_failures,
                     seeds=seeds, base=base, groups=tuple(groups), description=data.get("description", ""),
                     search=search)
    if overrides is not None:
        spec = _override(spec, overrides, where, base_dir)
    try:
        check_trial_count(count_trials(spec), max_trials)
    except ConfigError as exc:
        raise where.error("search.num_samples" if spec.search else "groups", str(exc)) from None
    if spec.search is not None:
        spec = dataclasses.replace(spec, search=_search_template(spec, where, base_dir))
    return dataclasses.replace(spec, trials=tuple(_expand(spec, where, base_dir)))


def _search_template(spec: SweepSpec, where: _Where, base_dir: Path) -> "Search":
    """The search with the values every sampled trial starts from (as _expand builds a grid trial's), checked."""
    from .search import check_search

    search = spec.search
    for key in spec.forced:
        if key in search.space:
            raise _flag_error(f"--set {key}", f"the search samples {key}: forcing one value would change the "
                                              "search. Edit the file's search.space instead.")
    values = {**spec.base, **search.settings, **spec.forced, "seed": search.seed,
              "mlflow_tracking_uri": spec.tracking_uri, "mlflow_experiment": spec.experiment}
    values.setdefault("data_root", default_data_root())
    values = _absolute_paths({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}, base_dir)
    search = dataclasses.replace(search, template=values)
    check_search(search, where)
    return search


def _flag_error(flag: str, message: str) -> ConfigError:
    return ConfigError(f"Command-line flag {flag}: {message}")


def _override(spec: SweepSpec, o: SweepOverrides, where: _Where, base_dir: Path) -> SweepSpec:
    groups = list(spec.groups)
    if spec.search is not None and (o.only or o.grid):
        flag = f"--only {o.only[0]}" if o.only else f"--grid {o.grid[0]}"
        raise _flag_error(flag, f"picks a grid's groups or axis values, but {spec.source} is a search (no groups): "
                                "drop the flag, or narrow the search's space in the file.")
    if o.only:
        names = [g.name for g in groups]
        for pattern in o.only:
            if not fnmatch.filter(names, pattern):
                raise _flag_error(f"--only {pattern}", f"matches no group of {spec.source}; its groups are "
                                                       f"{', '.join(names)} (globs such as 'mnist-*' work).")
        groups = [g for g in groups if any(fnmatch.fnmatchcase(g.name, p) for p in o.only)]
    forced = {}
    if o.settings:
        raw = parse_overrides(list(o.settings))
        check_keys(raw, "--set")
        for key, value in raw.items():
            if key in ("seed", "mlflow_tracking_uri", "mlflow_experiment"):
                raise _flag_error(f"--set {key}", "is set by the sweep: use --seeds, or --local for the store.")
            try:
                forced[key] = coerce(key, value)
            except ConfigError as exc:
                raise _flag_error(f"--set {key}", str(exc)) from None
            for g in groups:
                if key in g.grid or any(key in p for p in g.points):
                    raise _flag_error(f"--set {key}", f"group {g.name!r} varies {key} (its grid or points): "
                                                      "forcing one value would merge its trials. Pick groups "
                                                      "with --only, or edit the file.")
    groups = _keep_grid_values(groups, o.grid)
    search = spec.search
    if search is not None and o.seeds is not None:
        raise _flag_error("--seeds", "a search's trials run one seed, search.seed in the sweep file: edit it there.")
    if o.seeds is not None:
        seeds = where.seeds(list(o.seeds), "--seeds")
        groups = [dataclasses.replace(g, seeds=seeds) for g in groups]
    if o.cpu is not None or o.gpu is not None:
        for flag, value in (("--cpu", o.cpu), ("--gpu", o.gpu)):
            if value is not None and (value < 0 or (value > 1 and value != int(value))):
                raise _flag_error(f"{flag} {value:g}", "a trial takes >= 0 CPUs and a fraction of one GPU or "
                                                        "whole GPUs.")
        changes = {"cpu": None if o.cpu is None else float(o.cpu), "gpu": None if o.gpu is None else float(o.gpu)}
        if o.gpu is not None:
            changes["gpu_auto"] = False  # an explicit share replaces `gpu: auto`
        changes = {k: v for k, v in changes.items() if v is not None}
        groups = [dataclasses.replace(g, resources=dataclasses.replace(g.resources, **changes)) for g in groups]
        if search is not None:
            search = dataclasses.replace(search, resources=dataclasses.replace(search.resources, **changes))
    notes: list[str] = []
    if o.local and o.gpu is None and any(r.gpu > 0 and not r.gpu_auto for r in
                                         [g.resources for g in groups] + ([search.resources] if search else [])):
        from .preflight import local_gpu_count

        if local_gpu_count() == 0:  # --local means this machine: its trials run on its CPU
            groups = [dataclasses.replace(g, resources=dataclasses.replace(g.resources, gpu=0.0)) for g in groups]
            if search is not None:
                search = dataclasses.replace(search, resources=dataclasses.replace(search.resources, gpu=0.0))
            notes.append("--local: this machine has no GPU, so the sweep file's GPU share per trial is dropped "
                         "(trials run on the CPU)")
    storage, uri, base = spec.storage_path, spec.tracking_uri, dict(spec.base)
    if o.local:
        storage = resolve_folder(base_dir / "ray_results")
        uri = normalize_tracking_uri("sqlite:///mlflow.db", base_dir)
        base.pop("data_root", None)  # a cluster path; ROBUSTSWEEP_DATA_ROOT or --set data_root decide
    name, experiment = spec.name, spec.experiment
    if o.name:
        name = where.safe_name(o.name, "--name", "sweep")
    elif o.trial_flags():
        name = f"{spec.name}-{hashlib.sha1(o.trial_flags().encode()).hexdigest()[:6]}"
    if name != spec.name:
        experiment = name  # the file's experiment holds the file's sweep
    return dataclasses.replace(spec, name=name, storage_path=storage, tracking_uri=uri, experiment=experiment,
                               base=base, groups=tuple(groups), forced=forced, flags=o.flags(),
                               seeds=o.seeds if o.seeds is not None else spec.seeds, notes=tuple(notes),
                               search=search)


def _keep_grid_values(groups: list[Group], grid_flags: tuple[str, ...]) -> list[Group]:
    """``--grid key=v1,v2``: keep only those values of axis ``key`` in every group that varies it."""
    for flag in grid_flags:
        key, sep, raw = flag.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise _flag_error(f"--grid {flag}", "expected key=value1,value2 (e.g. --grid batch_size=128,256).")
        if not any(key in g.grid for g in groups):
            varied = sorted({k for g in groups for k in g.grid})
            raise _flag_error(f"--grid {flag}", f"no selected group varies {key!r}; the grid axes are "
                                               f"{', '.join(varied) or 'none'}. Pick groups with --only.")
        try:
            items = yaml_load(raw) if raw.strip().startswith("[") else [yaml_load(item) for item in raw.split(",")]
            wanted = [coerce(key, v) for v in items]
        except (ConfigError, ValueError) as exc:
            raise _flag_error(f"--grid {flag}", str(exc)) from None
        kept_groups = []
        for g in groups:
            if key not in g.grid:
                kept_groups.append(g)
                continue
            missing = [v for v in wanted if v not in g.grid[key]]
            if missing:
                raise _flag_error(f"--grid {flag}", f"group {g.name!r} has no {key} value "
                                                   f"{', '.join(map(str, missing))}: its axis is {g.grid[key]}. "
                                                   "Give values the axis has (the trials keep their ids).")
            kept_groups.append(dataclasses.replace(g, grid={**g.grid, key: [v for v in g.grid[key] if v in wanted]}))
        groups = kept_groups
    return groups


def count_trials(spec: SweepSpec) -> int:
    """The number of trials the sweep expands to (a search's: its num_samples), computed without expanding it."""
    grid = sum(len(g.points) * math.prod(len(v) for v in g.grid.values()) * len(g.seeds) for g in spec.groups)
    return grid + (spec.search.num_samples if spec.search is not None else 0)


def _expand(spec: SweepSpec, where: _Where, base_dir: Path) -> list[Trial]:
    trials: list[Trial] = []
    seen: dict[TrialConfig, str] = {}
    paths: dict[tuple[str, str], str] = {}
    seedless = SeedlessMemo()
    for gi, group in enumerate(spec.groups):
        keys = list(group.grid)
        combos = itertools.product(group.points, itertools.product(*(group.grid[k] for k in keys)), group.seeds)
        for extra, point, seed in combos:
            chosen = {**extra, **dict(zip(keys, point))}
            values = {**spec.base, **group.settings, **chosen, **spec.forced, "seed": seed,
                      "mlflow_tracking_uri": spec.tracking_uri, "mlflow_experiment": spec.experiment}
            values.setdefault("data_root", default_data_root())  # workers may not share our environment
            values = _absolute_paths({k: list(v) if isinstance(v, tuple) else v for k, v in values.items()},
                                     base_dir, paths)
            try:
                config, science = seedless.made(values)
            except ConfigError as exc:
                raise where.error(f"groups[{gi}] ({group.name}), trial with {_described(chosen)}, seed {seed}",
                                  str(exc)) from None
            if config in seen:
                raise where.error(f"groups[{gi}] ({group.name})",
                                  f"the trial with {_described(chosen)}, seed {seed} duplicates a trial of group "
                                  f"{seen[config]!r}: every trial must differ in some setting.")
            seen[config] = group.name
            trials.append(Trial(_trial_id(group.name, science), group.name, group.resources, config))
    return trials


def _described(chosen: Mapping[str, Any]) -> str:
    """A trial's grid point in an error message (made only for one: 10,000 trials would spend a tenth of a second)."""
    return ", ".join(f"{k}={v}" for k, v in chosen.items()) or "its single point"


class SeedlessMemo:
    """Trial configs (and their identifying settings) made once per combination of settings and reused for
    each of its seeds: the seed is the one setting a resolved config's other values never depend on, and
    sweeps reach thousands of trials by seeds (issue 23: expansion was a quarter of audit and launch at
    10,000 trials). A config made from the memo is the one made from scratch (tests/test_scale.py)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[TrialConfig, dict[str, Any]]] = {}
        self._default_seed = TrialConfig().seed

    def made(self, values: Mapping[str, Any]) -> tuple[TrialConfig, dict[str, Any]]:
        """(the resolved config of the settings ``values``, the settings that identify it: see _science)."""
        if not isinstance(values, Mapping):  # a damaged saved sweep: its reader makes this one paragraph
            raise TypeError(f"a trial's settings are {type(values).__name__}, not a mapping")
        key = repr(sorted((k, v) for k, v in values.items() if k != "seed"))
        if key not in self._made:
            config = make_trial_config(values, validate=False).resolved()
            science = _science(config)
            science.pop("seed", None)
            self._made[key] = config, science
            return config, self._with_seed(science, config.seed)
        config, science = self._made[key]
        seed = coerce("seed", values.get("seed", self._default_seed))
        config = copy.copy(config)  # dataclasses.replace, without re-running __init__'s 60 fields
        object.__setattr__(config, "seed", seed)
        config.validate()
        return config, self._with_seed(science, seed)

    def _with_seed(self, science: dict[str, Any], seed: int) -> dict[str, Any]:
        return dict(science) if seed == self._default_seed else {**science, "seed": seed}  # never the memo's own
