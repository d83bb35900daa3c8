"""The equivalence margin of "no change" and "constant" claims: the seed-to-seed spread.

A claim that a setting does not change a measurement (weight decay leaves robustness alone, the
constant lr/batch-size ratio keeps accuracy constant) is tested for equivalence within a margin. The
margin is the **pooled seed-to-seed standard deviation** of that measurement: over every configuration
of the dataset that the sweep ran with two or more seeds, the square root of the pooled within-
configuration variance, sum((n_i - 1) s_i^2) / sum(n_i - 1). Why that margin:

* it is the change that re-running one configuration with another seed makes as a matter of course, so
  a smaller change is not one this sweep can call a change of configuration;
* the study ran one seed per configuration (its figures and Table 2 show no spread), so it could not
  have told a smaller change from chance either, and its "no significant change" can mean no more;
* it is on the measurement's own scale at each eps (an attack ratio at eps 0.15 varies across seeds far
  more than at eps 0.03) and, for the top eigenvalue, on a log scale (a ratio).

Seed offsets count in it: a seed whose every run is more robust is part of what a re-run gives.
Collapsed and diverged runs are left out. Without replicated configurations there is no margin and a
no-change claim stays inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...metrics import HESSIAN_TOP_EIG
from .selection import KEYS, settings

#: A configuration is every setting but the seed.
CONFIGURATION = [k for k in KEYS if k != "seed"]


@dataclass(frozen=True)
class Margin:
    value: float
    configurations: int   # configurations with 2+ seeds that it pools
    runs: int

    def source(self) -> str:
        if not self.configurations:
            return "no margin: no configuration has 2+ seeds"
        return f"margin: seed SD over {self.configurations} configurations"


def seed_spread(df: pd.DataFrame, dataset: str, metric: str) -> Margin:
    """The pooled seed-to-seed standard deviation of ``metric`` over the dataset's replicated configurations."""
    if df.empty or metric not in df:
        return Margin(math.nan, 0, 0)
    runs = settings(df[(df["dataset"] == dataset) & ~df["diverged"].astype(bool) & ~df["collapsed"].astype(bool)])
    value = runs[metric].astype(float)
    if metric == HESSIAN_TOP_EIG:
        value = np.log(value.where(value > 0))
    runs = runs.assign(value=value).dropna(subset=["value"])
    keyed = runs[CONFIGURATION].astype(object).where(runs[CONFIGURATION].notna(), "-")
    grouped = runs.assign(**{k: keyed[k] for k in CONFIGURATION}).groupby(CONFIGURATION)["value"]
    n, var = grouped.count(), grouped.var(ddof=1)
    replicated = n >= 2
    dof = int((n[replicated] - 1).sum())
    if not dof:
        return Margin(math.nan, 0, 0)
    pooled = float(((n[replicated] - 1) * var[replicated]).sum() / dof)
    return Margin(math.sqrt(pooled), int(replicated.sum()), int(n[replicated].sum()))
