"""Finished runs as a small text file that can be committed, and read back into any MLflow store.

``robustsweep export`` writes one JSON line per finished MLflow run of a sweep
(its name, tags, params, every metric's full history, dataset inputs, times):
no model weights and no Ray checkpoints, a few kB per run, sorted by trial id
so that a re-export after more trials finished diffs cleanly. The sweep's parent
run (robustsweep.sweep_run: its counts, flags, note) comes first, marked
``"kind": "sweep"``; its artifacts (the sweep file, a report) stay behind.

``robustsweep import`` recreates those runs in a sweep's MLflow experiment,
on a fresh machine say, nested under the sweep's parent run there (the one it
has, else one made from the exported parent, else a new one: exports written
before parents existed import too). A trial that already has a FINISHED run
there is skipped, so importing twice changes nothing. ``robustsweep launch`` then skips
every imported trial (it never retrains a trial whose run FINISHED) and runs
only the rest: a long sweep continues from what was committed even when the
MLflow database and Ray's checkpoints are gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, TrackingError, UserError
from .tracking import get_or_create_experiment, is_unavailable, make_client

FORMAT = "robustsweep-runs/1"
#: Tags MLflow sets or derives itself: not copied, they would describe the exporting machine.
_SKIP_TAG_PREFIXES = ("mlflow.log-model", "mlflow.source", "mlflow.user", "mlflow.runName", "mlflow.parentRunId")
#: The ``kind`` of the exported parent run's line (trial runs' lines have none).
PARENT_KIND = "sweep"


@dataclass
class ImportResult:
    imported: int
    skipped: int
    experiment_id: str


def _finished_runs(runs: dict[str, list[Any]]) -> Iterator[Any]:
    from .runs import trial_state

    for trial_id, mine in sorted(runs.items()):
        state, run = trial_state(mine)
        if trial_id and state == "finished":
            yield run  # newest FINISHED run of the trial (there is one, unless runs were copied in)


def _record(run, histories: dict[str, list[Any]]) -> dict[str, Any]:
    """One exported line: ``histories`` are the run's metric histories (runs.metric_histories)."""
    metrics = {key: [[m.step, m.value, m.timestamp] for m in histories.get(key, [])] for key in sorted(run.data.metrics)}
    inputs = []
    for item in (run.inputs.dataset_inputs if run.inputs else []):
        context = {t.key: t.value for t in item.tags}.get("mlflow.data.context", "")
        d = item.dataset
        inputs.append({"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
                       "context": context})
    from .sweep_run import is_parent

    kind = {"kind": PARENT_KIND} if is_parent(run) else {}
    return {"format": FORMAT, **kind, "run_name": run.info.run_name, "trial_id": run.data.tags.get("trial_id"),
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith(_SKIP_TAG_PREFIXES)},
            "params": dict(sorted(run.data.params.items())), "metrics": metrics, "inputs": inputs}


def export_runs(uri: str, experiment: str, sweep: str, path: str | os.PathLike) -> int:
    """Write the sweep's parent run and FINISHED trial runs to ``path`` (JSON lines); returns how many of
    the trials'."""
    from .runs import metric_histories, read_sweep_runs
    from .sweep_run import find_parents

    client, experiment_id, runs = read_sweep_runs(uri, experiment, sweep)
    finished = list(_finished_runs(runs))
    parents = find_parents(client, experiment_id, sweep)[:1] if experiment_id else []
    histories = metric_histories(client, parents + finished)  # in bulk: one call per metric key and chunk of runs
    records = [_record(run, histories[run.info.run_id]) for run in parents + finished]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)  # a reader never sees half a file
    return len(finished)


#: MLflow's limits on one log_batch call: 100 params (or tags), 1000 metrics, 1000 entities in all.
_MAX_PARAMS, _MAX_METRICS, _MAX_ENTITIES = 100, 1000, 1000


def _batches(params: list[Any], metrics: list[Any], tags: list[Any]) -> Iterator[dict[str, list[Any]]]:
    """A run's params, metrics and tags in as few log_batch calls as MLflow's limits allow (one, for a
    study run: about 40 params, 90 metric points and a tag)."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        take_p = params[:_MAX_PARAMS]
        take_t = tags[:min(_MAX_PARAMS, _MAX_ENTITIES - len(take_p))]
        take_m = metrics[:min(_MAX_METRICS, _MAX_ENTITIES - len(take_p) - len(take_t))]
        del params[:len(take_p)], tags[:len(take_t)], metrics[:len(take_m)]
        yield {"params": take_p, "metrics": take_m, "tags": take_t}


#: What each exported line must hold, and its type (trial_id is None only on the sweep's parent run).
_RECORD_KEYS: dict[str, type | tuple[type, ...]] = {
    "run_name": str, "trial_id": (str, type(None)), "status": str, "start_time": int, "end_time": (int, type(None)),
    "tags": dict, "params": dict, "metrics": dict, "inputs": list}


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No exported runs at {path}: give the file `robustsweep export` wrote "
                          "(for example results/<sweep>/runs.jsonl).")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {number}, is not JSON ({exc.msg}): the file is damaged or not one "
                              "`robustsweep export` wrote. Export it again from the MLflow store.") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ConfigError(f"{path}, line {number}, is not a run exported by robustsweep (format "
                              f"{FORMAT!r}). Export it again with `robustsweep export`.")
        missing = [k for k, kind in _RECORD_KEYS.items() if k not in record or not isinstance(record[k], kind)
                   or (k == "trial_id" and record[k] is None and record.get("kind") != PARENT_KIND)]
        if missing:
            raise ConfigError(f"{path}, line {number}, lacks {', '.join(missing)} (or has the wrong type there): the "
                              "file is damaged. Export it again with `robustsweep export`.")
        records.append(record)
    return records


@dataclass
class _Target:
    client: Any
    experiment_id: str
    path: str  #: the exported file, recorded on each run
    building: bool = False  #: a new store being built aside (sqlite_bulk.built_aside): discarded on error


def _recreate(target: _Target, record: dict[str, Any], tags: dict[str, str]) -> str:
    """One exported run made again in the target experiment (params, tags, every metric point, dataset inputs,
    status and times as exported); its new id."""
    from .tracking import _retry_locked

    client = target.client
    tags = {**tags, "robustsweep.imported_from": target.path}
    run = _retry_locked(client.create_run)(target.experiment_id, start_time=record["start_time"], tags=tags,
                                           run_name=record["run_name"])
    run_id = run.info.run_id
    try:
        _fill(client, run_id, record)
    except BaseException:
        try:  # no half-made run among the sweep's: ended FAILED and marked deleted (MLflow's UI lists it as such)
            client.set_terminated(run_id, status="FAILED")
            client.delete_run(run_id)
        except Exception:
            pass  # the store is failing: the error that matters is the first one
        raise
    return run_id


def _fill(client: Any, run_id: str, record: dict[str, Any]) -> None:
    """A new run's params, metrics, dataset inputs, status and end time, from its exported ``record``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

    from .tracking import _retry_locked

    params = [Param(k, v) for k, v in record["params"].items()]
    metrics = [Metric(k, value, timestamp, step) for k, points in record["metrics"].items()
               for step, value, timestamp in points]
    # (create_run already set the run's name and its mlflow.runName tag: a tag of that key in log_batch would
    # update the run's info once more: a quarter of log_batch's store work)
    for batch in _batches(params, metrics, []):
        _retry_locked(client.log_batch)(run_id, **batch)
    if record["inputs"]:
        _retry_locked(client.log_inputs)(run_id, datasets=[
            DatasetInput(Dataset(name=i["name"], digest=i["digest"], source_type=i["source_type"],
                                 source=i["source"]), tags=[InputTag("mlflow.data.context", i["context"])])
            for i in record["inputs"]])
    status = "KILLED" if record["status"] == "RUNNING" else record["status"]  # no driver runs it here
    _retry_locked(client.set_terminated)(run_id, status=status, end_time=record["end_time"])


def _recreate_one(target: _Target, record: dict[str, Any], tags: dict[str, str]) -> str:
    """:func:`_recreate`, its failure one paragraph naming the run (a damaged line, a store refusing a value)."""
    written = ("nothing was written: the new store was discarded" if target.building
               else "the runs before it were written, and importing again skips them")
    try:
        return _recreate(target, record, tags)
    except UserError:
        raise
    except Exception as exc:  # MlflowException, sqlalchemy's errors: the store refused this run, or is gone
        if is_unavailable(exc):
            raise TrackingError(f"The MLflow tracking server stopped answering during the import ({type(exc).__name__}: "
                                f"{str(exc).strip()[:200]}); {written}. Start it again (or check the address), then "
                                "import again.") from None
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        which = f"The run of trial {record['trial_id']}" if record.get("trial_id") else "The sweep's parent run"
        raise ConfigError(f"{which} in {target.path} could not be made again "
                          f"in the MLflow store ({type(exc).__name__}: {detail}); {written}. If the line is damaged, "
                          "export the sweep again; if the store refused it, fix the store and import again.") from None


def _import_parent(target: _Target, sweep: str, exported: list[dict[str, Any]], trials: int) -> str:
    """The sweep's parent run in the target: the one it has, else the exported one made again, else a new one."""
    from .sweep_run import find_parents, new_finished_parent

    have = find_parents(target.client, target.experiment_id, sweep)
    if have:
        return have[0].info.run_id
    if exported:
        return _recreate_one(target, exported[0], dict(exported[0]["tags"]))
    return new_finished_parent(target.client, target.experiment_id, sweep, trials)


def import_runs(path: str | os.PathLike, uri: str, experiment: str, sweep: str,
                names: dict[str, str] | None = None) -> ImportResult:
    """Recreate the exported runs of ``sweep`` in ``experiment`` at ``uri``, nested under the sweep's parent
    run; skip trials already FINISHED there. ``names``: trial id -> run name, for runs exported under their
    trial id (before runs were named by what they are) and for the sweep's runs there not yet nested."""
    from .sqlite_bulk import built_aside

    records = read_records(path)
    others = sorted({r["tags"].get("sweep") for r in records} - {sweep})
    if others:
        raise ConfigError(f"{path} holds runs of sweep {others[0]!r}, not {sweep!r}: import it with that "
                          "sweep's file, or export the right sweep.")
    names = names or {}
    with built_aside(uri) as writing:  # a new SQLite store: built beside its path, without fsync, then moved in
        result, parent_id = _import_records(records, writing, experiment, sweep, names, str(path),
                                            building=writing != uri)
    if names or result.imported:
        # One read of the sweep's runs, in place, through the local copy of its ended runs (robustsweep.run_cache),
        # which it leaves up to date: the status, audit or report that follows reads only what changed since
        # (at 1,440 runs under load: 3.3 s against 7.2 s read in full; audit still reads each run's histories once).
        from .runs import read_sweep_runs_cached
        from .sweep_run import summarize, trial_counts

        runs = read_sweep_runs_cached(uri, experiment, sweep)[2]
        if names:  # the parent run's counts by state
            summarize(make_client(uri), parent_id, trial_counts(names, runs), len(names))
    return result


def _import_records(records: list[dict[str, Any]], uri: str, experiment: str, sweep: str, names: dict[str, str],
                    path: str, building: bool) -> tuple[ImportResult, str]:
    """The import's writes (into ``uri``, a store being built where ``building``): (its result, the parent's id)."""
    from .run_cache import bump_generation
    from .runs import trial_runs, trial_state
    from .sweep_run import PARENT_TAG, adopt
    from .tracking import analyze_sqlite

    client = make_client(uri)
    target = _Target(client, get_or_create_experiment(client, experiment, uri), path, building)
    trials = [r for r in records if r.get("kind") != PARENT_KIND]
    parent_id = _import_parent(target, sweep, [r for r in records if r.get("kind") == PARENT_KIND],
                               len(names) or len(trials))
    existing = trial_runs(client, target.experiment_id, sweep)
    adopt(client, parent_id, (run for mine in existing.values() for run in mine), names)
    done = {trial_id for trial_id, runs in existing.items() if trial_state(runs)[0] == "finished"}
    # One run after another. Shared among processes, one a core, an import into a store being built took 260 s
    # for 10,080 runs against 309 s alone, for 1.3 times the CPU, and as long at 1,440 runs: SQLite lets one
    # connection write at a time, and MLflow holds the write lock through most of its work on a run
    # (bench/results-scale.md, eighth session).
    imported = skipped = 0
    for record in trials:
        if record["trial_id"] in done:
            skipped += 1
            continue
        if record["run_name"] == record["trial_id"] and record["trial_id"] in names:
            record = {**record, "run_name": names[record["trial_id"]]}
        _recreate_one(target, record, {**record["tags"], PARENT_TAG: parent_id})
        done.add(record["trial_id"])
        imported += 1
    if imported:
        bump_generation(client, parent_id)  # runs with their exported (earlier) end times: re-read local copies
        analyze_sqlite(uri)  # fresh statistics for the query planner (see tracking.analyze_sqlite)
    return ImportResult(imported, skipped, target.experiment_id), parent_id
