"""Read a sweep's MLflow runs into one tidy table: one row per run, config and metric columns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..config import yaml_load
from ..errors import UserError
from ..launch import resolve_sweep, trial_runs, trial_state
from ..metrics import ATTACKED_CLEAN_ACC, EVAL_PHASES, HESSIAN_TOP_EIG, measurement_keys, phase_seconds_key
from ..tracking import make_client

#: Settings that describe a trial's configuration in tables and legends, in this order.
CONFIG_COLUMNS = ["dataset", "model", "variant", "batch_size", "lr", "lr_batch_ratio", "momentum", "weight_decay",
                  "schedule", "epochs", "seed"]
#: How the attacks were run (the report states them beside any comparison with the study).
ATTACK_COLUMNS = ["pgd_steps", "pgd_step_size", "attack_subset"]
_INT = {"batch_size", "epochs", "seed", "pgd_steps", "attack_subset"}
_FLOAT = {"lr", "lr_batch_ratio", "momentum", "weight_decay", "pgd_step_size"}


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
    name, uri, experiment, trials = resolve_sweep(sweep, tracking_uri, storage_path)
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = trial_runs(client, exp.experiment_id, name) if exp is not None else {}
    runs.pop("", None)
    if not any(runs.values()):
        raise UserError(f"Sweep {name!r} has no runs in MLflow experiment {experiment!r} at {uri}. Launch it "
                        f"first (robustsweep launch SWEEP.yaml), or point --tracking-uri at the store it logged to.")
    expected = {t.trial_id: t for t in trials}
    eps_sets: dict[str, set[float]] = {}
    for t in trials:
        eps_sets.setdefault(t.config.dataset, set()).update(t.config.eps)
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
        row: dict[str, Any] = {"trial_id": trial_id, "group": tags.get("group", ""), "run_id": run.info.run_id,
                               "outcome": tags.get("outcome", "finished")}
        row.update({k: _param(params, k) for k in CONFIG_COLUMNS + ATTACK_COLUMNS})
        if row["lr"] is None and row["lr_batch_ratio"] is not None:
            row["lr"] = row["lr_batch_ratio"] * row["batch_size"]  # the initial rate the ratio gives
        if row["dataset"] not in eps_sets:  # a run the sweep file no longer declares
            eps_sets[row["dataset"]] = set(yaml_load(params.get("eps", "[]")) or [])
        wanted = measurement_keys(sorted(eps_sets[row["dataset"]]))
        row.update({k: metrics.get(k) for k in wanted + [ATTACKED_CLEAN_ACC]})
        row["diverged"] = row["outcome"] == "diverged"
        row["collapsed"] = row["outcome"] == "collapsed"
        if row["diverged"]:
            problems.append({"trial_id": trial_id, "kind": "diverged", "run_id": run.info.run_id,
                             "reason": tags.get("diverged_reason", "training loss became non-finite")})
        elif row["collapsed"]:
            problems.append({"trial_id": trial_id, "kind": "collapsed", "run_id": run.info.run_id,
                             "reason": tags.get("collapsed_reason", "clean accuracy near chance")})
        else:
            missing = [k for k in wanted if k not in metrics]
            if missing:
                problems.append({"trial_id": trial_id, "kind": "missing metrics", "run_id": run.info.run_id,
                                 "reason": "run has no " + ", ".join(missing)})
        row.update({phase_seconds_key(p): metrics.get(phase_seconds_key(p)) for p in EVAL_PHASES})
        if curves:
            history = histories[run.info.run_id] = _history(client, run.info.run_id)
            for key, column in (("epoch_seconds", "seconds_training"), ("test_seconds", "seconds_test_passes")):
                row[column] = float(history[key].sum()) if key in history and history[key].notna().any() else None
        rows.append(row)
    eps = {dataset: sorted(values) for dataset, values in eps_sets.items()}
    return SweepRuns(name, uri, experiment, eps, pd.DataFrame(rows), problems, histories)


def for_analysis(table: pd.DataFrame) -> pd.DataFrame:
    """The runs table with the measurements of collapsed runs that mean nothing (attack ratios, top
    eigenvalue) blanked, so tables, figures and correlations leave them out; runs.csv keeps them."""
    out = table.copy()
    if "collapsed" in out and out["collapsed"].any():
        unreliable = [c for c in out.columns if "_ratio_eps" in c or c == HESSIAN_TOP_EIG]
        out.loc[out["collapsed"], unreliable] = float("nan")
    return out


def _history(client, run_id: str) -> pd.DataFrame:
    frames = []
    for key in ("train_loss", "test_acc", "epoch_seconds", "test_seconds"):
        points = client.get_metric_history(run_id, key)
        frames.append(pd.Series({m.step: m.value for m in points}, name=key, dtype=float))
    return pd.concat(frames, axis=1).sort_index()
