"""The study's figures: each measurement against batch size, one line per variant, one panel per regime.

Every figure of a report encodes its lines one way (:class:`Lines`): the colour is the variant's, the
same in every figure of the page (:data:`VARIANT_COLOURS`, Okabe-Ito's colour-blind-safe palette); the
line style and marker tell the other settings apart (lr, momentum, ...); and the figure has one legend,
below its panels, never on them (:func:`legend_clashes` checks).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
import weakref
import zlib
from pathlib import Path

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import ROW_KEYS, aggregate  # noqa: E402

LABELS = {
    "clean_acc": "clean test accuracy",
    "hessian_top_eig": "top Hessian eigenvalue (log scale)",
    "train_loss": "training loss",
    "test_acc": "test accuracy",
    "hessian_trace": "Hessian trace (Hutchinson)",
    "lr_x_top_eig": "last lr x top Hessian eigenvalue",
}


def metric_label(metric: str) -> str:
    """A readable label: the study's keys spelled out, the others from their measurement's declared label."""
    from .. import measurements

    if metric in LABELS:
        return LABELS[metric]
    for name in measurements.names("attack"):
        for what, text in (("acc", "{} accuracy, eps={}"), ("ratio", "{} / clean accuracy, eps={}")):
            prefix = f"{name}_{what}_eps"
            if metric.startswith(prefix):
                label = name.upper() if name in ("fgsm", "pgd") else measurements.get(name).label
                return text.format(label, metric[len(prefix):])
    if metric.startswith("hessian_eig_"):
        return f"Hessian eigenvalue {metric.rsplit('_', 1)[1]} (largest first)"
    return metric.replace("_", " ")


#: Okabe & Ito's colour-blind-safe palette (yellow left out: too pale on white), one colour per variant.
VARIANT_COLOURS = {"sgd": "#0072B2", "svrg": "#009E73", "sgdnoise": "#D55E00", "sgdselective": "#CC79A7",
                   "adam": "#000000", "adamw": "#E69F00"}
#: For a variant not above (a plugin's): picked by its name, so it too has one colour on the whole page.
_SPARE_COLOURS = ("#56B4E9", "#999999", "#8C510A", "#332288")
#: Line styles and markers, taken in order by :class:`Lines` for a figure's settings (lr=0.01, lr=0.1, ...).
LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (6, 2, 1, 2, 1, 2)), "v"),
               ((0, (1, 1)), "P"), ((0, (8, 3)), "X"), ((0, (3, 1, 3, 3)), "*"))
LEGEND_FONTSIZE = 9
#: A figure with more configurations than this names its variants only (learning curves: a line per run).
MAX_NAMED_LINES = 16


def variant_colour(variant) -> str:
    """The colour of a variant's lines and points in every figure (grey where a line mixes variants)."""
    if variant is None:
        return "#666666"
    return VARIANT_COLOURS.get(str(variant)) or _SPARE_COLOURS[zlib.crc32(str(variant).encode()) % len(_SPARE_COLOURS)]


def _shade(colour: str, i: int, n: int) -> str:
    """The i-th of n shades of one colour, dark to light (the hue stays the variant's)."""
    rgb = matplotlib.colors.to_rgb(colour)
    t = -0.45 + 0.9 * i / (n - 1) if n > 1 else 0.0  # -0.45: towards black, +0.45: towards white
    mixed = [c * (1 + t) if t < 0 else c + (1 - c) * t for c in rgb]
    return matplotlib.colors.to_hex(mixed)


class Lines:
    """One figure's lines: collected first, then drawn, and named in one legend below the panels.

    Colour: the line's variant (:func:`variant_colour`). The other settings, ``setting`` (the rest of the
    line's label, ``"lr=0.01"`` or ``"lr=0.1, momentum=0.9"``): the first one by line style, the others by
    marker (the marker follows the line style where lines have one setting only), the most frequent value
    solid; where every line is of one variant the first setting also shades its colour, dark to light.
    ``variant`` None: a line that is not one variant's (grey)."""

    def __init__(self) -> None:
        self._lines: list[tuple] = []

    def add(self, ax, x, y, yerr=None, *, variant=None, setting: str = "") -> None:
        self._lines.append((ax, list(x), list(y), None if yerr is None else list(yerr), variant, setting))

    def styles(self) -> dict[tuple, dict]:
        """(variant, setting) -> matplotlib keywords (color, linestyle, marker) for every line added."""
        def split(setting):
            first, _, rest = setting.partition(", ")
            return first, rest

        def ranks(values):  # the empty setting first, then by how many lines have the value
            count: dict[str, int] = {}
            for v in values:
                count[v] = count.get(v, 0) + 1
            return {v: i for i, v in enumerate(sorted(count, key=lambda v: (v != "", -count[v])))}

        settings = [split(line[5]) for line in self._lines]
        style_rank = ranks([first for first, _ in settings])
        two_part = any(rest for _, rest in settings)
        marker_rank = ranks([rest for _, rest in settings]) if two_part else style_rank
        variants = {line[4] for line in self._lines}
        out = {}
        for *_, variant, setting in self._lines:
            first, rest = split(setting)
            colour = variant_colour(variant)
            if len(variants) == 1 and len(style_rank) > 1:
                colour = _shade(colour, style_rank[first], len(style_rank))
            out[variant, setting] = dict(color=colour, linestyle=LINE_STYLES[style_rank[first] % len(LINE_STYLES)][0],
                                         marker=LINE_STYLES[marker_rank[rest if two_part else first]
                                                            % len(LINE_STYLES)][1])
        return out

    def draw(self, fig, *, errorbars: bool = True, linewidth: float = 1.5):
        """Draws every line; returns the figure's legend (None when no line has a name). Without error bars the
        lines of one panel that share a style are drawn as one polyline broken by NaNs: the same picture, one
        artist where a learning-curve figure of 10,000 runs would otherwise lay out and render 10,000."""
        styles = self.styles()
        entries: dict[tuple, object] = {}
        for ax, x, y, yerr, variant, setting in (self._lines if errorbars else self._joined()):
            label = ", ".join(str(p) for p in (variant, setting) if p not in (None, ""))
            kwargs = dict(styles[variant, setting], markersize=5, linewidth=linewidth, label=label)
            if errorbars:
                handle = ax.errorbar(x, y, yerr=[0.0 if v != v else v for v in yerr] if yerr else None,
                                     capsize=3, **kwargs)
            else:
                (handle,) = ax.plot(x, y, **kwargs)
            entries.setdefault((_variant_rank(variant), label), (label, handle))
        named = [entries[k] for k in sorted(entries) if k[1]]
        return figure_legend(fig, [h for _, h in named], [label for label, _ in named])

    def _joined(self) -> list[tuple]:
        """The lines, those of one panel, variant and setting joined into one, NaN between them (in the order
        first added)."""
        joined: dict[tuple, tuple] = {}
        for ax, x, y, _, variant, setting in self._lines:
            key = (id(ax), variant, setting)
            if key in joined:
                xs, ys = joined[key][1], joined[key][2]
                xs += [math.nan, *x]
                ys += [math.nan, *y]
            else:
                joined[key] = (ax, list(x), list(y), None, variant, setting)
        return list(joined.values())


def _variant_rank(variant) -> tuple:
    names = list(VARIANT_COLOURS)
    return (names.index(variant) if variant in names else len(names), str(variant))


def figure_legend(fig, handles: list, labels: list[str]):
    """The figure's one legend, below its panels (the grid's layout keeps room for it, :func:`_save`), in as
    many columns as fit the figure's width; None when there is nothing to name."""
    if not labels:
        return None
    width = fig.get_figwidth()
    column = 0.9 + 0.085 * max(len(label) for label in labels)  # inches: the handle and the longest label
    most = max(1, min(len(labels), int(width // column)))
    rows = math.ceil(len(labels) / most)
    if fig in _GRIDS:  # room of its own below the panels, in inches
        _GRIDS[fig].legend_height = 0.25 + rows * LEGEND_FONTSIZE * 1.45 / 72
    # anchored in inches from the figure's bottom centre, so the figure may grow above it (:func:`_save`)
    return fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(width / 2, _EDGE),
                      bbox_transform=fig.dpi_scale_trans, ncol=math.ceil(len(labels) / rows),
                      fontsize=LEGEND_FONTSIZE, frameon=False, borderaxespad=0)


def legend_clashes(fig) -> list[str]:
    """What is wrong with a figure's layout: a legend inside a panel (``ax.legend``), more than one figure
    legend, a figure legend overlapping a panel, legend text below ``LEGEND_FONTSIZE``, a panel's labels,
    ticks or title running into another panel's or the figure's title, or anything cut off at the figure's
    edge. Empty when the figure keeps its one legend off its panels and every text in view."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    problems = [f"legend inside the panel {ax.get_title()!r}" for ax in fig.axes if ax.get_legend() is not None]
    if len(fig.legends) > 1:
        problems.append(f"{len(fig.legends)} legends")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    for legend in fig.legends:
        box = legend.get_window_extent(renderer)
        for ax in panels:
            if box.overlaps(ax.get_tightbbox(renderer)):
                problems.append(f"legend overlaps the panel {ax.get_title()!r}")
        small = [t.get_text() for t in legend.get_texts() if t.get_fontsize() < LEGEND_FONTSIZE]
        if small:
            problems.append(f"legend text smaller than {LEGEND_FONTSIZE} pt: {small[:3]}")
    boxes = [(f"the panel {ax.get_title()!r}", ax.get_tightbbox(renderer)) for ax in panels]
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append(("the figure's title", fig._suptitle.get_window_extent(renderer)))
    for i, (name, box) in enumerate(boxes):  # the legend against the panels: above
        for other, other_box in boxes[i + 1:]:
            if box.overlaps(other_box):
                problems.append(f"{name} runs into {other}")
    edge = fig.bbox
    for name, box in boxes + [("the legend", legend.get_window_extent(renderer)) for legend in fig.legends]:
        if box.x0 < edge.x0 - 0.5 or box.y0 < edge.y0 - 0.5 or box.x1 > edge.x1 + 0.5 or box.y1 > edge.y1 + 0.5:
            problems.append(f"{name} is cut off at the figure's edge")
    return problems


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


@dataclasses.dataclass
class _Grid:
    """A panel grid's shape, for its layout at :func:`_save`: rows x cols panels of ``width`` x ``height``
    inches each (its labels, ticks and title included); ``legend_height``: the room its legend takes."""

    rows: int
    cols: int
    width: float
    height: float
    sharey: bool
    legend_height: float = 0.0


#: The grids of the figures being drawn (a figure's entry goes with the figure).
_GRIDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
#: Room for a panel's text, in inches, at matplotlib's default sizes (10 pt ticks and axis labels, 12 pt
#: titles): below the panel its tick labels and axis label; left of it its tick labels (short here: accuracies,
#: ratios, powers of ten) and axis label; above it its title; and the figure's edge.
_BELOW, _LEFT, _TICKS, _ABOVE, _EDGE = 0.52, 0.82, 0.55, 0.32, 0.08
_SUPTITLE_LINE = 12 * 1.3 / 72


def _panel_grid(n: int, width: float = 5.2, height: float = 3.9, max_cols: int = 3, sharey: bool = True):
    """A figure with n panels in rows of at most ``max_cols``; returns (fig, the n axes, the spare axes).
    Its layout is the grid's own, made once at :func:`_save` from the text sizes above (matplotlib's
    constrained layout measured every tick label twice over: half the figures' drawing time)."""
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    _GRIDS[fig] = _Grid(rows, cols, width, height, sharey)
    flat = list(axes.flat)
    return fig, flat[:n], flat[n:]


def _lay_out(fig, title: str) -> None:
    """The figure's title (wrapped to its width) above its panels, its legend below them, and between the
    panels room for their tick labels, axis labels and titles."""
    grid = _GRIDS[fig]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    if grid.sharey:
        # one y axis label a row, at its left: the panels share the axis and hide its inner tick labels
        for ax in panels:
            if ax.get_subplotspec().colspan.start > 0:
                ax.set_ylabel("")
    y_labels = any(ax.get_ylabel() for ax in panels)
    width = grid.width * grid.cols
    lines = textwrap.wrap(title, max(20, int(width * 72 / (12 * 0.55)))) or [""]
    above = _ABOVE if any(ax.get_title() for ax in panels) else _ABOVE / 3
    top = _EDGE + len(lines) * _SUPTITLE_LINE + above
    bottom = _EDGE + grid.legend_height + _BELOW
    left = _EDGE + (_LEFT if y_labels else _TICKS)
    right = 0.3  # the last tick label's overhang
    between = 0.3 if grid.sharey else (_LEFT if y_labels else _TICKS) + 0.15
    panel_w = (width - left - right - (grid.cols - 1) * between) / grid.cols
    panel_h = grid.height - _BELOW - _ABOVE  # each row's own room for its ticks, labels and title
    height = grid.rows * panel_h + (grid.rows - 1) * (_BELOW + _ABOVE) + top + bottom
    fig.set_size_inches(width, height)
    fig.suptitle("\n".join(lines), y=1 - _EDGE / height, va="top")
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=between / panel_w, hspace=(_BELOW + _ABOVE) / panel_h)


def _save(fig, spare, title: str, path: Path) -> Path:
    for ax in spare:
        ax.set_visible(False)
    _lay_out(fig, title)
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


def line_identity(label: str, line: pd.DataFrame, runs: pd.DataFrame) -> tuple[str | None, str]:
    """(variant, the rest of the label) of one line from :func:`lines_by`: the variant from the line
    where its label names one, else the runs' only variant (None where they hold several)."""
    if "variant" in line:
        variant = str(line["variant"].iloc[0])
        return variant, label.removeprefix(variant).removeprefix(", ")
    variants = runs["variant"].dropna().unique() if "variant" in runs else []
    return (str(variants[0]) if len(variants) == 1 else None), label


#: Variants whose update is (stochastic) gradient descent with the trial's rate, for which 2/lr bounds the
#: top eigenvalue gradient descent can train at (Adam's bound is on its preconditioned sharpness instead).
GRADIENT_DESCENT_VARIANTS = ("sgd", "svrg", "sgdnoise", "sgdselective", "sam", "asam")


def draw_stability_bounds(ax, runs: pd.DataFrame) -> None:
    """Grey dotted 2/lr lines, the edge of stability of gradient descent (Cohen et al. 2021), for the panel's
    constant-rate runs of the SGD family: flat at each constant lr, falling with batch size under a constant
    lr/batch-size ratio. Not in the legend; each is labelled at its left end."""
    if runs.empty or "schedule" not in runs:
        return
    constant = runs[(runs["schedule"] == "constant") & runs["variant"].isin(GRADIENT_DESCENT_VARIANTS)]
    fixed = constant[constant["lr_batch_ratio"].isna()] if "lr_batch_ratio" in constant else constant
    for lr in sorted(fixed["lr"].dropna().unique()):
        ax.axhline(2 / lr, color="0.45", linestyle=":", linewidth=1, label="_nolegend_")
        # at the left end, on a pale box: the smallest batches sit furthest below their bound
        ax.annotate(f"2/lr, lr={lr:g}", (0.01, 2 / lr), xycoords=("axes fraction", "data"), ha="left", va="bottom",
                    fontsize=7, color="0.3", bbox={"boxstyle": "square,pad=0.1", "facecolor": "white",
                                                   "edgecolor": "none", "alpha": 0.75})
    ratio = constant[constant["lr_batch_ratio"].notna()] if "lr_batch_ratio" in constant else constant.iloc[0:0]
    for r in sorted(ratio["lr_batch_ratio"].unique()):
        sizes = sorted(ratio.loc[ratio["lr_batch_ratio"] == r, "batch_size"].unique())
        ax.plot(sizes, [2 / (r * b) for b in sizes], color="0.45", linestyle=":", linewidth=1, label="_nolegend_")


def batch_size_figure(df: pd.DataFrame, dataset: str, metric: str, path: Path) -> Path | None:
    """One panel per regime; x = batch size (log2), one line per configuration; error bars = seed std."""
    part = df[(df["dataset"] == dataset) & ~df["diverged"] & df[metric].notna()]
    groups = _panels(part)
    if not groups:
        return None
    fig, axes, spare = _panel_grid(len(groups))
    lines = Lines()
    for ax, group in zip(axes, groups):
        runs = part[part["group"] == group]
        for label, line in batch_size_lines(runs, metric):
            variant, setting = line_identity(label, line, runs)
            lines.add(ax, line["batch_size"], line[metric], line[f"{metric}_std"], variant=variant, setting=setting)
        ax.set_xscale("log", base=2)
        if metric == "hessian_top_eig":
            ax.set_yscale("log")
            draw_stability_bounds(ax, runs)
        ax.set_title(f"{dataset}: {group}")
        ax.set_xlabel("batch size")
        ax.set_ylabel(metric_label(metric))
        ax.grid(True, alpha=0.3)
    lines.draw(fig)
    return _save(fig, spare, f"{metric_label(metric)} against batch size ({dataset}; mean ± std over seeds)", path)


def learning_curves_figure(df: pd.DataFrame, curves: dict[str, pd.DataFrame], dataset: str, path: Path) -> Path | None:
    """Test accuracy per epoch for every run, one panel per regime; a configuration's seeds share its line style."""
    part = df[df["dataset"] == dataset]
    groups = list(dict.fromkeys(part["group"]))
    if not groups:
        return None
    fig, axes, spare = _panel_grid(len(groups))
    drawn = []
    for ax, group in zip(axes, groups):
        runs = part[part["group"] == group]
        varying = [k for k in ROW_KEYS if k != "variant" and runs[k].astype(str).nunique() > 1]
        for _, run in runs.iterrows():
            curve = curves.get(run["run_id"])
            if curve is not None and not curve["test_acc"].dropna().empty:
                drawn.append((ax, curve, run["variant"], _line_label(run, varying)))
    named = len({(variant, setting) for _, _, variant, setting in drawn}) <= MAX_NAMED_LINES
    lines = Lines()  # a line per run: past MAX_NAMED_LINES configurations the legend names the variants only
    for ax, curve, variant, setting in drawn:
        lines.add(ax, curve.index, curve["test_acc"], variant=variant, setting=setting if named else "")
    for ax, group in zip(axes, groups):
        ax.set_title(f"{dataset}: {group}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(LABELS["test_acc"])
        ax.grid(True, alpha=0.3)
    lines.draw(fig, errorbars=False, linewidth=1.0)
    return _save(fig, spare, f"Learning curves ({dataset}): test accuracy after each epoch", path)


def correlation_figure(df: pd.DataFrame, ratio_columns: list[str], path: Path) -> Path | None:
    """Scatter of each attack ratio against the top Hessian eigenvalue: colour by variant, marker by dataset."""
    ok = df[~df["diverged"] & df["hessian_top_eig"].notna()]
    columns = [c for c in ratio_columns if c in ok and ok[c].notna().any()]
    if not columns:
        return None
    fig, axes, spare = _panel_grid(len(columns), 4.2, 3.6, max_cols=4, sharey=False)
    datasets = sorted(ok["dataset"].dropna().unique())
    markers = {d: LINE_STYLES[i % len(LINE_STYLES)][1] for i, d in enumerate(datasets)}
    entries: dict[tuple, tuple] = {}
    for ax, column in zip(axes, columns):
        for (dataset, variant), part in ok[ok[column].notna()].groupby(["dataset", "variant"]):
            handle = ax.scatter(part["hessian_top_eig"], part[column], s=18, alpha=0.8, marker=markers[dataset],
                                color=variant_colour(variant))
            label = f"{variant}, {dataset}" if len(datasets) > 1 else str(variant)
            entries.setdefault((_variant_rank(variant), label), (label, handle))
        ax.set_xscale("log")
        ax.set_xlabel(LABELS["hessian_top_eig"])
        ax.set_ylabel(metric_label(column))
        ax.grid(True, alpha=0.3)
    named = [entries[k] for k in sorted(entries)]
    figure_legend(fig, [h for _, h in named], [label for label, _ in named])
    return _save(fig, spare, "Curvature against robustness: one point per trial", path)
