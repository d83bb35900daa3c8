"""Seed aggregation and the study's tables (Markdown and HTML)."""

from __future__ import annotations

import html
import math
import re

import pandas as pd

from .. import measurements
from ..metrics import TRIAL_SECONDS, phase_seconds_key

#: The configuration a table row stands for (seeds are aggregated over).
ROW_KEYS = ["variant", "batch_size", "lr", "lr_batch_ratio", "momentum", "weight_decay", "schedule", "epochs"]


def aggregate(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof=1; NaN for one seed) and count of each metric per configuration.

    Returns one row per configuration with columns ``<metric>`` (mean), ``<metric>_std``,
    ``<metric>_n``, plus ``diverged`` and ``collapsed`` (runs that did) and ``runs``.
    """
    keyed = df.copy()
    for key in by:  # groupby drops NaN keys unless told otherwise; keep None as a real value
        keyed[key] = keyed[key].astype(object).where(keyed[key].notna(), "-")
    grouped = keyed.groupby(by, sort=True, dropna=False)
    out = grouped[metrics].mean()
    std = grouped[metrics].std(ddof=1).add_suffix("_std")
    count = grouped[metrics].count().add_suffix("_n")
    out = pd.concat([out, std, count], axis=1)
    out["diverged"] = grouped["diverged"].sum().astype(int)
    out["collapsed"] = grouped["collapsed"].sum().astype(int) if "collapsed" in keyed else 0
    out["runs"] = grouped.size()
    return out.reset_index()


def fmt_value(mean: float, std: float | None = None, n: int | None = None, decimals: int | None = None) -> str:
    """'mean ± std (n=...)'; the mean with ``decimals`` places where given (a table passes its column's),
    else 4 significant digits from 100 up and 4 decimals below."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if decimals is not None:
        text = f"{mean:.{decimals}f}"
    else:
        text = f"{mean:.4g}" if abs(mean) >= 100 else f"{mean:.4f}"
    if n is not None and n > 1 and std is not None and not math.isnan(std):
        text += f" ± {std:.2g} (n={n})"
    return text


def display_table(agg: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Strings for display: configuration columns that vary, then 'mean ± std (n)' per metric.

    One format per metric column: 4 decimals where every mean lies in [-1, 1] (accuracies, ratios), none where
    every mean is a whole number above that (epochs: ``29``, not ``29.00``), else as many as give the column's
    largest mean 4 significant digits (``151.5`` above ``23.1``, not ``23.1103``)."""
    def column_decimals(means: pd.Series) -> int:
        largest = means.abs().max()
        if not largest > 1:
            return 4
        return 0 if (means.dropna() % 1 == 0).all() else max(0, 4 - math.ceil(math.log10(largest)))

    varying = [k for k in by if agg[k].nunique(dropna=False) > 1] or by[:1]
    decimals = {m: column_decimals(agg[m].astype(float)) for m in metrics}
    rows = []
    for _, r in agg.iterrows():
        row = {k: r[k] for k in varying}
        for m in metrics:
            row[m] = fmt_value(r[m], r[f"{m}_std"], int(r[f"{m}_n"]), decimals[m])
        for outcome in ("diverged", "collapsed"):
            row[outcome] = f"{int(r[outcome])}/{int(r['runs'])}" if r[outcome] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]).replace("\n", "; ") for c in cols) + " |")
    return "\n".join(lines)


#: Column headers for people (the HTML page); tables.md and the CSV files keep the metric keys.
COLUMN_LABELS = {"batch_size": "batch size", "lr_batch_ratio": "lr / batch size", "weight_decay": "weight decay",
                 "clean_acc": "clean accuracy", "hessian_top_eig": "top Hessian eigenvalue",
                 "attack ratio": "attack ratio", "spearman rho": "Spearman rho"}


#: Attacks as column headers name them: AutoAttack's own clean accuracy is the base of its ratios, and PGD's on
#: AutoAttack's images (``autoattack_pgd``) shares it.
ATTACK_LABELS = {"fgsm": "FGSM", "pgd": "PGD", "autoattack": "AutoAttack", "autoattack_pgd": "PGD (AutoAttack's images)"}


def column_label(column: str) -> str:
    """``pgd_ratio_eps0.15`` -> ``PGD / clean, eps 0.15``; ``fgsm_acc_eps0.03`` -> ``FGSM accuracy, eps 0.03``."""
    if column in COLUMN_LABELS:
        return COLUMN_LABELS[column]
    attack = re.fullmatch(r"(fgsm|pgd|autoattack|autoattack_pgd)_(acc|ratio)_eps(.+)", column)
    if attack:
        name, what, eps = attack.groups()
        what = "accuracy" if what == "acc" else "/ clean"
        return f"{ATTACK_LABELS[name]} {what}, eps {eps}"
    return column.replace("_", " ")


def to_html(table: pd.DataFrame) -> str:
    """An HTML table with readable headers; 'mean ± std (n)' cells break before the ±, to stay narrow."""
    head = "".join(f"<th>{html.escape(column_label(str(c)))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(_html_cell(r[c]) for c in table.columns) + "</tr>"
                   for _, r in table.iterrows())
    return (f'<div class="scroll"><table class="results"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _html_cell(value) -> str:
    """A <td>: numbers right-aligned, 'mean ± std (n)' broken before the ±, text left with its line breaks."""
    raw = _cell(value)
    mean, sep, spread = raw.partition(" ± ")
    if sep:
        return f'<td class="num">{html.escape(mean)}<br><span class="sd">± {html.escape(spread)}</span></td>'
    try:
        float(raw)
        return f'<td class="num">{html.escape(raw)}</td>'
    except ValueError:
        return "<td>" + "<br>".join(html.escape(line) for line in raw.split("\n")) + "</td>"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return "" if value is None else str(value)


#: The phases every trial spends its time in, in order (columns of runs.csv, seconds); the test passes
#: are summed over the epochs. The measurements' phases (``seconds_<phase>``) follow them.
TRAINING_COST_COLUMNS = {"seconds_training": "training", "seconds_test_passes": "test passes, all epochs",
                         "seconds_clean_eval": "clean evaluation"}


def _cost_columns(runs: pd.DataFrame) -> dict[str, str]:
    """runs.csv's seconds columns that some run has, each with its label: training's first, then every
    measurement's phase in the order the runs took them (built-ins by their label, plugins' by phase)."""
    labels = {phase_seconds_key(cls.phase): cls.label for cls in measurements.BUILTIN.values()}
    phases = [c for c in runs if c.startswith("seconds_") and c not in TRAINING_COST_COLUMNS]
    named = {**TRAINING_COST_COLUMNS, **{c: labels.get(c, c.removeprefix("seconds_")) for c in phases}}
    return {c: label for c, label in named.items() if c in runs and runs[c].notna().any()}


#: The cost table's column of what whole trials cost (``trial_seconds``: the trial code's start to its end, over
#: attempts), and where only some runs logged it, how many did.
WHOLE_TRIAL, WHOLE_TRIAL_RUNS = "whole trial, s/trial", "trials with whole-trial time"


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean seconds per trial in each phase, per variant, and the sweep's total hours (a last row).

    Process start, data loading and MLflow are not in the phases: the sum is a lower bound on a trial's wall
    time, which the last column gives where the runs logged it (``trial_seconds``, over the runs that did;
    where not all did, a column says how many). The rows are the finished, collapsed and diverged runs the
    report reads: pruned trials are in none. A phase's mean is over the runs that took it (none: blank); the
    sum is the mean of each run's own sum, so runs that skipped a phase count it as nothing."""
    columns = _cost_columns(runs)
    if runs.empty or not columns:
        return pd.DataFrame()
    whole = TRIAL_SECONDS in runs and runs[TRIAL_SECONDS].notna().any()
    partly = whole and runs[TRIAL_SECONDS].isna().any()
    rows = []
    for variant, part in runs.groupby("variant"):
        row = {"variant": variant, "trials": len(part)}
        row.update({label: round(float(part[c].mean()), 2) for c, label in columns.items()})
        row["sum of phases, s/trial"] = round(float(part[list(columns)].sum(axis=1, min_count=1).mean()), 2)
        if whole:
            row[WHOLE_TRIAL] = round(float(part[TRIAL_SECONDS].mean()), 2)
        if partly:
            row[WHOLE_TRIAL_RUNS] = int(part[TRIAL_SECONDS].notna().sum())
        rows.append(row)
    total = {"variant": "all (hours, summed)", "trials": len(runs)}
    total.update({label: round(float(runs[c].sum()) / 3600, 3) for c, label in columns.items()})
    total["sum of phases, s/trial"] = round(sum(float(runs[c].sum()) for c in columns) / 3600, 3)
    if whole:
        total[WHOLE_TRIAL] = round(float(runs[TRIAL_SECONDS].sum()) / 3600, 3)
    if partly:
        total[WHOLE_TRIAL_RUNS] = int(runs[TRIAL_SECONDS].notna().sum())
    return pd.DataFrame(rows + [total])
