"""The kinds of test a claim is made of, each turning selected runs into sub-tests.

* :class:`Trend`: a measurement against the batch size, within seeds (rises, falls, or flat);
* :class:`Compare`: two selections paired on shared settings (higher, lower, same, no gain, no loss);
* :class:`Correlate`: the top eigenvalue against a measurement across runs, within seeds.

A check has one sub-test per measurement (per eps for attack measurements) and per value of its
``split`` settings (each constant learning rate, say). ``sub_tests`` returns them with what the sweep
lacks for them (a non-empty list makes the claim ``not run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ...metrics import CLEAN_ACC, HESSIAN_TOP_EIG, attack_key
from ..tables import column_label
from .margins import CONFIGURATION, Margin, seed_spread
from .selection import Runs, Side, missing_runs, repeated_trainings
from .statistics import Evidence, blocked_trend, paired_difference, paired_equivalence, trend_equivalence

#: The measurements claims speak of; attack ones exist at each eps.
ATTACK_MEASURES = {"fgsm_acc": ("fgsm", "acc"), "fgsm_ratio": ("fgsm", "ratio"),
                   "pgd_acc": ("pgd", "acc"), "pgd_ratio": ("pgd", "ratio"),
                   # AutoAttack on its own subset, and PGD on those same images (..autoattack_claims)
                   "autoattack_acc": ("autoattack", "acc"), "autoattack_ratio": ("autoattack", "ratio"),
                   "autoattack_pgd_acc": ("autoattack_pgd", "acc"), "autoattack_pgd_ratio": ("autoattack_pgd", "ratio")}
MEASURES = (CLEAN_ACC, HESSIAN_TOP_EIG, *ATTACK_MEASURES)
SubTests = tuple[list[tuple[str, Evidence]], list[str]]


def metric_key(measure: str, eps: float | None) -> str:
    """The runs table's column: ``pgd_ratio`` at eps 0.03 is ``pgd_ratio_eps0.03``."""
    if measure in ATTACK_MEASURES:
        return attack_key(*ATTACK_MEASURES[measure], eps)
    if measure not in MEASURES:
        raise ValueError(f"unknown measurement {measure!r}")
    return measure


def measure_label(metric: str) -> str:
    return {CLEAN_ACC: "clean accuracy", HESSIAN_TOP_EIG: "top eigenvalue"}.get(metric, column_label(metric))


class Context:
    """The runs (``for_analysis`` output) and the margins computed from them, once per metric."""

    def __init__(self, df: pd.DataFrame, margins: dict[tuple[str, str], Margin] | None = None,
                 everything: pd.DataFrame | None = None):
        self.df = df
        self._margins = {} if margins is None else margins
        self._everything = df if everything is None else everything

    def margin(self, dataset: str, metric: str) -> Margin:
        """The seed-to-seed spread of the metric over the whole sweep (exceptions or not)."""
        key = (dataset, metric)
        if key not in self._margins:
            self._margins[key] = seed_spread(self._everything, dataset, metric)
        return self._margins[key]

    def without(self, excluded: pd.Series) -> "Context":
        """The same sweep with some runs left out of the tests (an exception), the same margins."""
        return Context(self.df[~excluded], self._margins, self._everything)


def _validate(check, expectations: tuple[str, ...]) -> None:
    """A registry entry's mistakes are errors when the registry is imported, not odd verdicts later."""
    if check.expect not in expectations:
        raise ValueError(f"{type(check).__name__}: expect {check.expect!r}, not one of {expectations}")
    unknown = [m for m in check.measures if m not in MEASURES]
    if unknown or not check.measures:
        raise ValueError(f"{type(check).__name__}: unknown measurements {unknown} (known: {MEASURES})")


def _split(frame: pd.DataFrame, columns: tuple[str, ...]):
    """(label, part) for each value of ``columns`` ("lr 0.01"), or the whole frame."""
    if not columns:
        yield "", frame
        return
    for values, part in frame.groupby(list(columns), sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        yield ", ".join(f"{c.replace('_', ' ')} {v:g}" if isinstance(v, float) else f"{c.replace('_', ' ')} {v}"
                        for c, v in zip(columns, values)) + ", ", part


def _seed_blocks(frame: pd.DataFrame, index: list[str], columns: list[str]) -> tuple[list, int]:
    """One block per seed, aligned on ``index`` (the units each seed must share): a list of tuples of
    the ``columns`` arrays, and how many units were left out because some seed lacks them."""
    if frame.duplicated(index + ["seed"]).any():
        raise ValueError(f"more than one run per {', '.join(index)} and seed: the selection is ambiguous")
    wide = frame.set_index(index + ["seed"])[columns].unstack("seed")
    present = wide.notna().sum()  # runs per (column, seed)
    seeds = [s for s in sorted(frame["seed"].unique()) if min(present[(c, s)] for c in columns) >= 1]
    if not seeds:
        return [], 0
    keep = wide[[(c, s) for c in columns for s in seeds]].dropna()
    values = keep.to_numpy(dtype=float)  # one array; column (c, s) at c's index * len(seeds) + s's index
    blocks = [tuple(values[:, j * len(seeds) + i] for j in range(len(columns))) for i in range(len(seeds))]
    return blocks, len(wide) - len(keep)


@dataclass(frozen=True)
class Trend:
    """A measurement against the batch size: ``rises`` or ``falls`` (mean within-seed Spearman rho with
    a within-seed permutation test) or ``flat`` (equivalence of the fitted change across the range)."""

    runs: Runs
    measures: tuple[str, ...]
    expect: str
    split: tuple[str, ...] = ("lr",)

    def __post_init__(self):
        _validate(self, ("rises", "falls", "flat"))

    def sides(self) -> list[Side]:
        return [self.runs]

    def sub_tests(self, ctx: Context, eps: float | None) -> SubTests:
        missing = missing_runs(self.runs, ctx.df)
        if missing:
            return [], missing
        found = []
        for measure in self.measures:
            metric = metric_key(measure, eps)
            values = self.runs.values(ctx.df, metric)
            for label, part in _split(values, self.split):
                blocks, dropped = _seed_blocks(part.assign(x=part["batch_size"].astype(float)), ["batch_size"],
                                               ["x", "value"])
                if self.expect == "flat":
                    margin = ctx.margin(self.runs.dataset, metric)
                    evidence = trend_equivalence(blocks, margin.value, margin_source=margin.source())
                else:
                    evidence = blocked_trend(blocks, +1 if self.expect == "rises" else -1, dropped=dropped)
                found.append((f"{label}{measure_label(metric)} {self.expect} with batch size", evidence))
        return found, []


@dataclass(frozen=True)
class Compare:
    """``treatment`` against ``control``, paired on ``pair_on``: ``higher`` or ``lower`` (mean difference,
    Wilcoxon signed-rank test), ``same`` (equivalence within the margin, TOST), ``no gain`` or
    ``no loss`` (one side of it)."""

    treatment: Side
    control: Side
    measures: tuple[str, ...]
    expect: str
    pair_on: tuple[str, ...] = ("seed", "batch_size")
    split: tuple[str, ...] = ()

    def __post_init__(self):
        _validate(self, ("higher", "lower", "same", "no gain", "no loss"))

    def sides(self) -> list[Side]:
        return [self.treatment, self.control]

    def sub_tests(self, ctx: Context, eps: float | None) -> SubTests:
        df = ctx.df
        missing = missing_runs(self.treatment, df) + missing_runs(self.control, df)
        if missing:
            return [], missing
        on = list(self.pair_on)
        found = []
        for measure in self.measures:
            metric = metric_key(measure, eps)
            treated, control = self.treatment.values(df, metric), self.control.values(df, metric)
            if control.duplicated(on).any():
                raise ValueError(f"{self.control.describe()}: more than one run per {', '.join(on)}")
            pairs = treated.merge(control[on + ["value"]], on=on, suffixes=("", "_control"))
            if pairs.empty:
                return [], [f"no runs of {self.treatment.describe()} and of {self.control.describe()} "
                            f"share {', '.join(on)}"]
            for label, part in _split(pairs, self.split):
                if part.duplicated(on).any():
                    raise ValueError(f"{self.treatment.describe()}: more than one run per {', '.join(on)}")
                differences = (part["value"] - part["value_control"]).to_numpy()
                log_scale = metric == HESSIAN_TOP_EIG
                if self.expect in ("higher", "lower"):
                    evidence = paired_difference(differences, +1 if self.expect == "higher" else -1,
                                                 log_scale=log_scale)
                else:
                    margin = ctx.margin(_dataset(self.treatment), metric)
                    evidence = paired_equivalence(differences, margin.value, "both" if self.expect == "same"
                                                  else self.expect, margin_source=margin.source(),
                                                  log_scale=log_scale)
                found.append((f"{label}{measure_label(metric)}: {self._relation()}", evidence))
        return found, []

    def _relation(self) -> str:
        if self.expect in ("higher", "lower"):
            return f"{self.treatment.name()} {self.expect} than {self.control.name()}"
        return f"{self.treatment.name()} vs {self.control.name()}, {self.expect}"


@dataclass(frozen=True)
class Correlate:
    """The top eigenvalue against a measurement across the selected runs, ``negative`` or ``positive``:
    the mean within-seed Spearman rho, over the configurations every seed has. Runs that train exactly
    what another selected run trains (:func:`.selection.repeated_trainings`) count once."""

    runs: Runs
    measures: tuple[str, ...]
    expect: str
    split: tuple[str, ...] = ()

    def __post_init__(self):
        _validate(self, ("negative", "positive"))

    def sides(self) -> list[Side]:
        return [self.runs]

    def sub_tests(self, ctx: Context, eps: float | None) -> SubTests:
        missing = missing_runs(self.runs, ctx.df)
        if missing:
            return [], missing
        curvature = self.runs.values(ctx.df, HESSIAN_TOP_EIG)
        curvature = curvature[~repeated_trainings(curvature)]
        found = []
        for measure in self.measures:
            metric = metric_key(measure, eps)
            values = curvature.assign(y=self.runs.values(ctx.df, metric)["value"])
            for label, part in _split(values, self.split):
                configuration = [k for k in CONFIGURATION if k not in self.split]
                keyed = part.astype({k: object for k in configuration})
                keyed[configuration] = keyed[configuration].where(keyed[configuration].notna(), "-")
                blocks, dropped = _seed_blocks(keyed, configuration, ["value", "y"])
                evidence = blocked_trend(blocks, -1 if self.expect == "negative" else +1, dropped=dropped,
                                         x_name="configuration")
                found.append((f"{label}top eigenvalue against {measure_label(metric)}, {self.expect}", evidence))
        return found, []


def _dataset(side: Side) -> str:
    return side.dataset if isinstance(side, Runs) else side.treated.dataset

