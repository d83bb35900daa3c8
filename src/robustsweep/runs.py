"""A sweep's MLflow runs: the read of them all, the rule for a trial's state, a trial's own run, status.

Shared by launch (which trials finished), status, audit, export/import and the report.
"""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import TrackingUnavailable, UserError
from .metrics import TRIAL_SECONDS
from .progress import observed_at_once, progress_line
from .storage import driver_state
from .tracking import filter_value, is_unavailable, make_client


# ---------------------------------------------------------------------------------------------
# The one read of a sweep's runs, shared by launch, status, audit, export/import and the report.
#
# Queries, whatever the sweep's size N: one search per SEARCH_PAGE runs (runs, params, tags and latest
# metrics come together), and, where histories are needed, one call per metric key and chunk of runs.
# MLflow 3.17's MlflowClient has no bulk history method, but its SQL store (SQLite, PostgreSQL, MySQL) has
# get_metric_history_bulk, and its server the endpoint the UI's charts use (ajax-api/2.0/mlflow/metrics/
# get-history-bulk, up to 100 runs and 25,000 points a call): both are MLflow's own API, never its tables.

#: Runs per page of the sweep's search (MLflow's SQL stores and servers answer up to 50,000 a page; a page is
#: held as ORM objects while it is read, about 80 a run).
SEARCH_PAGE = 2000
#: Runs per bulk history query on a SQL store (an SQL IN list; SQLite takes 32,766 values), and per call to a
#: server (its limit). On SQLite each query reads the key's rows of every run (its plan, with statistics or
#: without), so a query for all the runs at once keeps the read linear where chunks would make it quadratic.
HISTORY_CHUNK_SQL = 30000
HISTORY_CHUNK_HTTP = 100
#: Points one get-history-bulk call returns at most (MLflow's server): a fuller answer is read run by run.
HISTORY_MAX_HTTP = 25000


@contextlib.contextmanager
def _bulk_objects() -> Iterator[None]:
    """Python's cyclic garbage collector off while a bulk read builds its objects (SQLAlchemy's ORM makes about
    80 a run, none of them garbage until the read ends): with it on, the collections it runs as they pile up
    took half the read's time (1,440 runs, issue 23). Objects in cycles are collected once it is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def trial_runs(client, experiment_id: str, sweep: str) -> dict[str, list[Any]]:
    """MLflow runs of a sweep's trials, grouped by trial id (newest first): one search per SEARCH_PAGE runs.
    The sweep's parent run (robustsweep.sweep_run) is not among them."""
    with _bulk_objects():
        return _trial_runs(client, experiment_id, sweep)


def search_all(client, experiment_id: str, filter_string: str, *, order_by: list[str] | None = None,
               view=None) -> list[Any]:
    """Every run the search matches, one page of SEARCH_PAGE runs at a time; ``view``: MLflow's ViewType."""
    out, token = [], None
    while True:
        kwargs = {"run_view_type": view} if view is not None else {}
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=SEARCH_PAGE,
                                  order_by=order_by, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _trial_runs(client, experiment_id: str, sweep: str) -> dict[str, list[Any]]:
    runs: dict[str, list[Any]] = {}
    for run in search_all(client, experiment_id, f"tags.sweep = {filter_value(sweep)}",
                          order_by=["attributes.start_time DESC"]):
        if run.data.tags.get("kind") != "sweep":  # the sweep's parent run (robustsweep.sweep_run) is no trial's
            runs.setdefault(run.data.tags.get("trial_id", ""), []).append(run)
    return runs


def read_sweep_runs(uri: str, experiment: str, sweep: str) -> tuple[Any, str | None, dict[str, list[Any]]]:
    """(a read-only client, the experiment's id or None, :func:`trial_runs`) for the reading commands."""
    client = make_client(uri, read_only=True)
    exp = client.get_experiment_by_name(experiment)
    return client, (exp.experiment_id if exp else None), (trial_runs(client, exp.experiment_id, sweep) if exp else {})


def read_sweep_runs_cached(uri: str, experiment: str, sweep: str) -> tuple[Any, str | None, dict[str, list[Any]], Any]:
    """:func:`read_sweep_runs` through the local copy of the sweep's ended runs (robustsweep.run_cache), with
    that copy (None where there is no experiment or the cache is off): for status, audit and the report."""
    from .run_cache import cached_trial_runs

    client = make_client(uri, read_only=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, None, {}, None
    runs, cache = cached_trial_runs(client, uri, exp.experiment_id, sweep)
    return client, exp.experiment_id, runs, cache


def metric_histories(client, runs: list[Any], keys: list[str] | None = None) -> dict[str, dict[str, list[Any]]]:
    """Every logged point of the runs' metrics (only ``keys``, when given): run id -> key -> points sorted by
    (step, timestamp). In bulk: one call per metric key and chunk of runs (see above); run by run only on a
    store that offers neither bulk read."""
    wanted: dict[str, list[str]] = {}
    for run in runs:
        for key in run.data.metrics:
            if keys is None or key in keys:
                wanted.setdefault(key, []).append(run.info.run_id)
    out: dict[str, dict[str, list[Any]]] = {run.info.run_id: {} for run in runs}
    fetch, chunk = _bulk_history(client)
    with _bulk_objects():
        for key, run_ids in sorted(wanted.items()):
            for start in range(0, len(run_ids), chunk):
                for run_id, metric in fetch(run_ids[start:start + chunk], key):
                    out[run_id].setdefault(key, []).append(metric)
    for histories in out.values():
        for points in histories.values():
            points.sort(key=lambda m: (m.step, m.timestamp))
    return out


def _bulk_history(client):
    """(fetch(run_ids, key) -> [(run id, Metric)], runs per call) for the client's store."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if callable(getattr(store, "get_metric_history_bulk", None)):  # MLflow's SQL store
        def from_sql(run_ids: list[str], key: str) -> list[tuple[str, Any]]:
            return [(m.run_id, m) for m in store.get_metric_history_bulk(run_ids, key, max_results=2**62)]

        return from_sql, HISTORY_CHUNK_SQL
    if callable(getattr(store, "get_host_creds", None)):  # an MLflow server (RestStore)
        def from_server(run_ids: list[str], key: str) -> list[tuple[str, Any]]:
            from mlflow.entities import Metric
            from mlflow.utils.rest_utils import http_request_safe

            reply = http_request_safe(store.get_host_creds(), "/ajax-api/2.0/mlflow/metrics/get-history-bulk", "GET",
                                      params={"run_id": run_ids, "metric_key": key, "max_results": HISTORY_MAX_HTTP})
            points = reply.json().get("metrics", [])
            if len(points) >= HISTORY_MAX_HTTP:  # cut at the server's limit: read these runs one by one
                return by_run(run_ids, key)
            return [(p["run_id"], Metric(p["key"], p.get("value", 0.0), p.get("timestamp", 0), p.get("step", 0)))
                    for p in points]

        def by_run(run_ids: list[str], key: str) -> list[tuple[str, Any]]:
            return [(run_id, m) for run_id in run_ids for m in client.get_metric_history(run_id, key)]

        return from_server, HISTORY_CHUNK_HTTP

    def one_by_one(run_ids: list[str], key: str) -> list[tuple[str, Any]]:
        return [(run_id, m) for run_id in run_ids for m in client.get_metric_history(run_id, key)]

    return one_by_one, 1


def trial_state(runs: list[Any]) -> tuple[str, Any]:
    """A trial's state from its MLflow runs (newest first), with the run that decides it:
    ("finished", its newest FINISHED run), ("pending", None), ("running", the newest run: RUNNING) or
    ("failed", the newest run: FAILED or KILLED). Shared by status, audit, export and the report."""
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if finished:
        return "finished", finished[0]
    if not runs:
        return "pending", None
    return ("running" if runs[0].info.status == "RUNNING" else "failed"), runs[0]


def _existing_run(uri: str, experiment: str, sweep: str, trial_id: str, patience: float | None = None):
    """This trial's MLflow run from an earlier attempt, preferring a FINISHED one.

    ``patience`` (inside a trial): wait up to that many seconds for a server that does not answer
    (TrackingUnavailable after that); None fails at once.
    """
    def search(client, experiment_id: str):
        runs = client.search_runs([experiment_id],
                                  filter_string=(f"tags.sweep = {filter_value(sweep)} and "
                                                 f"tags.trial_id = {filter_value(trial_id)}"),
                                  order_by=["attributes.start_time DESC"])
        return trial_state(runs)[1]

    return _patient_search(uri, experiment, patience, search)


def sweep_parent_id(uri: str, experiment: str, sweep: str, patience: float | None = None) -> str | None:
    """The id of the sweep's parent run (robustsweep.sweep_run), for a trial's run to nest under; None where
    the sweep has none. ``patience`` as for :func:`_existing_run`."""
    from .sweep_run import parent_run_id

    return _patient_search(uri, experiment, patience, lambda client, experiment_id: parent_run_id(
        client, experiment_id, sweep))


def _patient_search(uri: str, experiment: str, patience: float | None, search):
    """``search(client, experiment_id)`` on the store at ``uri`` (None where the experiment does not exist),
    tried again for ``patience`` seconds while the server does not answer."""
    import time

    deadline = time.monotonic() + (patience or 0.0)
    while True:
        try:
            client = make_client(uri, patience)
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                return None
            return search(client, exp.experiment_id)
        except Exception as exc:
            if patience is None or isinstance(exc, (UserError, TrackingUnavailable)) or not is_unavailable(exc):
                raise
            if time.monotonic() >= deadline:
                raise TrackingUnavailable(f"The MLflow tracking server at {uri} cannot be searched: "
                                          f"{str(exc).splitlines()[0]}") from None
            print(f"robustsweep: MLflow search failed ({str(exc).splitlines()[0][:200]}); trying again", flush=True)
            time.sleep(5)


# ---------------------------------------------------------------------------------------------
# status


@dataclass
class SweepStatus:
    name: str
    counts: dict[str, int]
    total: int
    tracking_uri: str
    experiment: str
    experiment_dir: str
    failures: list[tuple[str, str]]
    driver: str = "gone"
    experiment_id: str | None = None
    #: finished/total and the estimated time left (robustsweep.progress).
    progress: str = ""
    #: the sweep's parent MLflow run (robustsweep.sweep_run), None before its first launch with parents
    parent_id: str | None = None


def _ray_retries(run, max_failures: int) -> bool:
    """Whether Ray tries a trial again after its run's failed attempt (FailureConfig's max_failures)."""
    tags = run.data.tags
    try:
        attempts = int(tags.get("failed_attempts", "0"))
    except ValueError:
        return False
    return tags.get("retryable") == "1" and 0 < attempts <= max_failures


def _stopped_with_its_sweep(run) -> bool:
    """Whether the run ended FAILED because its sweep stopped mid-trial (ray_backend.TrialInterrupted, named here
    by its text: this module does not import Ray)."""
    return run.data.tags.get("error", "").startswith("TrialInterrupted: ")


def _resumed(run) -> bool:
    """Whether the run was continued from an epoch checkpoint (``resumed_from_epoch``): its span from start to
    end then holds the break between its attempts (a trial continued by the next session's ``resume`` carries
    the hours in between)."""
    return "resumed_from_epoch" in run.data.tags


def trial_duration(run) -> float | None:
    """What a finished trial cost in wall seconds, for ``status``'s estimate: its ``trial_seconds`` (summed over
    its attempts, breaks between them left out); for runs logged before that metric, end minus start, except
    where the run was resumed (:func:`_resumed`), so it gives None."""
    seconds = run.data.metrics.get(TRIAL_SECONDS)
    if seconds is not None:
        return float(seconds)
    if _resumed(run) or not (run.info.end_time and run.info.start_time):
        return None
    return (run.info.end_time - run.info.start_time) / 1000


#: Trial states that `status` counts, in the order it prints them.
STATUS_KEYS = ("pending", "running", "interrupted", "finished", "pruned", "collapsed", "diverged", "failed")


def status(name: str, storage_path: str | None = None) -> SweepStatus:
    """Counts of trials per state, from MLflow; a RUNNING run with no live driver counts as interrupted. A
    search's trials are those sampled so far (their runs), and the rest of its num_samples are pending."""
    from .saved_sweep import load_saved_sweep
    from .search import searched_ids
    from .sweep_run import parent_run_id

    saved = load_saved_sweep(name, storage_path)
    client, experiment_id, runs, _ = read_sweep_runs_cached(saved.tracking_uri, saved.experiment, name)
    driver = driver_state(saved.storage_path, name)
    counts = {k: 0 for k in STATUS_KEYS}
    failures = []
    intervals: list[tuple[float, float]] = []  # the finished trials' (start, end), seconds, but resumed ones
    durations: list[float] = []  # what each cost (trial_duration), where known
    ids, total = list(saved.trial_ids), len(saved.trial_ids)
    if saved.search is not None:
        sampled = searched_ids(runs, saved.search.group)
        ids += sampled
        total += max(saved.search.num_samples, len(sampled))
        counts["pending"] += max(0, saved.search.num_samples - len(sampled))
    for trial_id in ids:  # ids only: the trials' settings are not needed (nor validated) here
        state, run = trial_state(runs.get(trial_id, []))
        if state == "finished" and run.info.end_time and run.info.start_time:
            if not _resumed(run):
                intervals.append((run.info.start_time / 1000, run.info.end_time / 1000))
            durations += [d for d in [trial_duration(run)] if d is not None]
        if state == "finished":
            outcome = run.data.tags.get("outcome", "finished")
            counts[outcome if outcome in ("collapsed", "diverged", "pruned") else "finished"] += 1
        elif state in ("running", "failed") and _stopped_with_its_sweep(run):  # `resume` continues it: not done
            # under a live driver it waits in Ray's queue: its run, reopened when Ray starts it again, loses the
            # error tag. A RUNNING one carrying it was killed by the stop before it could be marked FAILED.
            counts["interrupted" if driver == "gone" else "pending"] += 1
        elif state == "running":
            counts["interrupted" if driver == "gone" else "running"] += 1
        elif state == "failed" and driver != "gone" and _ray_retries(run, saved.max_failures):
            counts["running"] += 1  # a failed attempt that Ray, still driving the sweep, tries again
        else:
            counts[state] += 1
            if state == "failed":
                failures.append((trial_id, run.data.tags.get("error", run.info.status)))
    done = sum(counts[k] for k in ("finished", "pruned", "collapsed", "diverged", "failed"))
    # as many at a time as run now; with none running (the driver stopped), as many as ran at a time before
    parallel = counts["running"] or observed_at_once(intervals)
    return SweepStatus(name, counts, total, saved.tracking_uri, saved.experiment,
                       saved.experiment_dir, failures, driver, experiment_id,
                       progress_line(done, total, durations, parallel),
                       parent_run_id(client, experiment_id, name) if experiment_id else None)
