"""The study's figures: each measurement against batch size, one line per variant, one panel per regime."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import ROW_KEYS, aggregate  # noqa: E402

LABELS = {
    "clean_acc": "clean test accuracy",
    "hessian_top_eig": "top Hessian eigenvalue (log scale)",
    "train_loss": "training loss",
    "test_acc": "test accuracy",
}


def metric_label(metric: str) -> str:
    if metric in LABELS:
        return LABELS[metric]
    attack, what, eps = metric.split("_", 2)
    eps = eps.removeprefix("eps")
    if what == "acc":
        return f"{attack.upper()} accuracy, eps={eps}"
    return f"{attack.upper()} / clean accuracy, eps={eps}"


def _line_label(row: pd.Series, keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = row[k]
        if k == "variant":
            parts.insert(0, str(v))
        elif k == "schedule":
            parts.append(str(v))  # "constant", "step": no key needed
        elif v not in ("-", None) and not (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _panel_grid(n: int, width: float = 5.2, height: float = 3.9, max_cols: int = 3, sharey: bool = True):
    """A figure with n panels in rows of at most ``max_cols``; returns (fig, the n axes, the spare axes)."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    flat = list(axes.flat)
    return fig, flat[:n], flat[n:]


def _save(fig, spare, title: str, path: Path) -> Path:
    for ax in spare:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(df: pd.DataFrame) -> list[str]:
    """Regimes (groups) that vary the batch size: the ones a batch-size plot says something about."""
    return [g for g, part in df.groupby("group", sort=False) if part["batch_size"].nunique() > 1]


def batch_size_lines(runs: pd.DataFrame, metric: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, points sorted by batch size) for each line of one panel: one line per configuration
    other than the batch size. Under a constant lr/batch-size ratio the rate changes with the batch
    size by design, so the ratio, not the rate, tells lines apart there."""
    line_keys = [k for k in ROW_KEYS if k != "batch_size"]
    if runs["lr_batch_ratio"].notna().any():
        line_keys.remove("lr")
    varying = [k for k in line_keys if runs[k].nunique(dropna=False) > 1]
    return lines_by(runs, ["variant"] + [k for k in varying if k != "variant"], metric)


def lines_by(runs: pd.DataFrame, keys: list[str], metric: str) -> list[tuple[str, pd.DataFrame]]:
    """(label, mean ± std over seeds per batch size, sorted) for each combination of ``keys``."""
    agg = aggregate(runs, keys + ["batch_size"], [metric])
    return [(_line_label(line.iloc[0], keys), line.sort_values("batch_size"))
            for _, line in agg.groupby(keys, sort=True, dropna=False)]


def batch_size_figure(df: pd.DataFrame, dataset: str, metric: str, path: Path) -> Path | None:
    """One panel per regime; x = batch size (log2), one line per configuration; error bars = seed std."""
    part = df[(df["dataset"] == dataset) & ~df["diverged"] & df[metric].notna()]
    groups = _panels(part)
    if not groups:
        return None
    fig, axes, spare = _panel_grid(len(groups))
    for ax, group in zip(axes, groups):
        for label, line in batch_size_lines(part[part["group"] == group], metric):
            ax.errorbar(line["batch_size"], line[metric], yerr=line[f"{metric}_std"].fillna(0.0), marker="o",
                        capsize=3, label=label)
        ax.set_xscale("log", base=2)
        if metric == "hessian_top_eig":
            ax.set_yscale("log")
        ax.set_title(f"{dataset}: {group}")
        ax.set_xlabel("batch size")
        ax.set_ylabel(metric_label(metric))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, spare, f"{metric_label(metric)} against batch size ({dataset}; mean ± std over seeds)", path)


def learning_curves_figure(df: pd.DataFrame, curves: dict[str, pd.DataFrame], dataset: str, path: Path) -> Path | None:
    """Test accuracy per epoch for every run, one panel per regime."""
    part = df[df["dataset"] == dataset]
    groups = list(dict.fromkeys(part["group"]))
    if not groups:
        return None
    fig, axes, spare = _panel_grid(len(groups))
    for ax, group in zip(axes, groups):
        runs = part[part["group"] == group]
        varying = [k for k in ROW_KEYS + ["seed"] if runs[k].astype(str).nunique() > 1]
        for _, run in runs.iterrows():
            curve = curves.get(run["run_id"])
            if curve is None or curve["test_acc"].dropna().empty:
                continue
            label = _line_label(run, ["variant"] + [k for k in varying if k != "variant"])
            ax.plot(curve.index, curve["test_acc"], marker=".", linewidth=1, label=label)
        ax.set_title(f"{dataset}: {group}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS["test_acc"])
        ax.grid(True, alpha=0.3)
        if len(runs) <= 12:
            ax.legend(fontsize=6)
    return _save(fig, spare, f"Learning curves ({dataset}): test accuracy after each epoch", path)


def correlation_figure(df: pd.DataFrame, ratio_columns: list[str], path: Path) -> Path | None:
    """Scatter of each attack ratio against the top Hessian eigenvalue, coloured by dataset."""
    ok = df[~df["diverged"] & df["hessian_top_eig"].notna()]
    columns = [c for c in ratio_columns if c in ok and ok[c].notna().any()]
    if not columns:
        return None
    fig, axes, spare = _panel_grid(len(columns), 4.2, 3.6, max_cols=4, sharey=False)
    for ax, column in zip(axes, columns):
        for dataset, part in ok[ok[column].notna()].groupby("dataset"):
            ax.scatter(part["hessian_top_eig"], part[column], s=18, alpha=0.8, label=dataset)
        ax.set_xscale("log")
        ax.set_xlabel(LABELS["hessian_top_eig"])
        ax.set_ylabel(metric_label(column))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, spare, "Curvature against robustness: one point per trial", path)
