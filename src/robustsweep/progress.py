"""How far a sweep has got, and roughly how long the rest will take, from its finished trials' durations."""

from __future__ import annotations

import statistics


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
