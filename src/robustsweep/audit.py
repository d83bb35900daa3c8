"""`robustsweep audit`: no trial lost, none duplicated. One FINISHED MLflow run per trial, checked.

Retries, driver kills, ``resume`` and ``import`` all write runs into the same experiment; the
promise is that each trial of the sweep ends with exactly one FINISHED run. The audit reads every
run of the sweep and lists what breaks that promise:

* *duplicated*: a trial with more than one FINISHED run;
* *lost*: a trial with no run at all while the sweep says it is done (with ``complete=True``), or
  whose runs all ended FAILED or KILLED;
* *stray*: a run tagged with the sweep whose trial id the sweep does not have (a renamed group, an
  edited grid);
* *not finished*: trials still pending or running (not an error unless ``complete=True``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .launch import resolve_sweep, trial_runs, trial_state
from .tracking import make_client


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

    def ok(self, complete: bool = False) -> bool:
        unfinished = self.pending or self.running or self.failed
        return not self.duplicated and not self.stray and not (complete and unfinished)

    def lines(self) -> list[str]:
        out = [f"sweep {self.name}: {self.trials} trials; {self.finished} with exactly one FINISHED run "
               f"({', '.join(f'{n} {k}' for k, n in sorted(self.outcomes.items()))})",
               f"duplicated (more than one FINISHED run): {len(self.duplicated)}",
               f"failed (no FINISHED run, last attempt failed): {len(self.failed)}",
               f"stray runs (trial id not in the sweep): {len(self.stray)}",
               f"not yet run: {len(self.pending)}; running or interrupted: {len(self.running)}"]
        out += [f"  duplicated {t}: {n} FINISHED runs" for t, n in self.duplicated]
        out += [f"  failed {t}" for t in self.failed]
        out += [f"  stray run of trial {t}" for t in self.stray]
        return out


def audit(sweep: str, tracking_uri: str | None = None, storage_path: str | None = None) -> Audit:
    name, uri, experiment, trials = resolve_sweep(sweep, tracking_uri, storage_path)
    client = make_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = trial_runs(client, exp.experiment_id, name) if exp else {}
    result = Audit(name, len(trials), 0)
    expected = {t.trial_id for t in trials}
    lists = {"pending": result.pending, "running": result.running, "failed": result.failed}
    for trial in trials:
        mine = runs.get(trial.trial_id, [])
        state, run = trial_state(mine)
        finished = sum(r.info.status == "FINISHED" for r in mine)
        if finished > 1:
            result.duplicated.append((trial.trial_id, finished))
        elif state == "finished":
            result.finished += 1
            result.outcomes[run.data.tags.get("outcome", "finished")] += 1
        else:
            lists[state].append(trial.trial_id)
    result.stray = sorted(t for t in runs if t not in expected)
    return result
