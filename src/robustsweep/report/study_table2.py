"""The study's Table 2 (CIFAR-10) beside this sweep's runs of the same settings.

The published values are ``study_table2.csv`` in this package, copied from the study's Table 2
(Choudhary 2020; ``../shared/study/table2.csv``): 17 rows, clean, FGSM and PGD accuracy in percent at
eps 0.02 and the largest Hessian eigenvalue. Each row names its settings; :func:`table2_beside_ours`
selects our CIFAR-10 runs with those settings and shows, per measurement, the study's value, ours as
mean ± sample standard deviation over seeds (n runs), and the difference as a percentage of the
study's value, or ``not run`` where the sweep has no such run.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..metrics import CLEAN_ACC, HESSIAN_TOP_EIG, attack_key
from .claims.selection import CONSTANT_LR, RATIO, Runs, fitted

#: The study's CIFAR-10 attack radius, at which every Table 2 attack column is measured (section 3.2).
TABLE2_EPS = 0.02
#: Table 2's columns: (its column, our metric, factor from our units to the study's).
MEASUREMENTS = (("clean_acc_pct", CLEAN_ACC, 100.0), ("fgsm_acc_pct", attack_key("fgsm", "acc", TABLE2_EPS), 100.0),
                ("pgd_acc_pct", attack_key("pgd", "acc", TABLE2_EPS), 100.0),
                ("hessian_top_eig", HESSIAN_TOP_EIG, 1.0))
LABELS = {"clean_acc_pct": "clean accuracy, %", "fgsm_acc_pct": "FGSM accuracy, %", "pgd_acc_pct": "PGD accuracy, %",
          "hessian_top_eig": "top eigenvalue"}


def published() -> pd.DataFrame:
    """The study's Table 2, row by row, as published."""
    with resources.files(__package__).joinpath("study_table2.csv").open() as handle:
        return pd.read_csv(handle, comment="#")


def row_runs(row: pd.Series) -> Runs:
    """Our runs with a Table 2 row's settings."""
    ratio = not pd.isna(row["lr_batch_ratio"])
    return Runs("cifar10", variant=row["variant"], regime=RATIO if ratio else CONSTANT_LR,
                lr=None if ratio else float(row["lr"]), lr_batch_ratio=float(row["lr_batch_ratio"]) if ratio else None,
                momentum=float(row["momentum"]), weight_decay=float(row["weight_decay"]), schedule=row["schedule"],
                batch_sizes=(int(row["batch_size"]),))


def _ours(runs: pd.DataFrame, metric: str, factor: float, study: float) -> tuple[str, str]:
    """(ours as mean ± sd (n), the difference in percent of the study's value), or why there is no value."""
    if runs.empty:
        return "not run", ""
    values = (runs[metric] * factor).dropna().astype(float) if metric in runs else pd.Series(dtype=float)
    if values.empty:
        if "collapsed" in runs and runs["collapsed"].astype(bool).all() and metric == HESSIAN_TOP_EIG:
            return "no value (collapsed)", ""
        return (f"not run at eps {TABLE2_EPS:g}" if metric != CLEAN_ACC and metric != HESSIAN_TOP_EIG
                else "not measured"), ""
    mean = float(values.mean())
    text = f"{mean:.4g}" if len(values) == 1 else f"{mean:.4g} ± {values.std(ddof=1):.2g} (n={len(values)})"
    return text, f"{100 * (mean - study) / study:+.1f}%" if study else ""


def table2_beside_ours(df: pd.DataFrame) -> pd.DataFrame:
    """One row per Table 2 row: its regime, then per measurement the study's value, ours and the difference.
    Runs trained to a training accuracy (the under-training control) are not the study's training: left out."""
    df = df[~fitted(df)]
    rows = []
    for _, row in published().iterrows():
        runs = row_runs(row).select(df) if not df.empty else df
        out = {"Table 2 section": row["section"], "regime": row["regime"]}
        for column, metric, factor in MEASUREMENTS:
            label = LABELS[column]
            ours, difference = _ours(runs, metric, factor, row[column])
            out[f"{label}: study"] = f"{row[column]:g}"
            out[f"{label}: ours"] = ours
            out[f"{label}: difference"] = difference
        rows.append(out)
    return pd.DataFrame(rows)


def runs_matched(df: pd.DataFrame) -> int:
    """How many Table 2 rows this sweep has runs for (the study's training: runs trained to a training
    accuracy left out, as in :func:`table2_beside_ours`)."""
    df = df[~fitted(df)]
    return sum(not row_runs(row).select(df).empty for _, row in published().iterrows()) if not df.empty else 0


__all__ = ["published", "table2_beside_ours", "runs_matched", "TABLE2_EPS"]
