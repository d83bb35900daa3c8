"""Figures 1-5 laid out as in the study: which runs each one shows, and the figure files.

Each figure selects runs by what they are (dataset, schedule, momentum, ...), not by sweep group,
so baselines merge across groups as the study draws them: momentum 0 and weight decay 0 come from
the constant-rate runs, the constant schedule sits beside the step schedule, and Adam shares the
panels of the SGD variants it is compared with. A figure's rows are the attack radii; its panels
are clean accuracy, FGSM and PGD ratio at that radius, and the top Hessian eigenvalue, each against
batch size; its lines are the configurations it compares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from ..metrics import CLEAN_ACC, HESSIAN_TOP_EIG, attack_key
from .claims.selection import fitted
from .figures import Lines, _panel_grid, _save, draw_stability_bounds, line_identity, lines_by, metric_label


def _plain(df: pd.DataFrame) -> pd.Series:
    """No momentum, no weight decay."""
    return (df["momentum"].fillna(0) == 0) & (df["weight_decay"].fillna(0) == 0)


def _constant_rate(df: pd.DataFrame) -> pd.Series:
    return df["lr_batch_ratio"].isna()


def _constant_schedule(df: pd.DataFrame) -> pd.Series:
    return df["schedule"].fillna("constant") == "constant"


def _sgd(df: pd.DataFrame) -> pd.Series:
    return df["variant"] == "sgd"


def _has_sgd_variant(runs: pd.DataFrame) -> bool:
    """"SGD variants": some run is one (Adam and AdamW alone are not)."""
    return bool((~runs["variant"].astype(str).str.startswith("adam")).any())


@dataclass(frozen=True)
class StudyFigure:
    number: int
    title: str
    #: Which MNIST runs the figure shows.
    select: Callable[[pd.DataFrame], pd.Series]
    #: The settings that tell its lines apart (the batch size is the x axis).
    lines: tuple[str, ...]
    #: The setting the figure is about: drawn only when the runs hold more than one value of it.
    compares: str
    #: Attack radii drawn as rows (None: every radius of the runs).
    eps: tuple[float, ...] | None = None
    #: What the title promises beyond ``compares`` (a figure whose runs do not hold it is left out).
    holds: Callable[[pd.DataFrame], bool] = lambda runs: True


STUDY_FIGURES = (
    StudyFigure(1, "MNIST: SGD variants with constant learning rate",
                lambda d: _constant_rate(d) & _constant_schedule(d) & _plain(d), ("variant", "lr"), "variant",
                holds=_has_sgd_variant),
    StudyFigure(2, "MNIST: SGD variants with constant LR/BS ratio",
                lambda d: ~_constant_rate(d) & _constant_schedule(d) & _plain(d), ("variant", "lr_batch_ratio"),
                "variant", holds=_has_sgd_variant),
    StudyFigure(3, "Impact of momentum on minibatch SGD",
                lambda d: _sgd(d) & _constant_rate(d) & _constant_schedule(d) & (d["weight_decay"].fillna(0) == 0),
                ("momentum", "lr"), "momentum", eps=(0.03,)),
    StudyFigure(4, "Impact of weight regularization",
                lambda d: _sgd(d) & _constant_rate(d) & _constant_schedule(d) & (d["momentum"].fillna(0) == 0),
                ("weight_decay", "lr"), "weight_decay"),
    StudyFigure(5, "Impact of learning rate annealing",
                lambda d: _sgd(d) & _constant_rate(d) & _plain(d), ("schedule", "lr"), "schedule"),
)


def study_runs(df: pd.DataFrame, figure: StudyFigure) -> pd.DataFrame:
    """The finished MNIST runs one figure draws (diverged runs have nothing to draw; runs trained to a training
    accuracy are the under-training control, not the study's training)."""
    mnist = df[(df["dataset"] == "mnist") & ~df["diverged"] & df["batch_size"].notna() & ~fitted(df)]
    return mnist[figure.select(mnist)] if not mnist.empty else mnist


def study_lines(runs: pd.DataFrame, figure: StudyFigure, metric: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, mean ± std over seeds per batch size) for each line of a panel."""
    keys = [k for k in figure.lines if runs[k].astype(str).nunique() > 1 or k == figure.compares]
    part = runs[runs[metric].notna()]
    return lines_by(part, keys, metric) if not part.empty else []


def study_figure(df: pd.DataFrame, figure: StudyFigure, eps_values: list[float], path: Path) -> Path | None:
    runs = study_runs(df, figure)
    if runs.empty or runs["batch_size"].nunique() < 2:
        return None
    if runs[figure.compares].astype(str).nunique() < 2 or not figure.holds(runs):
        # e.g. no momentum runs beside the baseline, or Adam alone under "SGD variants": the title
        # would not say what the figure holds
        return None
    rows = [e for e in (figure.eps or eps_values) if e in eps_values] or eps_values[:1]
    columns = lambda e: [CLEAN_ACC, attack_key("fgsm", "ratio", e), attack_key("pgd", "ratio", e),  # noqa: E731
                         HESSIAN_TOP_EIG]
    fig, axes, spare = _panel_grid(4 * len(rows), width=4.3, height=3.4, max_cols=4, sharey=False)
    lines = Lines()  # a line's colour is its variant's, its style the other setting's, in every panel
    batch_sizes = sorted(int(b) for b in runs["batch_size"].unique())
    for r, e in enumerate(rows):
        for c, metric in enumerate(columns(e)):
            ax = axes[4 * r + c]
            for label, line in study_lines(runs, figure, metric):
                variant, setting = line_identity(label, line, runs)
                lines.add(ax, line["batch_size"], line[metric], line[f"{metric}_std"], variant=variant,
                          setting=setting)
            ax.set_xscale("log", base=2)
            ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
            ax.minorticks_off()
            if metric == HESSIAN_TOP_EIG:
                ax.set_yscale("log")
                draw_stability_bounds(ax, runs)
            ax.set_xlabel("batch size")
            ax.set_title(metric_label(metric), fontsize=9)
            ax.grid(True, alpha=0.3)
    lines.draw(fig)
    row_note = "; ".join(f"row {i + 1}: eps = {e:g}" for i, e in enumerate(rows))
    return _save(fig, spare, f"Figure {figure.number}. {figure.title} ({row_note})", path)
