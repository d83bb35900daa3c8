"""robustsweep's subclasses of Ray Tune's callback and scheduler classes.

A module of its own (importing it imports Ray, which checking a sweep file must not), and at module level:
Ray pickles a Tuner's callbacks and scheduler into its saved state, and a class that is not importable by
name would be pickled by value, so a resumed sweep would run the code of the day it was launched.

- :class:`Progress`: the driver's progress line each time a trial ends (every sweep).
- :class:`PrunedRuns`: the driver's safety net that marks a run ASHA stopped FINISHED with
  ``outcome = pruned`` (the trial does it itself; this covers a trial process ended first).
- :class:`SearchProgress`: the sweep's parent run follows a search as its trials end (counts, best so far).
- :class:`FinishingASHA`: ASHA that never stops a trial at its last epoch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from .metrics import TRIAL_SECONDS
from .progress import progress_line
from .search import PLANNED_EPOCHS

#: Seconds between two updates of a search's parent run by SearchProgress, at least (the driver writes the
#: last one when it stops): each update reads the sweep's runs inside Tune's event loop. The environment
#: variable ROBUSTSWEEP_SEARCH_PROGRESS_S sets it for a launch.
PROGRESS_EVERY_S = 30.0


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class Progress(Callback):
    """Prints :func:`.progress.progress_line` to stderr each time a trial completes.

    It counts from the trials' states, not from its own tally: a resumed Tuner brings back the callback
    pickled at launch, and the trials that ended before are TERMINATED from the start. Ray calls it while the
    completing trial is still RUNNING, so that one is counted done and not among those running. ``total`` is
    the sweep's number of trials (a search's samples, of which only those sampled so far are in ``trials``);
    ``finished_before``, those that had finished before the launch and are not in ``trials`` (a launch runs
    only the rest). It holds no caller's function: Ray's tqdm support replaces ``builtins.print``, and a
    callback holding ``print`` itself then cannot be pickled.
    """

    def __init__(self, total: int, finished_before: int = 0):
        self.total, self.finished_before = total, finished_before
        self.durations: list[float] = []

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        # trial_seconds sums over attempts; a pruned trial's last result lacks it: Ray's time_total_s then
        seconds = result.get(TRIAL_SECONDS) or result.get("time_total_s")
        if not result.get("already_finished") and seconds:
            self.durations.append(float(seconds))
        others = [t for t in trials if t is not trial]
        done = self.finished_before + 1 + sum(1 for t in others if t.status in ("TERMINATED", "ERROR"))
        running = 1 + sum(1 for t in others if t.status == "RUNNING")
        line = progress_line(done, max(self.total, self.finished_before + len(trials)), self.durations, running)
        print(f"robustsweep: {line}", file=sys.stderr, flush=True)


class PrunedRuns(Callback):
    """A trial its scheduler stopped (its last report an epoch's, with no ``outcome``) has its MLflow run
    FINISHED with ``outcome = pruned``. The trial does that itself when Tune stops it (trial.TrialStopped);
    this covers a trial process ended before its MLflow calls got through. Both may write the run's end,
    a moment apart."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        from .ray_backend import trial_of
        from .runs import _existing_run
        from .tracking import make_client

        result = trial.last_result or {}
        if "outcome" in result or "epoch" not in result:
            return
        try:
            settled = trial_of(trial.config)
            config = settled.config
            run = _existing_run(config.mlflow_tracking_uri, config.mlflow_experiment, trial.config["sweep"],
                                settled.trial_id)
            if run is not None and run.info.status != "FINISHED":
                client = make_client(config.mlflow_tracking_uri)
                client.set_tag(run.info.run_id, "outcome", "pruned")
                client.set_tag(run.info.run_id, "pruned_epoch", str(int(result["epoch"])))
                client.set_terminated(run.info.run_id, status="FINISHED")
        except Exception as exc:  # never the sweep's end: the trial's own path usually did it already
            print(f"robustsweep: could not mark a pruned trial's run: {_first_line(exc)}", flush=True)


class SearchProgress(Callback):
    """Each time a searched trial ends (finished, pruned or failed), at most every ``every_s`` seconds, the
    sweep's parent run logs the trials' counts and records the search's best trial(s) so far
    (sweep_run.summarize and record_search), so the MLflow UI follows the search while it runs. It holds
    names only and finds the parent by its tags."""

    def __init__(self, uri: str, experiment: str, sweep: str, search, every_s: float | None = None):
        if every_s is None:
            every_s = float(os.environ.get("ROBUSTSWEEP_SEARCH_PROGRESS_S", PROGRESS_EVERY_S))
        self.uri, self.experiment, self.sweep, self.search, self.every_s = uri, experiment, sweep, search, every_s
        self._last = -math.inf

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update()

    def _update(self) -> None:
        from .runs import read_sweep_runs_cached, sweep_parent_id
        from .sweep_run import record_search, summarize, sweep_counts
        from .tracking import make_client

        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        try:
            parent_id = sweep_parent_id(self.uri, self.experiment, self.sweep)
            if parent_id is None:
                return
            client, runs = make_client(self.uri), read_sweep_runs_cached(self.uri, self.experiment, self.sweep)[2]
            summarize(client, parent_id, *sweep_counts([], runs, self.search))
            record_search(client, parent_id, self.search, runs)
        except Exception as exc:  # never the sweep's end: the driver records it again when it stops
            print(f"robustsweep: could not record the search's progress on the sweep's run: {_first_line(exc)}",
                  flush=True)


class FinishingASHA(ASHAScheduler):
    """Ray's ASHA, except that a trial is never stopped at its last epoch (``PLANNED_EPOCHS`` in its
    report): it has trained in full and only its measurements are left. Ray's ASHA compares a trial at any
    rung it holds no result of that trial for, and a restored Tuner's scheduler starts with empty rungs (Ray
    saves the scheduler as it was at launch, not as it ran), so a trial restored from its checkpoint and
    reporting its last epoch first would be stopped there."""

    def on_trial_result(self, tune_controller, trial, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("epoch", 0) >= result.get(PLANNED_EPOCHS, math.inf):
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action
