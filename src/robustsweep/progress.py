"""How far a sweep has got, and roughly how long the rest will take, from its finished trials' durations."""

from __future__ import annotations

import statistics
import sys

from .metrics import TRIAL_SECONDS


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def observed_at_once(intervals: list[tuple[float, float]]) -> int:
    """How many trials ran at a time, on average, while any ran: the trials' summed durations over the length
    of the union of their (start, end) intervals, rounded (at least 1). What ``status`` assumes for the rest
    of a sweep whose driver is stopped (nothing runs now to count), so that a sweep that ran two at a time
    is not estimated at twice its time left: breaks between sessions, when nothing ran, do not count."""
    spans = sorted((start, end) for start, end in intervals if end > start)
    if not spans:
        return 1
    busy, (low, high) = 0.0, spans[0]
    for start, end in spans[1:]:
        if start > high:
            busy += high - low
            low, high = start, end
        else:
            high = max(high, end)
    busy += high - low
    return max(1, round(sum(end - start for start, end in spans) / busy))


def progress_line(done: int, total: int, durations: list[float], parallel: int) -> str:
    """``12/144 trials done; about 7 h 10 min left (mean 7.2 min a trial, 2 at a time)``.

    The estimate is the remaining trials times the mean duration of the trials that finished here,
    divided by how many run at once: a rough figure that assumes the rest cost what the first did.
    """
    head = f"{done}/{total} trials done"
    left = total - done
    if left <= 0:
        return head
    if not durations and not done:
        return f"{head}; time left unknown until a trial finishes"
    if not durations:  # the finished trials are resumed runs from before trial_seconds: their spans hold breaks
        return f"{head}; time left unknown until a trial that ran in one go finishes"
    mean = statistics.fmean(durations)
    parallel = max(parallel, 1)
    return (f"{head}; about {_duration(left * mean / parallel)} left (mean {_duration(mean)} a trial over "
            f"{len(durations)} finished, {parallel} at a time)")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ray_progress_callback(total: int, finished_before: int = 0):
    """A Ray Tune callback that prints :func:`progress_line` to stderr each time a trial completes.

    It counts from the trials' states, not from its own tally: the callback is pickled with the Tuner when a
    sweep is launched and comes back unchanged on ``resume``, where the trials that ended before are
    TERMINATED from the start. Ray calls it while the completing trial is still RUNNING, so that one is counted
    done and not among those running. ``total`` is the sweep's number of trials (a search's samples, of which
    only those sampled so far are in ``trials``); ``finished_before``, those that had finished before the
    launch and are not in ``trials`` (a launch runs only the rest).

    It goes into the Tuner's pickled state, so it holds no caller's function: Ray's tqdm support replaces
    ``builtins.print``, and a callback holding ``print`` itself then cannot be pickled.
    """
    from ray.tune import Callback

    class Progress(Callback):
        def __init__(self):
            self.durations: list[float] = []

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            # trial_seconds sums over attempts; a pruned trial's last result lacks it: Ray's time_total_s then
            seconds = result.get(TRIAL_SECONDS) or result.get("time_total_s")
            if not result.get("already_finished") and seconds:
                self.durations.append(float(seconds))
            others = [t for t in trials if t is not trial]
            done = finished_before + 1 + sum(1 for t in others if t.status in ("TERMINATED", "ERROR"))
            running = 1 + sum(1 for t in others if t.status == "RUNNING")
            line = progress_line(done, max(total, finished_before + len(trials)), self.durations, running)
            _to_stderr(f"robustsweep: {line}")

    return Progress()
