"""The results table a sweep prints when it ends: one row per trial."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sweep import Trial


@dataclass
class SweepResult:
    name: str
    rows: list[dict[str, Any]]
    experiment_dir: str

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["outcome"]] = out.get(row["outcome"], 0) + 1
        return out


def _row(trial_id: str, trial: Trial | None, outcome: str, run_id: str, metrics, error: str = "") -> dict[str, Any]:
    """One line of the results table printed after a sweep."""
    row: dict[str, Any] = {"trial_id": trial_id, "group": trial.group if trial else "?", "outcome": outcome,
                           "run_id": run_id, "error": error}
    if trial is not None:
        c = trial.config
        row.update(variant=c.variant, batch_size=c.batch_size, lr=c.effective_lr, seed=c.seed)
    row.update({k: metrics[k] for k in ("clean_acc", "hessian_top_eig") if k in metrics})
    return row


