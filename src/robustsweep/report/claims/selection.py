"""Which runs a claim speaks of, chosen by their settings (as :mod:`..study_figures` chooses them).

A :class:`Runs` names the settings a claim's runs have (dataset, variant, constant learning rate or
constant lr/batch-size ratio, lr, momentum, weight decay, schedule, batch sizes, seeds); a setting left
``None`` may take any value. Its defaults are the study's plain baseline: minibatch SGD at a constant
learning rate, no momentum, no weight decay, the constant schedule (section 3.2: variants are compared
"with a constant learning rate and zero momentum and zero weight regularization"). A :class:`Gain` is
the difference between two selections on shared settings (momentum's gain at one learning rate, say),
for claims that compare two gains. An :class:`Exclusion` is an exception the study states, left out of
a claim's test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import pandas as pd

from ...metrics import HESSIAN_TOP_EIG

#: The settings that identify a run's configuration, seed included: pairs of runs are matched on
#: some of them, and a selection's values carry all of them.
KEYS = ["seed", "batch_size", "variant", "lr", "lr_batch_ratio", "momentum", "weight_decay", "schedule"]
CONSTANT_LR, RATIO = "constant lr", "lr/bs ratio"
Value = Union[float, str, tuple, None]


def _matches(column: pd.Series, wanted: Value) -> np.ndarray:
    if wanted is None:
        return np.ones(len(column), dtype=bool)
    values = wanted if isinstance(wanted, tuple) else (wanted,)
    if isinstance(values[0], str):
        return column.isin(values).to_numpy()
    return np.isclose(column.to_numpy(dtype=float)[:, None], np.array(values, dtype=float)[None, :]).any(axis=1)


def _text(value: Value) -> str:
    values = value if isinstance(value, tuple) else (value,)
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def settings(df: pd.DataFrame) -> pd.DataFrame:
    """The runs' settings with the defaults filled in (momentum and weight decay 0, constant schedule)."""
    out = df.copy()
    out["momentum"] = out["momentum"].fillna(0.0)
    out["weight_decay"] = out["weight_decay"].fillna(0.0)
    out["schedule"] = out["schedule"].fillna("constant")
    return out


def fitted(df: pd.DataFrame) -> np.ndarray:
    """Which runs were trained until their training accuracy reached a target (``stop_train_acc``: the
    under-training control, :mod:`..control`), not for a fixed number of epochs as the study trains. The
    claims are about the study's training and leave these runs out."""
    if "stop_train_acc" not in df:
        return np.zeros(len(df), dtype=bool)
    return df["stop_train_acc"].notna().to_numpy()


def repeated_trainings(values: pd.DataFrame) -> np.ndarray:
    """Which rows train exactly what an earlier-kept row of the same seed trains: a run at a constant
    lr/batch-size ratio whose rate (ratio x batch size) is a constant-lr run's rate at that batch size,
    with every other setting alike (table1's ratio group at batch 64, lr 0.005/32 x 64 = 0.01, is its
    constant-lr group at lr 0.01, batch 64: the same numbers to the last digit). ``values`` has
    :data:`KEYS` with :func:`settings` filled in, and ``lr`` the initial rate a ratio gives, as
    :mod:`..collect` fills it; the constant-lr twin is the one kept."""
    if values.empty:
        return np.zeros(0, dtype=bool)
    training = values[[k for k in KEYS if k not in ("lr", "lr_batch_ratio")]].assign(
        rate=values["lr"].astype(float).map(lambda r: float(f"{r:.10g}")),
        ratio_last=values["lr_batch_ratio"].notna())
    order = training.sort_values("ratio_last", kind="stable").index
    repeated = training.loc[order].drop(columns="ratio_last").duplicated()
    return repeated.reindex(values.index).to_numpy()


@dataclass(frozen=True)
class Exclusion:
    """An exception the study states: the runs it covers are left out of the claim's test."""

    text: str
    where: Callable[[pd.DataFrame], pd.Series]


@dataclass(frozen=True)
class Runs:
    """Finished runs with the given settings; ``None`` means any value, a tuple any of its values."""

    dataset: str
    variant: Value = "sgd"
    regime: str | None = CONSTANT_LR      # constant lr, or a constant lr/batch-size ratio
    lr: Value = None
    lr_batch_ratio: Value = None          # under the ratio regime: this ratio (None: any)
    momentum: Value = 0.0
    weight_decay: Value = 0.0
    schedule: Value = "constant"
    batch_sizes: tuple[int, ...] | None = None
    seeds: tuple[int, ...] | None = None
    label: str = ""

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        """Which of ``df``'s runs :meth:`select` selects (the settings' defaults filled in for the test)."""
        if df.empty:
            return np.zeros(len(df), dtype=bool)
        filled = {"momentum": df["momentum"].fillna(0.0), "weight_decay": df["weight_decay"].fillna(0.0),
                  "schedule": df["schedule"].fillna("constant")}
        mask = (df["dataset"] == self.dataset).to_numpy() & ~df["diverged"].astype(bool).to_numpy()
        mask &= _matches(df["variant"], self.variant)
        if self.regime == CONSTANT_LR:
            mask &= df["lr_batch_ratio"].isna().to_numpy()
        elif self.regime == RATIO:
            mask &= df["lr_batch_ratio"].notna().to_numpy()
        for column in ("lr", "lr_batch_ratio", "momentum", "weight_decay", "schedule"):
            mask &= _matches(filled.get(column, df[column]), getattr(self, column))
        if self.batch_sizes is not None:
            mask &= _matches(df["batch_size"], tuple(float(b) for b in self.batch_sizes))
        if self.seeds is not None:
            mask &= _matches(df["seed"], tuple(float(s) for s in self.seeds))
        return mask

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        """The finished (not diverged) runs of the dataset with these settings, :func:`settings` filled in."""
        return df if df.empty else settings(df[self.mask(df)])

    def values(self, df: pd.DataFrame, metric: str) -> pd.DataFrame:
        """:data:`KEYS` and ``value``: the metric of each selected run (the log of the top eigenvalue,
        whose differences are ratios and whose spread spans orders of magnitude). Only those columns of the
        selected rows are copied (a report at 10,000 runs makes hundreds of these)."""
        runs = df if df.empty else settings(df.loc[self.mask(df), [c for c in (*KEYS, metric) if c in df]])
        value = runs[metric].astype(float) if metric in runs else pd.Series(np.nan, index=runs.index)
        if metric == HESSIAN_TOP_EIG:
            value = np.log(value.where(value > 0))
        return runs[KEYS].assign(value=value)

    def describe(self) -> str:
        parts = [self.dataset, "variant " + _text(self.variant) if self.variant is not None else "any variant"]
        if self.regime:
            parts.append(self.regime)
        for name, value in (("lr", self.lr), ("lr/bs", self.lr_batch_ratio), ("momentum", self.momentum), ("weight decay", self.weight_decay),
                            ("schedule", self.schedule), ("batch size", self.batch_sizes), ("seed", self.seeds)):
            if value is not None:
                parts.append(f"{name} {_text(value)}")
        return ", ".join(parts)

    def name(self) -> str:
        return self.label or self.describe()

    def variants(self) -> set[str]:
        return set(self.variant if isinstance(self.variant, tuple) else (self.variant,)) - {None}

    def decays(self) -> bool:
        """Whether these runs may have weight decay."""
        values = self.weight_decay if isinstance(self.weight_decay, tuple) else (self.weight_decay,)
        return any(v is None or v > 0 for v in values)


@dataclass(frozen=True)
class Gain:
    """``treated`` minus ``base`` on the settings ``on`` that both share: e.g. what momentum adds at one lr."""

    treated: Runs
    base: Runs
    on: tuple[str, ...] = ("seed", "batch_size", "lr")
    label: str = ""

    def values(self, df: pd.DataFrame, metric: str) -> pd.DataFrame:
        treated, base = self.treated.values(df, metric), self.base.values(df, metric)
        if base.duplicated(list(self.on)).any():
            raise ValueError(f"{self.base.describe()}: more than one run per {', '.join(self.on)}")
        merged = treated.merge(base[list(self.on) + ["value"]], on=list(self.on), suffixes=("", "_base"))
        return merged.assign(value=merged["value"] - merged["value_base"]).drop(columns="value_base")

    def select(self, df: pd.DataFrame) -> pd.DataFrame:
        treated = self.treated.select(df)
        return treated if self.base.mask(df).any() else treated.iloc[:0]

    def describe(self) -> str:
        return f"({self.treated.describe()}) minus ({self.base.describe()})"

    def name(self) -> str:
        return self.label or self.describe()

    def variants(self) -> set[str]:
        return self.treated.variants() | self.base.variants()

    def decays(self) -> bool:
        return self.treated.decays() or self.base.decays()

    def missing(self, df: pd.DataFrame) -> list[str]:
        return [f"no runs of {r.describe()}" for r in (self.treated, self.base) if not r.mask(df).any()]


Side = Union[Runs, Gain]


def missing_runs(side: Side, df: pd.DataFrame) -> list[str]:
    """What the sweep lacks for this selection (empty when it has runs)."""
    if isinstance(side, Gain):
        return side.missing(df)
    return [] if side.mask(df).any() else [f"no runs of {side.describe()}"]
