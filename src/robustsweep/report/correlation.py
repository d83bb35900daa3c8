"""Spearman rank correlation between curvature and robustness, with its p-value and n."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


def spearman(x, y) -> tuple[float, float, int]:
    """(rho, two-sided p-value, n) over the pairs where both values are finite.

    rho is Pearson's correlation of the ranks (ties get their average rank); the
    p-value uses the t distribution with n - 2 degrees of freedom,
    t = rho * sqrt((n - 2) / (1 - rho^2)), as scipy.stats.spearmanr does by default.
    """
    frame = pd.DataFrame({"x": x, "y": y}).astype(float).replace([np.inf, -np.inf], np.nan).dropna()
    n = len(frame)
    if n < 3 or frame["x"].nunique() < 2 or frame["y"].nunique() < 2:
        return math.nan, math.nan, n
    rx, ry = frame["x"].rank(method="average"), frame["y"].rank(method="average")
    rho = float(np.corrcoef(rx, ry)[0, 1])
    if abs(rho) >= 1.0:
        return rho, 0.0, n
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    return rho, float(2 * stats.t.sf(abs(t), n - 2)), n


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
