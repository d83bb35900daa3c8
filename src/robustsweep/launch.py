"""Run a sweep on Ray Tune (or in-process with ``debug``) and resume it: the orchestration.

The pieces live beside it: :mod:`robustsweep.runs` (the sweep's MLflow runs, a trial's state, status),
:mod:`robustsweep.saved_sweep` (the expanded sweep saved at launch, which ``resume NAME`` and ``status
NAME`` read), :mod:`robustsweep.ray_backend` (the trainable, Ray's start, the Tuner, the guard) and
:mod:`robustsweep.results` (the table printed at the end).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from .errors import SweepInterrupted, UserError
from .preflight import check_data, check_free_space, check_storage
from .progress import progress_line
from .ray_backend import (STATE_FILE, _Guard, _check_cluster_resources, _collect, _flags_tag, _init_ray, _local,
                          _new_search_tuner, _parent_tag, _new_tuner, _ray_state_problem, _relax_metric_check,
                          _set_aside_ray_state, _settle_auto_gpu, _trainable_with_resources,
                          beside_ray_start, ray_trainable, read_checkpoint_state, read_resume_state)
from .results import SweepResult, _row
from .runs import STATUS_KEYS, SweepStatus, read_sweep_runs_cached, status, trial_runs, trial_state
from .saved_sweep import (DEFAULT_STORAGE, SWEEP_FILE, SavedSweep, _save_spec, load_saved_sweep, resolve_storage,
                          resolve_sweep, spec_json_bytes, spec_to_json)
from .storage import check_driver, driver_record, storage_file
from .sweep_run import ensure_parent, parent_page, record_search, saved_files, summarize, sweep_counts
from .sweep import SweepSpec, Trial
from .tracking import analyze_sqlite, check_server, get_or_create_experiment, make_client

__all__ = ["DEFAULT_STORAGE", "STATE_FILE", "STATUS_KEYS", "SWEEP_FILE", "SavedSweep", "SweepResult", "SweepStatus",
           "launch", "load_saved_sweep", "ray_trainable", "read_checkpoint_state", "read_resume_state",
           "resolve_storage", "resolve_sweep", "resume", "run_debug", "spec_to_json", "status", "storage_file",
           "trial_runs", "trial_state"]


# ---------------------------------------------------------------------------------------------
# launch / resume


def _prepare_tracking(spec: "SweepSpec | SavedSweep") -> tuple[Any, str]:
    """Create the store and experiment on the driver, so trial processes never race to migrate it:
    (a client, the experiment's id)."""
    client = make_client(spec.tracking_uri)  # fails fast, with the fix, when a server does not answer
    try:
        experiment_id = get_or_create_experiment(client, spec.experiment, spec.tracking_uri)
    except Exception as exc:
        from .errors import TrackingError

        raise TrackingError(f"Cannot create MLflow experiment {spec.experiment!r} in {spec.tracking_uri}: {exc}. "
                            "Check that the store is writable and the server is up.") from None
    analyze_sqlite(spec.tracking_uri)
    return client, experiment_id


def _sweep_files(spec: "SweepSpec | SavedSweep") -> dict[str, bytes]:
    """The parent run's ``sweep/`` artifacts: the sweep file and the saved sweep (read back for a resume)."""
    if isinstance(spec, SweepSpec):
        return saved_files(spec.source, spec_json_bytes(spec))
    filesystem, path = storage_file(spec.experiment_dir, SWEEP_FILE)
    with filesystem.open_input_stream(path) as stream:
        return saved_files("", stream.read())


@contextlib.contextmanager
def _sweep_parent(spec: "SweepSpec | SavedSweep", trials: list[Trial], runs: dict[str, list[Any]],
                  log: Callable[[str], None]) -> Iterator[str]:
    """The sweep's parent MLflow run (robustsweep.sweep_run) for the block: reopened or made (with the sweep
    file and the saved sweep as artifacts), earlier runs nested under it; at the end the trials' counts (a
    search's: its sampled trials, the samples not yet drawn pending) and a search's space and best trial so
    far (sweep_run.record_search), and FINISHED, or KILLED for an interrupted driver, FAILED for one stopped
    by an error."""
    search = getattr(spec, "search", None)
    client, experiment_id = _prepare_tracking(spec)
    total = sweep_counts([t.trial_id for t in trials], {}, search)[1]
    parent_id = ensure_parent(client, experiment_id, spec.name, trials=total, flags=spec.flags,
                              description=getattr(spec, "description", ""), files=lambda: _sweep_files(spec), runs=runs,
                              names={t.trial_id: t.run_name for t in trials}, log=log)
    page = parent_page(spec.tracking_uri, experiment_id, parent_id)
    log(f"robustsweep: MLflow parent run of sweep {spec.name}: {page}")
    end = "FAILED"
    try:
        yield parent_id
        end = "FINISHED"
    except SweepInterrupted:
        end = "KILLED"
        raise
    finally:
        # the record of the trials is theirs: a summary lost is said, never raised, and a search's record lost
        # still leaves the counts and the end status
        try:
            now = read_sweep_runs_cached(spec.tracking_uri, spec.experiment, spec.name)[2]
            if search is not None:
                try:
                    record_search(client, parent_id, search, now)
                except Exception as exc:
                    _parent_not_updated(log, parent_id, exc)
            summarize(client, parent_id, *sweep_counts([t.trial_id for t in trials], now, search), end=end)
        except Exception as exc:
            _parent_not_updated(log, parent_id, exc)


def _parent_not_updated(log: Callable[[str], None], parent_id: str, exc: BaseException) -> None:
    log(f"robustsweep: could not update the sweep's parent run {parent_id} ({type(exc).__name__}: "
        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); its trials' runs are unaffected")


def _sweep_runs(uri: str, experiment: str, name: str) -> dict[str, list[Any]]:
    """The sweep's runs by trial id (runs.trial_runs: one bulk read, through the local copy of its ended runs,
    robustsweep.run_cache: a FINISHED run there is one in MLflow, unless deleted, which the copy asks for), {}
    where there is no store or experiment yet (nothing is created here: the preflight checks come first)."""
    from .errors import TrackingError

    try:
        return read_sweep_runs_cached(uri, experiment, name)[2]
    except TrackingError:
        if uri.startswith("sqlite:///"):
            return {}  # no store yet
        raise


def _split_finished(trials: list[Trial], runs: dict[str, list[Any]],
                    log: Callable[[str], None]) -> tuple[list[dict[str, Any]], list[Trial]]:
    """(a result row for each trial that already has a FINISHED run, the trials left to run)."""
    rows, left = [], []
    for trial in trials:
        state, run = trial_state(runs.get(trial.trial_id, []))
        if state == "finished":
            rows.append(_row(trial.trial_id, trial, run.data.tags.get("outcome", "finished"), run.info.run_id,
                             run.data.metrics))
        else:
            left.append(trial)
    if rows:
        log(f"robustsweep: {len(rows)} of {len(trials)} trials already have a FINISHED MLflow run: not run again; "
            f"{len(left)} to run")
    return rows, left



def _search_plan(spec: "SweepSpec | SavedSweep", search, runs: dict[str, list[Any]],
                 log: Callable[[str], None]) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]], list]:
    """A new searcher over a search whose trials may have MLflow runs already (a launch again, imported runs, a
    Ray state set aside): (result rows of its finished trials, samples left to draw, the unfinished trials'
    samples to run first, (sample, metrics, outcome) of the finished ones for Optuna). Never more than
    num_samples trials in all: finished ones count, and unfinished ones are among those left."""
    from .search import sample_of, searched_ids

    rows, told, points = [], [], []
    for trial_id in searched_ids(runs, search.group):
        state, run = trial_state(runs[trial_id])
        sample = sample_of(run.data.params, search)
        if state == "finished":
            outcome = run.data.tags.get("outcome", "finished")
            try:
                trial = search.trial(sample)
            except UserError:  # a run of an edited space: its row without settings
                trial = None
            rows.append(_row(trial_id, trial, outcome, run.info.run_id, run.data.metrics))
            told.append((sample, dict(run.data.metrics), outcome))
        elif len(sample) == len(search.space):
            points.append(sample)
    left = max(0, search.num_samples - len(rows))
    points = points[:left]
    if rows or points:
        log(f"robustsweep: search {search.group}: {len(rows)} of {search.num_samples} trials already have a "
            f"FINISHED MLflow run (told to the searcher, not run again); {len(points)} unfinished go on first; "
            f"{left} to run")
    return rows, left, points, told


def _drive(spec: SweepSpec, runs: dict[str, list[Any]], log: Callable[[str], None], make_tuner=None,
           saved: bytes | None = None):
    """A launch's driver: the sweep's driver record claimed, the sweep saved (``saved``: its file's bytes, when
    made already), and under its parent run the Tuner ``make_tuner()`` gives fitted, stopped cleanly by the
    guard (Ray's ResultGrid); with no ``make_tuner`` (nothing left to run) only the record, the saved sweep and
    the parent's summary (None)."""
    with driver_record(spec.storage_path, spec.name, "launch", log):
        _save_spec(spec, saved)
        with _sweep_parent(spec, list(spec.trials), runs, log):
            if make_tuner is None:
                return None
            tuner = make_tuner()
            with _Guard(spec.name, spec.storage_path, spec.tracking_uri, log) as guard:
                grid = tuner.fit()
            guard.raise_if_stopped()
            return grid


def _launch_search(spec: SweepSpec, address: str | None, verbose: int, log: Callable[[str], None]) -> SweepResult:
    search = spec.search
    runs = _sweep_runs(spec.tracking_uri, spec.experiment, spec.name)
    done, left, points, told = _search_plan(spec, search, runs, log)
    template = search.probe_trial()
    check_data([template.config], local=_local(address))
    if not left:
        _drive(spec, runs, log)
        return SweepResult(spec.name, done, spec.experiment_dir)
    _init_ray(address)
    (settled,) = _settle_auto_gpu([template], log)
    _check_cluster_resources([settled], address, log)
    grid = _drive(spec, runs, log, lambda: _new_search_tuner(spec, search, left, verbose, points, told,
                                                              settled.resources))
    result = _collect(grid, [], spec.name, spec.experiment_dir, scheduled=search.scheduler is not None)
    result.rows[:0] = done
    return result


def launch(spec: SweepSpec, *, address: str | None = None, verbose: int = 1,
           log: Callable[[str], None] = print) -> SweepResult:
    """Run every trial of ``spec`` on Ray Tune (a search: sample num_samples of them); one row per trial.

    Nothing is created (MLflow experiment, storage folder) until the preflight checks pass.
    """
    check_storage(spec.storage_path)
    check_driver(spec.storage_path, spec.name)  # refused before Ray starts; claimed below, atomically
    check_server(spec.tracking_uri)
    if spec.search is not None:
        return _launch_search(spec, address, verbose, log)

    def plan() -> tuple[dict[str, list[Any]], list[dict[str, Any]], list[Trial], bytes]:
        # What finished is known from one read of the sweep's runs: Ray gets only the rest. The saved sweep's
        # bytes are made here too; written only once the driver record is claimed (_drive).
        runs = _sweep_runs(spec.tracking_uri, spec.experiment, spec.name)
        done, left = _split_finished(list(spec.trials), runs, log)
        check_data([t.config for t in left], local=_local(address))
        return runs, done, left, spec_json_bytes(spec)

    if _local(address):  # a local Ray of our own takes seconds to start: the plan is made meanwhile
        runs, done, left, saved = beside_ray_start(address, plan, needs_ray=lambda planned: bool(planned[2]))
    else:
        runs, done, left, saved = plan()
        if left:
            _init_ray(address)
    if not left:  # (a local Ray started meanwhile was shut down again)
        _drive(spec, runs, log, saved=saved)
        return SweepResult(spec.name, done, spec.experiment_dir)
    trials = _settle_auto_gpu(left, log)
    _check_cluster_resources(trials, address, log)
    grid = _drive(spec, runs, log, lambda: _new_tuner(spec, trials, verbose, len(spec.trials)), saved)
    result = _collect(grid, trials, spec.name, spec.experiment_dir)
    result.rows[:0] = done
    return result


def resume(name: str, *, storage_path: str | None = None, address: str | None = None,
           verbose: int = 1, log: Callable[[str], None] = print) -> SweepResult:
    """Restore an interrupted sweep: finished trials stay finished, the rest continue from checkpoints."""
    saved = load_saved_sweep(name, storage_path)
    check_driver(saved.storage_path, name)
    check_free_space(saved.storage_path)
    check_server(saved.tracking_uri)
    search = saved.search
    template = [search.probe_trial()] if search else []
    check_data([t.config for t in saved.trials + template], local=_local(address))
    from ray import tune

    done: list[dict[str, Any]] = []
    with driver_record(saved.storage_path, name, "resume", log):
        analyze_sqlite(saved.tracking_uri)
        _init_ray(address)
        trials = _settle_auto_gpu(saved.trials, log)
        runs = _sweep_runs(saved.tracking_uri, saved.experiment, name)
        with _sweep_parent(saved, saved.trials, runs, log):
            settled = _settle_auto_gpu(template, log)
            _check_cluster_resources(trials + settled, address, log)
            problem = _ray_state_problem(saved.experiment_dir)
            if problem is not None:
                # MLflow knows which trials finished, and each trial's folder holds its checkpoints: run the
                # saved sweep again over them, as a new Ray experiment.
                moved = _set_aside_ray_state(saved.experiment_dir)
                log(f"robustsweep: Ray's experiment state in {saved.experiment_dir} cannot be read ({problem}); "
                    f"set aside as *.unreadable-* ({', '.join(moved)}). Continuing from MLflow and the trials' "
                    f"checkpoints instead: finished trials are not run again, the others continue from their newest "
                    f"readable checkpoint.")
                if search is not None:  # a new searcher, told what finished; the unfinished trials go on first
                    done, left, points, told = _search_plan(saved, search, runs, log)
                    if not left:
                        return SweepResult(name, done, saved.experiment_dir)
                    tuner = _new_search_tuner(saved, search, left, verbose, points, told, settled[0].resources)
                else:
                    done, trials = _split_finished(trials, runs, log)
                    if not trials:
                        return SweepResult(name, done, saved.experiment_dir)
                    tuner = _new_tuner(saved, trials, verbose, len(saved.trial_ids))
            elif not tune.Tuner.can_restore(saved.experiment_dir):
                raise UserError(f"Ray has no restorable experiment state in {saved.experiment_dir} (the driver may have "
                                "died before Ray wrote it). Launch the sweep again: trials already FINISHED in MLflow "
                                "are not trained twice.")
            else:
                # A Tuner state of today's launch (trial ids), of one before issue 23 (full trial dicts) or of a search
                # (samples; Ray restores the searcher and its count of samples, and the scheduler as it was at
                # launch, with empty rungs): the trainable and its resources take any.
                if search is not None:
                    _relax_metric_check()
                tuner = tune.Tuner.restore(saved.experiment_dir,
                                           trainable=_trainable_with_resources(trials, settled[0].resources
                                                                               if settled else None),
                                           resume_unfinished=True, resume_errored=True)
            with _Guard(name, saved.storage_path, saved.tracking_uri, log) as guard:
                grid = tuner.fit()
            guard.raise_if_stopped()
    result = _collect(grid, saved.trials, name, saved.experiment_dir,
                      scheduled=search is not None and search.scheduler is not None)
    result.rows[:0] = done
    return result


def run_debug(spec: SweepSpec, log: Callable[[str], None] = print) -> SweepResult:
    """The same trials, in-process one by one, without Ray (local debug mode)."""
    from .trial import run_trial

    if spec.search is not None:
        raise UserError(f"Sweep {spec.name} is a search: its trials are sampled by Ray Tune's searcher, which debug "
                        "mode does not run. Launch it without --debug, or debug one of its trials with "
                        "`robustsweep run KEY=VALUE ...` at the settings you want to look at.")
    check_server(spec.tracking_uri)
    runs = _sweep_runs(spec.tracking_uri, spec.experiment, spec.name)  # one read of the sweep's runs
    check_data([t.config for t in spec.trials if trial_state(runs.get(t.trial_id, []))[0] != "finished"], local=True)
    with _sweep_parent(spec, list(spec.trials), runs, log) as parent_id:
        rows: list[dict[str, Any]] = []
        durations: list[float] = []
        for i, trial in enumerate(spec.trials, 1):
            existing = trial_state(runs.get(trial.trial_id, []))[1]
            if existing is not None and existing.info.status == "FINISHED":
                log(f"[{i}/{len(spec.trials)}] {trial.trial_id}: already finished (MLflow run {existing.info.run_id})")
                rows.append(_row(trial.trial_id, trial, existing.data.tags.get("outcome", "finished"),
                                 existing.info.run_id, existing.data.metrics))
                continue
            log(f"[{i}/{len(spec.trials)}] {trial.trial_id}")
            started = time.perf_counter()
            try:
                outcome = run_trial(trial.config, run_id=existing.info.run_id if existing else None, log=log,
                                    run_name=trial.run_name,
                                    tags={"sweep": spec.name, "trial_id": trial.trial_id, "group": trial.group,
                                          "mode": "debug", **_flags_tag(spec.flags), **_parent_tag(parent_id)})
                rows.append(_row(trial.trial_id, trial, outcome.status, outcome.run_id, outcome.metrics))
                durations.append(time.perf_counter() - started)
                log(f"robustsweep: {progress_line(i, len(spec.trials), durations, 1)}")
            except UserError:
                raise
            except Exception as exc:  # one failing trial does not lose the others
                log(f"  failed: {type(exc).__name__}: {exc}")
                rows.append(_row(trial.trial_id, trial, "failed", "", {}, f"{type(exc).__name__}: {exc}"))
    return SweepResult(spec.name, rows, "")


