"""Seed aggregation and the study's tables (Markdown and HTML)."""

from __future__ import annotations

import html
import math

import pandas as pd

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


def fmt_value(mean: float, std: float | None = None, n: int | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{mean:.4g}" if abs(mean) >= 100 else f"{mean:.4f}"
    if n is not None and n > 1 and std is not None and not math.isnan(std):
        text += f" ± {std:.2g} (n={n})"
    return text


def display_table(agg: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Strings for display: configuration columns that vary, then 'mean ± std (n)' per metric."""
    varying = [k for k in by if agg[k].nunique(dropna=False) > 1] or by[:1]
    rows = []
    for _, r in agg.iterrows():
        row = {k: r[k] for k in varying}
        for m in metrics:
            row[m] = fmt_value(r[m], r[f"{m}_std"], int(r[f"{m}_n"]))
        for outcome in ("diverged", "collapsed"):
            row[outcome] = f"{int(r[outcome])}/{int(r['runs'])}" if r[outcome] else ""
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_cell(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def to_html(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in table.columns) + "</tr>"
                   for _, r in table.iterrows())
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:g}"
    return "" if value is None else str(value)
