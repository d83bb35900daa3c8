"""The report's section on a search (robustsweep.search): how many trials it sampled, finished and pruned,
its best trial under the constraints, and for two objectives the Pareto front (a figure) and the
non-dominated trials (a table). ``search.csv`` lists every searched trial with its objectives, whether it
met the constraints and whether it is on the front."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..search import Search, feasible, non_dominated


def search_table(table: pd.DataFrame, search: Search) -> pd.DataFrame:
    """The searched trials that finished (a row per run of the runs table), with ``feasible`` and, for two
    objectives, ``non_dominated`` (among the feasible, finished ones; collapsed and diverged trials take no part)."""
    columns = ["trial_id", "outcome", *search.space, *dict.fromkeys(search.metrics() + [c.metric for c in
                                                                                       search.constraints])]
    if table.empty or "group" not in table:
        return pd.DataFrame(columns=columns + ["feasible", "non_dominated"])
    part = table[table["group"] == search.group]
    part = part[[c for c in columns if c in part]].copy()
    for c in columns:
        if c not in part:
            part[c] = None
    rows = part.to_dict("records")
    part["feasible"] = [r["outcome"] == "finished" and feasible(r, search.constraints) and
                        all(_number(r.get(m)) for m in search.metrics()) for r in rows]
    usable = part[part["feasible"]]
    front = pd.Series(False, index=part.index)
    if len(search.objectives) == 2 and not usable.empty:
        points = [tuple(float(r[m]) for m in search.metrics()) for r in usable.to_dict("records")]
        front.loc[usable.index] = non_dominated(points, [o.mode for o in search.objectives])
    part["non_dominated"] = front
    first = search.objectives[0]
    return part.sort_values(first.metric, ascending=first.mode == "min", na_position="last")


def _number(value: Any) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def pareto_figure(rows: pd.DataFrame, search: Search, path: Path) -> Path | None:
    """Both objectives of every finished searched trial; the feasible ones filled, the front joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = search.metrics()
    done = rows[rows["outcome"] == "finished"].dropna(subset=[x, y])
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    infeasible = done[~done["feasible"]]
    ok = done[done["feasible"]]
    if not infeasible.empty:
        ax.scatter(infeasible[x], infeasible[y], facecolors="none", edgecolors="#999", label="misses a constraint")
    ax.scatter(ok[x], ok[y], color="#1f77b4", label="meets the constraints" if search.constraints else "finished")
    front = ok[ok["non_dominated"]].sort_values(x)
    if not front.empty:
        ax.plot(front[x], front[y], "-o", color="#d62728", label="Pareto front (non-dominated)")
    ax.set_xlabel(f"{x} ({search.objectives[0].mode})")
    ax.set_ylabel(f"{y} ({search.objectives[1].mode})")
    ax.set_title(f"Search {search.group!r}: {len(done)} finished trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def search_section(table: pd.DataFrame, problems: list[dict[str, str]], search: Search, out: Path,
                   to_html, to_markdown) -> tuple[str, list[str], list[Path]]:
    """(the section's HTML, its Markdown lines, its figures); writes search.csv."""
    rows = search_table(table, search)
    rows.to_csv(out / "search.csv", index=False)
    pruned = sum(1 for p in problems if p["kind"] == "pruned" and p["trial_id"].startswith(f"{search.group}-"))
    unfinished = sum(1 for p in problems if p["kind"] in ("failed", "unfinished")
                     and p["trial_id"].startswith(f"{search.group}-"))
    goal = ", ".join(f"{o.mode} {o.metric}" for o in search.objectives)
    constraint = " and ".join(map(str, search.constraints)) or "none"
    head = (f"{search.algorithm} search over {', '.join(search.space)}: {goal}; constraints: {constraint}; "
            f"num_samples {search.num_samples}. Finished: {int((rows['outcome'] == 'finished').sum())}; "
            f"pruned (stopped early by ASHA, kept out of every statistic): {pruned}; collapsed or diverged: "
            f"{int((rows['outcome'] != 'finished').sum())}; failed or unfinished: {unfinished}; meeting the "
            f"constraints: {int(rows['feasible'].sum())}.")
    shown_cols = ["trial_id", *search.space, *dict.fromkeys(search.metrics() + [c.metric for c in search.constraints])]
    figures: list[Path] = []
    if len(search.objectives) == 1:
        best = rows[rows["feasible"]].head(1)
        title = "Best trial (meets the constraints)"
        body = (to_html(_fmt(best[shown_cols])) if not best.empty
                else "<p>No finished trial meets the constraints.</p>")
        md = to_markdown(_fmt(best[shown_cols])) if not best.empty else "No finished trial meets the constraints."
    else:
        best = rows[rows["non_dominated"]]
        title = "Non-dominated trials (the Pareto front, among those meeting the constraints)"
        figure = pareto_figure(rows, search, out / "search_pareto.png")
        body = (to_html(_fmt(best[shown_cols])) if not best.empty
                else "<p>No finished trial meets the constraints.</p>")
        md = to_markdown(_fmt(best[shown_cols])) if not best.empty else "No finished trial meets the constraints."
        if figure is not None:
            figures.append(figure)
            caption = (f"{' against '.join(reversed(search.metrics()))}: every finished searched trial; "
                       "filled: meets the constraints; red: the non-dominated ones.")
            body += (f'<figure><img src="{figure.name}" alt="Pareto front"><figcaption>'
                     f"{html.escape(caption)}</figcaption></figure>")
            md += f"\n\n![Pareto front]({figure.name})\n\n{caption}"
    markdown = [head, "", f"### {title}", "", md, ""]
    return f"<p>{html.escape(head)}</p><h3>{html.escape(title)}</h3>{body}", markdown, figures


def _fmt(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
                           for c in frame.columns})
