"""Finished runs as a small text file that can be committed, and read back into any MLflow store.

``robustsweep export`` writes one JSON line per finished MLflow run of a sweep
(its name, tags, params, every metric's full history, dataset inputs, times):
no model weights and no Ray checkpoints, a few kB per run, sorted by trial id
so that a re-export after more trials finished diffs cleanly.

``robustsweep import`` recreates those runs in a sweep's MLflow experiment,
on a fresh machine say. A trial that already has a FINISHED run there is
skipped, so importing twice changes nothing. ``robustsweep launch`` then skips
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

from .errors import ConfigError
from .tracking import get_or_create_experiment, make_client

FORMAT = "robustsweep-runs/1"
#: Tags MLflow sets or derives itself: not copied, they would describe the exporting machine.
_SKIP_TAG_PREFIXES = ("mlflow.log-model", "mlflow.source", "mlflow.user", "mlflow.runName")


@dataclass
class ImportResult:
    imported: int
    skipped: int
    experiment_id: str


def _finished_runs(client, experiment_id: str, sweep: str) -> Iterator[Any]:
    from .launch import trial_runs, trial_state

    for trial_id, runs in sorted(trial_runs(client, experiment_id, sweep).items()):
        state, run = trial_state(runs)
        if trial_id and state == "finished":
            yield run  # newest FINISHED run of the trial (there is one, unless runs were copied in)


def _record(client, run) -> dict[str, Any]:
    metrics = {}
    for key in sorted(run.data.metrics):
        history = client.get_metric_history(run.info.run_id, key)
        metrics[key] = [[m.step, m.value, m.timestamp] for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    inputs = []
    for item in (run.inputs.dataset_inputs if run.inputs else []):
        context = {t.key: t.value for t in item.tags}.get("mlflow.data.context", "")
        d = item.dataset
        inputs.append({"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
                       "context": context})
    return {"format": FORMAT, "run_name": run.info.run_name, "trial_id": run.data.tags.get("trial_id"),
            "status": run.info.status, "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith(_SKIP_TAG_PREFIXES)},
            "params": dict(sorted(run.data.params.items())), "metrics": metrics, "inputs": inputs}


def export_runs(uri: str, experiment: str, sweep: str, path: str | os.PathLike) -> int:
    """Write the sweep's FINISHED runs to ``path`` (JSON lines); returns how many."""
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    records = [] if exp is None else [_record(client, run) for run in _finished_runs(client, exp.experiment_id, sweep)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)  # a reader never sees half a file
    return len(records)


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
        records.append(record)
    return records


def import_runs(path: str | os.PathLike, uri: str, experiment: str, sweep: str) -> ImportResult:
    """Recreate the exported runs of ``sweep`` in ``experiment`` at ``uri``; skip trials already FINISHED there."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    from .launch import trial_runs, trial_state
    from .tracking import _retry_locked

    records = read_records(path)
    others = sorted({r["tags"].get("sweep") for r in records} - {sweep})
    if others:
        raise ConfigError(f"{path} holds runs of sweep {others[0]!r}, not {sweep!r}: import it with that "
                          "sweep's file, or export the right sweep.")
    client = make_client(uri)
    experiment_id = get_or_create_experiment(client, experiment, uri)
    done = {trial_id for trial_id, runs in trial_runs(client, experiment_id, sweep).items()
            if trial_state(runs)[0] == "finished"}
    imported = skipped = 0
    for record in records:
        if record["trial_id"] in done:
            skipped += 1
            continue
        tags = {**record["tags"], "robustsweep.imported_from": str(path)}
        run = _retry_locked(client.create_run)(experiment_id, start_time=record["start_time"], tags=tags,
                                               run_name=record["run_name"])
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        metrics = [Metric(k, value, timestamp, step) for k, points in record["metrics"].items()
                   for step, value, timestamp in points]
        for start in range(0, len(params), 100):
            _retry_locked(client.log_batch)(run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            _retry_locked(client.log_batch)(run_id, metrics=metrics[start:start + 1000])
        if record["inputs"]:
            _retry_locked(client.log_inputs)(run_id, datasets=[
                DatasetInput(Dataset(name=i["name"], digest=i["digest"], source_type=i["source_type"],
                                     source=i["source"]), tags=[InputTag("mlflow.data.context", i["context"])])
                for i in record["inputs"]])
        _retry_locked(client.log_batch)(run_id, tags=[RunTag("mlflow.runName", record["run_name"])])
        _retry_locked(client.set_terminated)(run_id, status=record["status"], end_time=record["end_time"])
        done.add(record["trial_id"])
        imported += 1
    return ImportResult(imported, skipped, experiment_id)
