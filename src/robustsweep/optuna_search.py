"""Ray Tune's OptunaSearch as a search of robustsweep's uses it (a module of its own: importing it imports Ray,
which checking a sweep file must not)."""

from __future__ import annotations

import math
from typing import Any, Mapping

from ray.tune.search.optuna import OptunaSearch

from .search import PRUNED, Constraint


class ConstrainedOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch with the search's constraints set on each Optuna trial before it is told
    (``optuna.trial.Trial.set_constraint``: Optuna 5's way; TPE keeps infeasible trials out of its good set),
    a trial's outcome told as Optuna's state (ASHA's stop: PRUNED; failed or diverged: FAIL), and no
    intermediate values (the objectives exist only at a trial's end; ASHA, not Optuna, prunes)."""

    constraints: list[Constraint] = []

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return None

    def _constraint_values(self, metrics: Mapping[str, Any]) -> dict[str, float] | None:
        values = {}
        for c in self.constraints:
            v = metrics.get(c.metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return None
            values[str(c)] = float(c.violation(float(v)))
        return values

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        outcome = result.get("outcome")
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            if outcome in ("failed", "diverged"):
                return super().on_trial_complete(trial_id, None, error=True)
            if outcome is None:  # stopped by the scheduler: no objective values, Optuna's PRUNED
                return super().on_trial_complete(trial_id, None, error=False)
            constraints = self._constraint_values(result) if self.constraints else None
            if constraints is not None:
                for key, value in constraints.items():
                    self._ot_trials[trial_id].set_constraint(key, value)
        return super().on_trial_complete(trial_id, result, error)

    def tell_finished(self, sample: Mapping[str, Any], metrics: Mapping[str, float], outcome: str) -> None:
        """A trial that finished before this searcher existed (a set-aside Ray state, a relaunch over MLflow)."""
        import optuna
        from optuna.trial import TrialState

        params = {f"sample/{k}": v for k, v in sample.items()}
        if set(params) != set(self._space):
            return  # a run of another space (an edited file): Optuna cannot place it
        names = self._metric if isinstance(self._metric, list) else [self._metric]
        values = [metrics.get(m) for m in names]
        state = TrialState.COMPLETE
        if outcome == PRUNED:
            state, values = TrialState.PRUNED, None
        elif outcome != "finished" or any(v is None or math.isnan(v) for v in values):
            state, values = TrialState.FAIL, None
        attrs = {}
        constraints = self._constraint_values(metrics) if self.constraints and state == TrialState.COMPLETE else None
        for key, value in (constraints or {}).items():
            attrs[f"constraints:{key}"] = value
        trial = optuna.trial.create_trial(state=state, values=values, params=params, distributions=self._space,
                                          system_attrs=attrs)
        self._ot_study.add_trial(trial)
