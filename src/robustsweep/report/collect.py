"""Read a sweep's MLflow runs into one tidy table: one row per run, config and metric columns.

The measurement columns are those each trial's measurements declare (robustsweep.measurements):
the study's set for every run, and AutoAttack, the trace, top-k, ... where the trial asked for them.
Several sweeps of one grid (a run and the seeds added later, say) read as one table with
:func:`collect_many`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..config import yaml_load
from ..errors import UserError
from .. import measurements
from ..metrics import (ATTACKED_CLEAN_ACC, REACHED_STOP_TRAIN_ACC, STOPPED_EPOCH, TRIAL_SECONDS, measurement_keys,
                       phase_seconds_key)
from ..runs import metric_histories, read_sweep_runs_cached, trial_state
from ..saved_sweep import resolve

#: Settings that describe a trial's configuration in tables and legends, in this order.
CONFIG_COLUMNS = ["dataset", "model", "variant", "batch_size", "lr", "lr_batch_ratio", "momentum", "weight_decay",
                  "schedule", "epochs", "seed"]
#: How the attacks were run (the report states them beside any comparison with the study).
ATTACK_COLUMNS = ["pgd_steps", "pgd_step_size", "attack_subset"]
#: What else says at what scale a run was trained and measured (the report's Scale statement).
SCALE_COLUMNS = ["subset", "test_subset", "hessian_samples", "attacks", "autoattack_subset", "autoattack_steps",
                 "autoattack_targets", "curvature", "hessian_trace_probes", "stop_train_acc"]
#: Tags of every run that the Scale statement reports.
SCALE_TAGS = ["sweep", "sweep_flags", "git_commit", "device_name"]
_INT = {"batch_size", "epochs", "seed", "pgd_steps", "attack_subset", "subset", "test_subset", "hessian_samples",
        "autoattack_subset", "autoattack_steps", "autoattack_targets", "hessian_trace_probes"}
_FLOAT = {"lr", "lr_batch_ratio", "momentum", "weight_decay", "pgd_step_size", "stop_train_acc"}
#: Per-run metrics beside the measurements: the epoch a stop_train_acc run stopped at; what the trial cost.
EXTRA_METRICS = [STOPPED_EPOCH, REACHED_STOP_TRAIN_ACC, TRIAL_SECONDS]


@dataclass
class SweepRuns:
    """Everything the report needs from MLflow for one sweep."""

    name: str
    tracking_uri: str
    experiment: str
    eps: dict[str, list[float]]                # dataset -> attack radii
    table: pd.DataFrame                        # one row per finished (or diverged, collapsed) run
    problems: list[dict[str, str]] = field(default_factory=list)   # failed/diverged/collapsed/unfinished/missing
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # run_id -> per-epoch metrics
    #: the sweep's search block (robustsweep.search.Search), or None for a grid
    search: Any = None


def _param(params: dict[str, str], key: str) -> Any:
    raw = params.get(key)
    if raw in (None, "None"):
        return None
    if key in _INT:
        return int(raw)
    if key in _FLOAT:
        return float(raw)
    return raw


def collect(sweep: str, *, tracking_uri: str | None = None, storage_path: str | None = None,
            curves: bool = True) -> SweepRuns:
    resolved = resolve(sweep, tracking_uri, storage_path)
    name, uri, experiment, trials, search = (resolved.name, resolved.tracking_uri, resolved.experiment,
                                             resolved.trials, resolved.search)
    client, _, runs, _ = read_sweep_runs_cached(uri, experiment, name)
    runs.pop("", None)
    if not any(runs.values()):
        raise UserError(f"Sweep {name!r} has no runs in MLflow experiment {experiment!r} at {uri}. Launch it "
                        f"first (robustsweep launch SWEEP.yaml), or point --tracking-uri at the store it logged to.")
    expected = {t.trial_id: t for t in trials}
    eps_sets: dict[str, set[float]] = {}
    for t in trials:
        eps_sets.setdefault(t.config.dataset, set()).update(t.config.eps)
    if curves:  # the learning curves of every finished run, in bulk: one call per key and chunk of runs
        finished = [run for mine in runs.values() for state, run in [trial_state(mine)] if state == "finished"]
        points = metric_histories(client, finished, list(CURVE_KEYS))
    rows, problems, histories = [], [], {}
    for trial_id in sorted(set(expected) | set(runs)):
        state, run = trial_state(runs.get(trial_id, []))
        if state != "finished":
            if state == "failed":
                reason = run.data.tags.get("error", run.info.status)
            else:
                reason = "no run yet" if state == "pending" else "still running"
            problems.append({"trial_id": trial_id, "kind": "failed" if state == "failed" else "unfinished",
                             "reason": reason, "run_id": run.info.run_id if run else ""})
            continue
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        if tags.get("outcome") == "pruned":  # stopped early by ASHA: counted, but no measurements to analyse
            problems.append({"trial_id": trial_id, "kind": "pruned", "run_id": run.info.run_id,
                             "reason": f"stopped by the scheduler (ASHA) after epoch {tags.get('pruned_epoch', '?')}"})
            continue
        row: dict[str, Any] = {"trial_id": trial_id, "group": tags.get("group", ""), "run_id": run.info.run_id,
                               "outcome": tags.get("outcome", "finished")}
        row.update({k: _param(params, k) for k in CONFIG_COLUMNS + ATTACK_COLUMNS + SCALE_COLUMNS})
        row.update({k: tags.get(k, "") for k in SCALE_TAGS})
        if row["lr"] is None and row["lr_batch_ratio"] is not None:
            row["lr"] = row["lr_batch_ratio"] * row["batch_size"]  # the initial rate the ratio gives
        if row["dataset"] not in eps_sets:  # a run the sweep file no longer declares
            eps_sets[row["dataset"]] = set(yaml_load(params.get("eps", "[]")) or [])
        wanted = measurement_keys(sorted(eps_sets[row["dataset"]]))
        trial = expected.get(trial_id)
        chosen = measurements.chosen(trial.config) if trial is not None else []
        extra = [k for m in chosen for k in m.keys(trial.config) if k not in wanted]
        row.update({k: metrics.get(k) for k in wanted + [ATTACKED_CLEAN_ACC] + extra + EXTRA_METRICS})
        if search is not None and tags.get("group") == search.group:
            # the searched settings (any trial setting) and the objectives' and constraints' metrics
            row.update({k: _searched(params, k) for k in search.space if k not in row})
            row.update({k: metrics.get(k) for k in search.metrics() + [c.metric for c in search.constraints]})
        if trial is not None:
            row["final_lr"] = trial.config.lr_at_epoch(int(metrics.get(STOPPED_EPOCH, trial.config.epochs)) - 1)
        row["diverged"] = row["outcome"] == "diverged"
        row["collapsed"] = row["outcome"] == "collapsed"
        if row["diverged"]:
            problems.append({"trial_id": trial_id, "kind": "diverged", "run_id": run.info.run_id,
                             "reason": tags.get("diverged_reason", "training loss became non-finite")})
        elif row["collapsed"]:
            problems.append({"trial_id": trial_id, "kind": "collapsed", "run_id": run.info.run_id,
                             "reason": tags.get("collapsed_reason", "clean accuracy near chance")})
        else:
            missing = [k for k in wanted + extra if k not in metrics]
            if missing:
                problems.append({"trial_id": trial_id, "kind": "missing metrics", "run_id": run.info.run_id,
                                 "reason": "run has no " + ", ".join(missing)})
        phases = ["clean_eval"] + [m.phase for m in chosen] if chosen else ["clean_eval", "fgsm", "pgd", "hessian"]
        row.update({phase_seconds_key(p): metrics.get(phase_seconds_key(p)) for p in phases})
        if curves:
            history = histories[run.info.run_id] = _history(points[run.info.run_id])
            for key, column in (("epoch_seconds", "seconds_training"), ("test_seconds", "seconds_test_passes")):
                row[column] = float(history[key].sum()) if key in history and history[key].notna().any() else None
        rows.append(row)
    eps = {dataset: sorted(values) for dataset, values in eps_sets.items()}
    return SweepRuns(name, uri, experiment, eps, pd.DataFrame(rows), problems, histories, search)


def _searched(params: dict[str, str], key: str) -> Any:
    """A searched setting's value from its MLflow param: typed as the report's columns are, else as YAML reads it."""
    if key in _INT or key in _FLOAT:
        return _param(params, key)
    raw = params.get(key)
    return None if raw in (None, "None") else yaml_load(raw)


def collect_many(sweeps: list[str], *, tracking_uri: str | None = None, storage_path: str | None = None,
                 curves: bool = True) -> SweepRuns:
    """Several sweeps of one study as one table (a run, and seeds or groups added later in sweeps of their
    own): rows are runs, each keeping its sweep in the ``sweep`` column. A configuration and seed run by two
    sweeps is an error, since its statistics would count it twice."""
    parts = [collect(s, tracking_uri=tracking_uri, storage_path=storage_path, curves=curves) for s in sweeps]
    if len(parts) == 1:
        return parts[0]
    if any(p.search is not None for p in parts):
        raise UserError(f"Sweep {next(p.name for p in parts if p.search is not None)} is a search: report it on its "
                        "own (its best trial and front are of its own trials).")
    table = pd.concat([p.table for p in parts], ignore_index=True)
    identity = [c for c in CONFIG_COLUMNS + ["stop_train_acc", "group"] if c in table]
    twice = table[table.duplicated(identity, keep=False)] if not table.empty else table
    if not twice.empty:
        first = twice.iloc[0]
        raise UserError(f"Sweeps {', '.join(sweeps)} both ran {first['variant']} at batch size {first['batch_size']}, "
                        f"lr {first['lr']}, seed {first['seed']} (group {first['group']}): a report of them "
                        "together would count it twice. Report them one at a time, or drop the duplicate sweep.")
    eps: dict[str, list[float]] = {}
    for p in parts:
        for dataset, values in p.eps.items():
            eps[dataset] = sorted(set(eps.get(dataset, [])) | set(values))
    uris = sorted({p.tracking_uri for p in parts})
    return SweepRuns("+".join(p.name for p in parts), ", ".join(uris), ", ".join(sorted({p.experiment for p in parts})),
                     eps, table, [q for p in parts for q in p.problems], {k: v for p in parts for k, v in p.curves.items()})


def collapsed_void_columns(columns) -> list[str]:
    """The columns that mean nothing for a collapsed run, as the measurements declare them
    (``unreliable_when_collapsed``): attack ratios, the Hessian's eigenvalues and trace, and any plugin's."""
    import types

    columns = list(columns)
    eps = sorted({float(c.rsplit("_eps", 1)[1]) for c in columns if "_eps" in c and _is_number(c.rsplit("_eps", 1)[1])})
    top_k = max([int(c.rsplit("_", 1)[1]) for c in columns if c.startswith("hessian_eig_") and c[12:].isdigit()],
                default=1)
    names = measurements.names("attack") + measurements.names("curvature")
    config = types.SimpleNamespace(eps=tuple(eps), attacks=tuple(measurements.names("attack")), hessian_top_k=top_k,
                                   curvature=tuple(measurements.names("curvature")))
    void = {k for name in names for k in measurements.get(name).unreliable_when_collapsed(config)}
    return [c for c in columns if c in void]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def for_analysis(table: pd.DataFrame) -> pd.DataFrame:
    """The runs table with the measurements of collapsed runs that mean nothing blanked (see
    :func:`collapsed_void_columns`), so tables, figures and statistics leave them out; runs.csv keeps them."""
    out = table.copy()
    if "collapsed" in out and out["collapsed"].any():
        out.loc[out["collapsed"], collapsed_void_columns(out.columns)] = float("nan")
    return out


#: The per-epoch metrics the report draws (learning curves) and sums (time spent).
CURVE_KEYS = ("train_loss", "test_acc", "epoch_seconds", "test_seconds")


def _history(points: dict[str, list[Any]]) -> pd.DataFrame:
    """A run's curves (its histories of CURVE_KEYS, runs.metric_histories: sorted by step and time, so a step
    logged twice keeps its last value) as one frame indexed by epoch. Built from plain lists in one step: a
    frame a run, for 10,000 runs, where pandas' Series, concat and sort cost about 2 ms a run."""
    by_key = {key: {m.step: m.value for m in points.get(key, [])} for key in CURVE_KEYS}
    steps = sorted({step for values in by_key.values() for step in values})
    nan = float("nan")
    return pd.DataFrame({key: [values.get(step, nan) for step in steps] for key, values in by_key.items()},
                        index=pd.Index(steps, dtype="int64"), dtype=float)
