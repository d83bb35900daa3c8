"""`robustsweep audit`: no trial lost, none duplicated. One FINISHED MLflow run per trial, checked.

Retries, driver kills, ``resume`` and ``import`` all write runs into the same experiment; the
promise is that each trial of the sweep ends with exactly one FINISHED run. The audit reads every
run of the sweep and lists what breaks that promise:

* *duplicated*: a trial with more than one FINISHED run;
* *lost*: a trial with no run at all while the sweep says it is done (with ``complete=True``), or
  whose runs all ended FAILED or KILLED;
* *stray*: a run tagged with the sweep whose trial id the sweep does not have (a renamed group, an
  edited grid);
* *logged twice*: a run with some metric logged more than once at one step (two drivers on one sweep
  did that, each logging every epoch); every metric history of the sweep's runs is read for it;
* *not finished*: trials still pending or running (not an error unless ``complete=True``);
* *parent runs*: the sweep's own run (robustsweep.sweep_run) that its trials' runs nest under: more
  than one is an error (``resume`` never makes a second); trial runs under another run, or under
  none (a sweep logged before parents existed: its next launch, resume or import nests them), are
  listed.

A search's trials are known once sampled: they are its runs (tag ``group`` = the search's name), and its
``num_samples`` is the count: more sampled trials than that is an error (*over budget*), fewer a search not
yet done (an error with ``complete=True``). Finished and pruned trials both count as done.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .runs import metric_histories, read_sweep_runs_cached, trial_state
from .saved_sweep import resolve
from .sweep import SweepOverrides
from .sweep_run import PARENT_TAG, find_parents


@dataclass
class Audit:
    name: str
    trials: int
    finished: int
    outcomes: Counter = field(default_factory=Counter)
    duplicated: list[tuple[str, int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)
    stray: list[str] = field(default_factory=list)
    #: (trial id, metric key, the steps it was logged at more than once)
    repeated_steps: list[tuple[str, str, list[int]]] = field(default_factory=list)
    #: the sweep's parent runs (ids, newest first): one, or none for a sweep logged before parents existed
    parents: list[str] = field(default_factory=list)
    #: trial ids whose runs are not nested under the parent
    not_nested: list[str] = field(default_factory=list)
    #: a search: (its group, num_samples, trials sampled so far), or None
    search: tuple[str, int, int] | None = None

    @property
    def unsampled(self) -> int:
        return max(0, self.search[1] - self.search[2]) if self.search else 0

    @property
    def over_budget(self) -> int:
        return max(0, self.search[2] - self.search[1]) if self.search else 0

    def ok(self, complete: bool = False) -> bool:
        unfinished = self.pending or self.running or self.failed or self.unsampled
        return (not self.duplicated and not self.stray and not self.repeated_steps and not self.over_budget
                and len(self.parents) <= 1
                and not (complete and unfinished))

    def lines(self) -> list[str]:
        out = [f"sweep {self.name}: {self.trials} trials; {self.finished} with exactly one FINISHED run "
               f"({', '.join(f'{n} {k}' for k, n in sorted(self.outcomes.items()))})",
               f"duplicated (more than one FINISHED run): {len(self.duplicated)}",
               f"failed (no FINISHED run, last attempt failed): {len(self.failed)}",
               f"stray runs (trial id not in the sweep): {len(self.stray)}",
               f"runs with a metric logged twice at one step: {len({t for t, _, _ in self.repeated_steps})}",
               f"not yet run: {len(self.pending)}; running or interrupted: {len(self.running)}",
               f"parent run: {self.parents[0] if len(self.parents) == 1 else len(self.parents)}"
               + ("" if self.parents else " (logged before parent runs existed: the next launch, resume or import "
                                          "makes one)")
               + (f"; trials with runs not nested under it: {len(self.not_nested)}" if self.not_nested else "")]
        if len(self.parents) > 1:
            out += [f"  more than one parent run: {', '.join(self.parents)}"]
        if self.search:
            group, budget, sampled = self.search
            out.append(f"search {group}: {sampled} of num_samples {budget} trials sampled"
                       + (f"; {self.over_budget} over budget" if self.over_budget else "")
                       + (f"; {self.unsampled} not yet sampled" if self.unsampled else ""))
        out += [f"  duplicated {t}: {n} FINISHED runs" for t, n in self.duplicated]
        out += [f"  failed {t}" for t in self.failed]
        out += [f"  stray run of trial {t}" for t in self.stray]
        out += [f"  logged twice: {t}: {key} at steps {steps}" for t, key, steps in self.repeated_steps]
        return out


#: The run_cache fact audit keeps for an ended run: its (metric key, steps logged more than once).
REPEATED_STEPS = "repeated_steps"


def _repeated_steps(histories: dict[str, list]) -> list[tuple[str, list[int]]]:
    """(metric key, steps logged more than once) of one run, from its metric histories."""
    out = []
    for key in sorted(histories):
        counts = Counter(m.step for m in histories[key])
        repeated = sorted(step for step, n in counts.items() if n > 1)
        if repeated:
            out.append((key, repeated))
    return out


def audit(sweep: str, tracking_uri: str | None = None, storage_path: str | None = None,
          overrides: SweepOverrides | None = None) -> Audit:
    """Check the sweep's MLflow runs; ``overrides``: the flags a sweep file was launched with."""
    from .search import searched_ids

    resolved = resolve(sweep, tracking_uri, storage_path, overrides)
    name = resolved.name
    client, experiment_id, runs, cache = read_sweep_runs_cached(resolved.tracking_uri, resolved.experiment, name)
    ids = [t.trial_id for t in resolved.trials]
    if resolved.search is not None:  # the trials sampled so far
        ids += searched_ids(runs, resolved.search.group)
    # every point of every metric of the sweep's runs, in bulk (one call per metric key and chunk of runs), for
    # the steps logged twice: an ended run's were found by an earlier audit (kept in the cache) or are read now
    expected = set(ids)
    repeated: dict[str, list] = {}
    unread = []
    for run in (run for trial_id in expected for run in runs.get(trial_id, [])):
        known = cache.fact(run.info.run_id, REPEATED_STEPS) if cache is not None else None
        if known is None:
            unread.append(run)
        else:
            repeated[run.info.run_id] = [(key, steps) for key, steps in known]
    for run_id, histories in metric_histories(client, unread).items():
        repeated[run_id] = _repeated_steps(histories)
        if cache is not None:
            cache.remember(run_id, REPEATED_STEPS, repeated[run_id])
    if cache is not None:
        cache.save()
    result = Audit(name, len(ids), 0)
    if resolved.search is not None:
        sampled = len(ids) - len(resolved.trials)
        result.search = (resolved.search.group, resolved.search.num_samples, sampled)
        result.trials = len(resolved.trials) + max(resolved.search.num_samples, sampled)
    lists = {"pending": result.pending, "running": result.running, "failed": result.failed}
    for trial_id in ids:
        mine = runs.get(trial_id, [])
        state, run = trial_state(mine)
        finished = sum(r.info.status == "FINISHED" for r in mine)
        if finished > 1:
            result.duplicated.append((trial_id, finished))
        elif state == "finished":
            result.finished += 1
            result.outcomes[run.data.tags.get("outcome", "finished")] += 1
        else:
            lists[state].append(trial_id)
        for run in mine:
            result.repeated_steps += [(trial_id, key, steps) for key, steps in repeated[run.info.run_id]]
    result.stray = sorted(t for t in runs if t not in expected)
    result.parents = [p.info.run_id for p in find_parents(client, experiment_id, name)] if experiment_id else []
    result.not_nested = sorted(t for t in expected for run in runs.get(t, [])[:1]
                               if run.data.tags.get(PARENT_TAG) not in result.parents[:1])
    return result
