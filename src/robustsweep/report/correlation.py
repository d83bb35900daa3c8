"""Spearman rank correlation between curvature and robustness, with its p-value and n."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats


#: Up to this many pairs the p-value is exact: every permutation of one ranking is enumerated (8! = 40,320).
EXACT_MAX_N = 8


def spearman(x, y) -> tuple[float, float, int]:
    """(rho, two-sided p-value, n) over the pairs where both values are finite.

    rho is Pearson's correlation of the ranks (ties get their average rank). For n <= 8 the p-value is
    exact: the fraction of all n! pairings of the ranks whose |rho| is at least the observed one (so
    rho = -1 with n = 4 gives 2/24 = 0.083, not the t approximation's 0). Above that it uses the t
    distribution with n - 2 degrees of freedom, t = rho * sqrt((n - 2) / (1 - rho^2)), as
    scipy.stats.spearmanr does by default.
    """
    frame = pd.DataFrame({"x": x, "y": y}).astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    n = len(frame)
    if n < 3 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return math.nan, math.nan, n
    rx, ry = frame["x"].rank(method="average").to_numpy(), frame["y"].rank(method="average").to_numpy()
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if n <= EXACT_MAX_N:
        return rho, _exact_p_value(rx, ry, rho), n
    if abs(rho) >= 1.0:
        return rho, 0.0, n
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    return rho, float(2 * stats.t.sf(abs(t), n - 2)), n


def _exact_p_value(rx: np.ndarray, ry: np.ndarray, rho: float) -> float:
    """Two-sided permutation p-value of Spearman's rho: all n! orders of ``ry`` against ``rx``."""
    orders = np.array(list(itertools.permutations(ry)))
    cx = rx - rx.mean()
    cy = orders - orders.mean(axis=1, keepdims=True)
    rhos = (cy @ cx) / (np.sqrt((cy ** 2).sum(axis=1)) * np.sqrt((cx ** 2).sum()))
    return float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def correlation_table(df: pd.DataFrame, ratio_columns: list[str], eig_column: str = "hessian_top_eig") -> pd.DataFrame:
    """One row per (scope, attack ratio): scope 'all' and each dataset."""
    ok = df[~df["diverged"]] if "diverged" in df else df
    rows = []
    for column in ratio_columns:
        if column not in ok:
            continue
        scopes = [("all", ok)] + [(d, part) for d, part in ok.groupby("dataset")]
        for scope, part in scopes:
            if part[column].notna().sum() == 0:
                continue
            rho, p, n = spearman(part[eig_column], part[column])
            rows.append({"scope": scope, "attack ratio": column, "spearman rho": rho, "p-value": p, "n": n})
    return pd.DataFrame(rows, columns=["scope", "attack ratio", "spearman rho", "p-value", "n"])
