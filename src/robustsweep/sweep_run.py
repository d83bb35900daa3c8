"""The sweep's own MLflow run: one parent per sweep, every trial's run nested under it.

MLflow's UI draws runs whose ``mlflow.parentRunId`` tag names another run as a tree under it, so the
experiment's runs table shows each sweep as one row that opens onto its trials. The parent holds what
describes the sweep as a whole: the sweep file and the saved sweep (artifacts ``sweep/``), the flags it
was launched with, its size, the counts of its trials by state (metrics ``trials_*``, logged again at the
end of every launch, resume and import) and, after ``report --log-to-mlflow``, the report (``report/``).

It is found by its tags (``sweep`` = the sweep's name, ``kind`` = ``sweep``), never by an id kept
elsewhere: ``launch`` and ``resume`` reopen the parent they find, so a sweep never has a second one,
and a sweep launched before parents existed gets one on its next launch, resume or import, with its
earlier runs nested under it (adopted). The parent carries no ``trial_id`` tag:
:func:`robustsweep.runs.trial_runs` leaves it out of the trials' runs.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .tracking import _retry_locked, filter_value, run_page

#: Tags that mark a sweep's parent run (with ``sweep`` = its name).
KIND_TAG, KIND = "kind", "sweep"
#: MLflow's tag naming a run's parent; the UI nests runs by it.
PARENT_TAG = "mlflow.parentRunId"
#: The trial counts the parent logs (``trials_<state>``), after the states `status` counts.
SUMMARY_PREFIX = "trials_"


def is_parent(run) -> bool:
    return run.data.tags.get(KIND_TAG) == KIND


def find_parents(client, experiment_id: str, sweep: str) -> list[Any]:
    """The sweep's parent runs, newest first (one, unless runs were copied in by hand)."""
    return list(client.search_runs([experiment_id],
                                   filter_string=f"tags.sweep = {filter_value(sweep)} and tags.{KIND_TAG} = '{KIND}'",
                                   order_by=["attributes.start_time DESC"]))


def parent_run_id(client, experiment_id: str, sweep: str) -> str | None:
    """The id of the sweep's parent run, or None where it has none (a trial run outside launch/resume)."""
    parents = find_parents(client, experiment_id, sweep)
    return parents[0].info.run_id if parents else None


def ensure_parent(client, experiment_id: str, sweep: str, *, trials: int, flags: str = "",
                  description: str = "", files: Callable[[], Mapping[str, bytes]] | None = None,
                  runs: Mapping[str, list[Any]] | None = None, names: Mapping[str, str] | None = None,
                  log: Callable[[str], None] = print) -> str:
    """The sweep's parent run, reopened (status RUNNING) or made: its id.

    ``files``: what gives the artifacts of a new parent (name -> bytes, under ``sweep/``). ``runs``: the
    sweep's trial runs (robustsweep.runs.trial_runs) to nest under it where they are not yet (runs logged
    before the sweep had a parent, or imported by a version without parents); ``names``: their trials'
    run names.
    """
    parents = find_parents(client, experiment_id, sweep)
    if parents:
        parent_id = parents[0].info.run_id
        if parents[0].info.status != "RUNNING":
            _retry_locked(client.update_run)(parent_id, status="RUNNING")
    else:
        tags = {"sweep": sweep, KIND_TAG: KIND, **({"sweep_flags": flags} if flags else {}),
                "mlflow.note.content": (description or f"Sweep {sweep}") +
                f"\n\nThe sweep's {trials} trials are the runs nested under this one."}
        parent_id = _retry_locked(client.create_run)(experiment_id, run_name=f"sweep {sweep}", tags=tags).info.run_id
        _retry_locked(client.log_param)(parent_id, "trials", str(trials))
        if flags:
            _retry_locked(client.log_param)(parent_id, "flags", flags[:6000])
        if files:
            with tempfile.TemporaryDirectory() as folder:
                for name, data in files().items():
                    (Path(folder) / name).write_bytes(data)
                    _retry_locked(client.log_artifact)(parent_id, str(Path(folder) / name), "sweep")
    adopted = adopt(client, parent_id, (run for mine in (runs or {}).values() for run in mine), names or {})
    if adopted:
        log(f"robustsweep: {adopted} earlier runs of sweep {sweep} nested under its parent run {parent_id}")
    return parent_id


def adopt(client, parent_id: str, runs: Iterable[Any], names: Mapping[str, str]) -> int:
    """Nest ``runs`` that are not yet under ``parent_id``; a run still named by its trial id gets the name
    of what it is (``names``: trial id -> robustsweep.sweep.Trial.run_name). Returns how many."""
    count = 0
    for run in runs:
        if is_parent(run) or run.data.tags.get(PARENT_TAG) == parent_id:
            continue
        _retry_locked(client.set_tag)(run.info.run_id, PARENT_TAG, parent_id)
        trial_id = run.data.tags.get("trial_id", "")
        if trial_id in names and run.info.run_name == trial_id:
            _retry_locked(client.set_tag)(run.info.run_id, "mlflow.runName", names[trial_id])
        count += 1
    if count:
        from .run_cache import bump_generation

        bump_generation(client, parent_id)  # tags changed on ended runs: local copies of them are stale
    return count


def trial_counts(trial_ids: Iterable[str], runs: Mapping[str, list[Any]]) -> dict[str, int]:
    """Trials by state, from their runs (robustsweep.runs.trial_runs): finished, with collapsed and
    diverged (and any other outcome a trial ends with) apart, failed, running, pending."""
    from .runs import trial_state

    counts = {"finished": 0, "collapsed": 0, "diverged": 0, "failed": 0, "running": 0, "pending": 0}
    for trial_id in trial_ids:
        state, run = trial_state(runs.get(trial_id, []))
        if state == "finished":
            state = run.data.tags.get("outcome", "finished")
        counts[state] = counts.get(state, 0) + 1
    return counts


def sweep_counts(trial_ids: Iterable[str], runs: Mapping[str, list[Any]], search=None) -> tuple[dict[str, int], int]:
    """(the trials' counts by state, the sweep's size): the grid's trials, and a search's
    (robustsweep.search.Search) sampled trials with the samples not yet drawn as pending."""
    ids = list(trial_ids)
    total = len(ids)
    if search is not None:
        from .search import searched_ids

        sampled = searched_ids(runs, search.group)
        ids += sampled
        total += max(search.num_samples, len(sampled))  # as `status` counts a search over its budget
    counts = trial_counts(ids, runs)
    if search is not None:
        counts["pending"] += max(0, search.num_samples - len(sampled))
    return counts, total


def record_search(client, parent_id: str, search, runs: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A search's space and its best trial(s) so far, on the parent: artifact ``sweep/search.json``
    (robustsweep.search.search_summary: the space, the trials by outcome, the best ones with settings and
    metrics), tag ``search_best`` (their trial ids, the Pareto front's for two objectives) and, for one
    objective, metric ``best_<objective>`` at step = the searched trials finished so far. The summary."""
    import json

    from mlflow.entities import Metric

    from .search import search_summary

    summary = search_summary(search, dict(runs))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "search.json"
        path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        _retry_locked(client.log_artifact)(parent_id, str(path), "sweep")
    best = summary["best"]
    _retry_locked(client.set_tag)(parent_id, "search_best", ", ".join(b["trial_id"] for b in best) or "none yet")
    finished = sum(n for outcome, n in summary["trials"].items() if outcome not in ("running", "failed", "pending"))
    values = best[0]["metrics"] if len(search.objectives) == 1 and best else {}
    metrics = [Metric(f"best_{o.metric}", float(values[o.metric]), int(time.time() * 1000), finished)
               for o in search.objectives if values.get(o.metric) is not None]
    if metrics:
        _retry_locked(client.log_batch)(parent_id, metrics=metrics)
    return summary


def summarize(client, parent_id: str, counts: Mapping[str, int], total: int, *, end: str | None = None) -> None:
    """Log the trials' counts by state on the parent (``trials_total``, ``trials_finished``, ...); ``end``:
    the status to end it with (FINISHED when every trial is done, KILLED when the driver was interrupted,
    FAILED when it stopped on an error), None to leave it as it is."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    step = _next_step(client, parent_id)
    metrics = [Metric(f"{SUMMARY_PREFIX}{k}", float(v), now, step) for k, v in {"total": total, **counts}.items()]
    _retry_locked(client.log_batch)(parent_id, metrics=metrics)
    if end is not None:
        _retry_locked(client.set_terminated)(parent_id, status=end)


def _next_step(client, parent_id: str) -> int:
    history = client.get_metric_history(parent_id, f"{SUMMARY_PREFIX}total")
    return max((m.step for m in history), default=-1) + 1


def parent_page(uri: str, experiment_id: str, parent_id: str) -> str:
    """Where to see the sweep's parent run: its page on a server, or how to open it for a local store."""
    if uri.startswith(("http://", "https://")):
        return run_page(experiment_id, parent_id, uri)
    return f"mlflow ui --backend-store-uri {uri}, then {run_page(experiment_id, parent_id)}"


def saved_files(source: str, saved_json: bytes) -> dict[str, bytes]:
    """The parent's ``sweep/`` artifacts: the sweep file as given (where it is a readable file) and the
    expanded sweep that ``resume`` reads (robustsweep-sweep.json)."""
    files = {"robustsweep-sweep.json": saved_json}
    if source and os.path.isfile(source):
        files[Path(source).name] = Path(source).read_bytes()
    return files


def new_finished_parent(client, experiment_id: str, sweep: str, trials: int) -> str:
    """A parent made outside a launch (for an import or a report of a sweep that has none), ended FINISHED
    at once: no driver runs it. Its id."""
    parent_id = ensure_parent(client, experiment_id, sweep, trials=trials, log=lambda _: None)
    _retry_locked(client.set_terminated)(parent_id, status="FINISHED")
    return parent_id


def attach_report(uri: str, experiment: str, sweep: str, folder: Path, trials: int) -> tuple[str, str]:
    """Put the report's files (``folder``) under the sweep's parent run's ``report/`` artifacts, the parent
    made (and ended FINISHED) for a sweep that has none; the experiment's description (shown above its
    runs in the UI) points at it. (the parent's id, its page)."""
    from .tracking import get_or_create_experiment, make_client

    client = make_client(uri)
    experiment_id = get_or_create_experiment(client, experiment, uri)
    parent_id = parent_run_id(client, experiment_id, sweep) or new_finished_parent(client, experiment_id, sweep,
                                                                                   trials)
    for path in sorted(Path(folder).iterdir()):
        if path.is_file():
            _retry_locked(client.log_artifact)(parent_id, str(path), "report")
    _retry_locked(client.set_experiment_tag)(
        experiment_id, "mlflow.note.content",
        f"Sweep {sweep}: the report (tables, figures, index.html) is in the sweep's run `sweep {sweep}` "
        f"({parent_id}), under its artifacts' report/; the trials' runs are nested under it.")
    return parent_id, parent_page(uri, experiment_id, parent_id)


def sweep_links(uri: str, experiment: str, sweep: str) -> list[str]:
    """Lines naming where the sweep's runs are in MLflow's UI, in its model-training view: the runs table,
    and the sweep's own run with its trials nested under it (where it has one). For a local store, with
    the `mlflow ui` command that serves it."""
    from .tracking import make_client, runs_page

    client = make_client(uri, read_only=True)
    experiment_obj = client.get_experiment_by_name(experiment)
    if experiment_obj is None:
        return []
    served = uri.startswith(("http://", "https://"))
    table = runs_page(experiment_obj.experiment_id, *([uri] if served else []))
    lines = [f"MLflow: the runs of sweep {sweep}: {table}"
             + ("" if served else f" (after `mlflow ui --backend-store-uri {uri}`)")]
    parent_id = parent_run_id(client, experiment_obj.experiment_id, sweep)
    if parent_id:
        page = run_page(experiment_obj.experiment_id, parent_id, *([uri] if served else []))
        lines.append(f"MLflow: the sweep's own run, its trials nested under it: {page}")
    return lines
