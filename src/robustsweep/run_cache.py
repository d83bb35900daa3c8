"""A local copy of a sweep's ended trial runs, so that `status`, `audit` and `report` re-read only what changed.

A trial's run that has ended (FINISHED, FAILED or KILLED, with an end time) does not change again: robustsweep
never writes to it after ``set_terminated``, and a retried trial reopens its FAILED run (status RUNNING,
read again below) before it writes. So each reading command keeps the runs it read, and the next one asks
MLflow only for what can have changed since, with its public search API:

- runs that ended since the last read (``attributes.end_time >=`` that read's start, less ``SLACK_MS`` for
  clocks that differ between the machines that log);
- runs RUNNING or SCHEDULED now (never kept: always read again);
- the sweep's deleted runs (dropped from the copy; one that is no longer deleted, restored or purged by
  ``mlflow gc``, makes a full read).

What the timestamps cannot show, runs written with an earlier end time (``robustsweep import`` keeps the
exported times) and tags set on ended runs (nesting a sweep's earlier runs under its parent), bumps the
generation tag on the sweep's parent run (:func:`bump_generation`): a copy of another generation, or of
another parent, is read again in full. Edits made by hand to an ended run (MLflow's UI, the client) are the
one change it does not see: ``ROBUSTSWEEP_RUN_CACHE=off`` reads everything from MLflow, every time.

The copy is JSON (never a pickle: whoever can write it cannot make a command run code), one file per store,
experiment and sweep (named by a hash, so a tracking URI's password is not in a file name), under
``$ROBUSTSWEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/robustsweep/runs``, else ``~/.cache/robustsweep/runs``,
private to its user. A copy that cannot be read, or a folder that cannot be written, only means a full read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The format of a cache file; another one is read again in full.
FORMAT = 1
#: The tag on a sweep's parent run that names the generation of its trial runs (see the module's text).
GENERATION_TAG = "robustsweep.runs_generation"
#: Runs that ended this long before the last read are read again: clocks of the machines that log may differ.
SLACK_MS = 3600 * 1000
ENDED = ("FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    run_name: str
    status: str
    start_time: int | None
    end_time: int | None
    experiment_id: str = ""


@dataclass(frozen=True)
class RunData:
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class CachedRun:
    """An ended run as the reading commands use it: ``info`` (id, name, status, times) and ``data`` (tags,
    params, latest metrics), like MLflow's Run."""
    info: RunInfo
    data: RunData


def _entry(run) -> dict[str, Any]:
    i, d = run.info, run.data
    return {"run_id": i.run_id, "run_name": i.run_name, "status": i.status, "start_time": i.start_time,
            "end_time": i.end_time, "experiment_id": i.experiment_id, "tags": dict(d.tags),
            "params": dict(d.params), "metrics": dict(d.metrics)}


def _same(entry: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in entry.items() if k != "facts"}, sort_keys=True)


def _run(entry: dict[str, Any]) -> CachedRun:
    return CachedRun(RunInfo(entry["run_id"], entry["run_name"], entry["status"], entry["start_time"],
                             entry["end_time"], entry.get("experiment_id", "")),
                     RunData(entry["tags"], entry["params"], entry["metrics"]))


def enabled() -> bool:
    return os.environ.get("ROBUSTSWEEP_RUN_CACHE", "on").lower() not in ("off", "0", "false", "no")


def cache_dir() -> Path:
    if os.environ.get("ROBUSTSWEEP_CACHE_DIR"):
        return Path(os.environ["ROBUSTSWEEP_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "robustsweep" / "runs"


def bump_generation(client, parent_id: str) -> None:
    """Mark that the sweep's trial runs changed in a way their end times do not show (see the module's text)."""
    from .tracking import _retry_locked

    _retry_locked(client.set_tag)(parent_id, GENERATION_TAG, uuid.uuid4().hex)


@dataclass
class SweepRunCache:
    """The copy of one sweep's ended runs, and facts derived from them (``fact``/``remember``)."""
    path: Path
    generation: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    read_at: int = 0
    changed: bool = False

    def fact(self, run_id: str, key: str) -> Any:
        """What was derived from an ended run earlier (audit's repeated steps), or None."""
        return self.runs.get(run_id, {}).get("facts", {}).get(key)

    def remember(self, run_id: str, key: str, value: Any) -> None:
        """Keep ``value`` for an ended run of the copy (nothing for a live run: it can still change)."""
        entry = self.runs.get(run_id)
        if entry is not None and entry.get("facts", {}).get(key) != value:
            entry.setdefault("facts", {})[key] = value
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        body = {"format": FORMAT, "generation": self.generation, "read_at": self.read_at,
                "deleted": sorted(self.deleted), "runs": list(self.runs.values())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(body, separators=(",", ":")))  # one-shot: the C encoder, not chunks
            os.replace(partial, self.path)
            self.changed = False
        except OSError:
            pass  # a copy is an optimization: a folder that cannot be written means full reads


def _load(path: Path, generation: str) -> SweepRunCache | None:
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT or body.get("generation") != generation:
            return None
        runs = {e["run_id"]: e for e in body["runs"]}
        for entry in runs.values():  # the fields _run reads, so a damaged entry means a full read, not an error
            _run(entry)
        return SweepRunCache(path, generation, runs, set(body["deleted"]), int(body["read_at"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_trial_runs(client, uri: str, experiment_id: str, sweep: str) -> tuple[dict[str, list[Any]],
                                                                                  SweepRunCache | None]:
    """The sweep's trial runs by trial id, newest first, as :func:`robustsweep.runs.trial_runs` gives them, read
    through the local copy (and the copy, for facts derived from its runs; None where the cache is off)."""
    from mlflow.entities import ViewType

    from .runs import _bulk_objects, search_all, trial_runs
    from .sweep_run import find_parents, is_parent
    from .tracking import filter_value

    if not enabled():
        return trial_runs(client, experiment_id, sweep), None
    now = int(time.time() * 1000)
    parents = find_parents(client, experiment_id, sweep)
    generation = ",".join(f"{p.info.run_id}:{p.data.tags.get(GENERATION_TAG, '')}" for p in parents)
    key = hashlib.sha256(f"{uri}\n{experiment_id}\n{sweep}".encode()).hexdigest()[:32]
    path = cache_dir() / f"{key}.json"
    ours = f"tags.sweep = {filter_value(sweep)}"
    with _bulk_objects():
        deleted = {r.info.run_id for r in search_all(client, experiment_id, ours, view=ViewType.DELETED_ONLY)}
        cache = _load(path, generation)
        if cache is not None and cache.deleted - deleted:  # a deleted run restored, or purged: read it all
            cache = None
        if cache is None:
            cache = SweepRunCache(path, generation, changed=True)
            fresh = [run for mine in trial_runs(client, experiment_id, sweep).values() for run in mine]
        else:
            since = cache.read_at - SLACK_MS
            fresh = [run for query in (f"{ours} and attributes.end_time >= {since}",
                                       f"{ours} and attributes.status = 'RUNNING'",
                                       f"{ours} and attributes.status = 'SCHEDULED'")
                     for run in search_all(client, experiment_id, query) if not is_parent(run)]
        for run_id in deleted & cache.runs.keys():
            del cache.runs[run_id]
            cache.changed = True
        cache.deleted = deleted
        live = {}
        for run in fresh:
            run_id = run.info.run_id
            if run_id in deleted:
                continue
            if run.info.status in ENDED and run.info.end_time is not None:
                entry = _entry(run)
                old = cache.runs.get(run_id)
                if old is None or _same(old) != _same(entry):  # as JSON: a NaN metric equals itself
                    cache.runs[run_id] = entry
                    cache.changed = True
                live.pop(run_id, None)
            else:
                live[run_id] = run
                if cache.runs.pop(run_id, None) is not None:
                    cache.changed = True
        if cache.changed or cache.read_at < now - SLACK_MS // 2:
            cache.read_at, cache.changed = now, True
        runs: dict[str, list[Any]] = {}
        for run in [*(_run(e) for e in cache.runs.values() if e["run_id"] not in live), *live.values()]:
            runs.setdefault(run.data.tags.get("trial_id", ""), []).append(run)
    for mine in runs.values():
        mine.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    cache.save()
    return runs, cache
