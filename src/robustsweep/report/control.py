"""The under-training control: does take-away 1's batch-size effect survive when every batch size fits the
training data equally well?

At a fixed number of epochs a large batch takes far fewer updates than a small one (30 epochs of MNIST:
1,760 at batch size 1024, 56,250 at 32), so an effect of the batch size may be one of under-training. The
control trains plain SGD at a constant rate at every batch size until its training accuracy over an epoch
reaches ``stop_train_acc`` (its runs are *fitted*, :func:`.claims.selection.fitted`). This section tests
take-away 1's three batch-size trends on the fitted runs, and on the runs of the same rates and seeds trained
for the fixed number of epochs, with the claims' own statistics, and sets the verdicts side by side.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..metrics import HESSIAN_TOP_EIG, REACHED_STOP_TRAIN_ACC, STOPPED_EPOCH, attack_key
from .claims import by_id
from .claims.checks import Context
from .claims.claim import Claim, claim_eps, evaluate
from .claims.registry import mnist
from .claims.selection import fitted, settings
from .tables import to_html, to_markdown

#: Take-away 1's trends with the batch size, each tested again on the fitted runs.
TRENDS = ("mnist-large-batch-lowers-clean-accuracy", "mnist-large-batch-lowers-robustness",
          "mnist-large-batch-sharpens-minima")
TITLE = "Under-training control: the batch-size effect when every batch size fits the training data"

#: What a pair of verdicts (fixed epochs, fitted) says about the effect.
ANSWERS = {("supported", "supported"): "survives fitting",
           ("supported", "inconclusive"): "not shown once fitted",
           ("supported", "contradicted"): "reversed once fitted",
           ("contradicted", "contradicted"): "the opposite holds either way",
           ("contradicted", "supported"): "appears only once fitted",
           ("inconclusive", "supported"): "appears only once fitted",
           ("inconclusive", "inconclusive"): "shown in neither"}


@dataclass
class Control:
    verdicts: pd.DataFrame   # control.csv: one row per comparison, trend and eps
    runs: pd.DataFrame       # the runs tested, fitted beside fixed, one row per run
    lead: str


#: A run's place in both sets: what the two sides are paired on.
PAIR_KEYS = ["lr", "seed", "batch_size"]


def _restricted(claim: Claim, lrs: tuple[float, ...], seeds: tuple[int, ...]) -> Claim:
    """The claim's checks on the control's rates and seeds only, so both sides differ only in training length."""
    checks = tuple(replace(check, runs=replace(check.runs, lr=lrs, seeds=seeds)) for check in claim.checks)
    return replace(claim, checks=checks)


def _values(column: pd.Series) -> str:
    return ", ".join(f"{v:g}" for v in sorted(column.dropna().unique()))


def _paired(fit: pd.DataFrame, fixed: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both sets with each measurement kept only for the (lr, seed, batch size) both sides have it for (a
    collapsed or unfinished run on one side takes its twin out), so their verdicts rest on the same units."""
    fit, fixed = fit.copy(), fixed.copy()
    keys = [pd.MultiIndex.from_frame(frame[PAIR_KEYS]) for frame in (fit, fixed)]
    for column in columns:
        if column not in fit or column not in fixed:
            continue
        have = [set(k[frame[column].notna().to_numpy()]) for k, frame in zip(keys, (fit, fixed))]
        both = have[0] & have[1]
        for k, frame in zip(keys, (fit, fixed)):
            frame[column] = frame[column].where(k.isin(list(both)) if both else np.zeros(len(k), dtype=bool))
    return fit, fixed


def _measurements(eps: list[float]) -> list[str]:
    return ["clean_acc"] + [attack_key(a, "ratio", e) for e in eps for a in ("fgsm", "pgd")] + [HESSIAN_TOP_EIG]


def fit_control(df: pd.DataFrame, sweep_eps: dict[str, list[float]]) -> Control | None:
    """The control's verdicts and runs (``df``: ``for_analysis`` output), None when no plain-SGD run at a
    constant rate was fitted. One comparison per target (``stop_train_acc`` and its cap of epochs) and
    number of fixed epochs; a run that reached its cap before its target is shown but left out of the
    verdicts, with its twin."""
    if df.empty:
        return None
    base = mnist()  # plain SGD at a constant rate: the runs take-away 1's trends speak of
    is_fitted = fitted(df)
    control = settings(df[is_fitted][base.mask(df[is_fitted])])
    if control.empty:
        return None
    lrs = tuple(sorted(float(v) for v in control["lr"].unique()))
    seeds = tuple(sorted(int(v) for v in control["seed"].unique()))
    fixed = settings(df[~is_fitted][replace(base, lr=lrs, seeds=seeds).mask(df[~is_fitted])])
    reached = control.get(REACHED_STOP_TRAIN_ACC, pd.Series(index=control.index, dtype=float))
    capped = reached == 0
    measurements = _measurements(sweep_eps.get("mnist", []))
    rows = []
    for (target, cap), fit in control[~capped].groupby(["stop_train_acc", "epochs"]):
        for epochs, twins in fixed.groupby("epochs"):
            here, there = (Context(part) for part in _paired(fit, twins, measurements))
            for claim in (_restricted(by_id(i), lrs, seeds) for i in TRENDS):
                for eps in claim_eps(claim, sweep_eps):
                    with_fit, without = evaluate(claim, here, eps, sweep_eps), evaluate(claim, there, eps, sweep_eps)
                    answer = ANSWERS.get((without.verdict, with_fit.verdict),
                                         f"{without.verdict} at fixed epochs, {with_fit.verdict} fitted")
                    rows.append({"fitted to": f"train acc {target:g}, at most {int(cap)} epochs",
                                 "fixed epochs": int(epochs), "id": claim.id,
                                 "eps": "" if eps is None else f"{eps:g}", "claim": claim.claim,
                                 "verdict, fixed epochs": without.verdict, "verdict, fitted": with_fit.verdict,
                                 "answer": answer, "statistic, fixed epochs": without.statistic,
                                 "statistic, fitted": with_fit.statistic})
    stopped = control.get(STOPPED_EPOCH, pd.Series(index=control.index, dtype=float))
    lead = (f"{len(control)} runs of plain SGD at constant lr {'/'.join(f'{v:g}' for v in lrs)} (seed"
            f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}) were trained at each batch size until "
            f"their training accuracy over an epoch reached {_values(control['stop_train_acc'])} (at most "
            f"{_values(control['epochs'])} epochs): they stopped after {_values(stopped) or 'unrecorded'} epochs"
            + (f"; {int(capped.sum())} reached the cap first and are left out of the verdicts" if capped.any() else "")
            + f". Beside them, the {len(fixed)} runs of the same rates and seeds trained for "
            f"{_values(fixed['epochs']) or 'no'} epochs. Each of take-away 1's batch-size trends is tested on "
            "each set with the claims' statistics, on the (lr, seed, batch size) both sets have a value for; the "
            "claims' own verdicts (every seed and rate) are in the Claims section.")
    return Control(pd.DataFrame(rows), _runs_table(control, fixed, measurements), lead)


def _training(run: pd.Series) -> str:
    if pd.isna(run.get("stop_train_acc")):
        return f"{int(run['epochs'])} epochs"
    if run.get(REACHED_STOP_TRAIN_ACC) == 0:
        return f"capped at {int(run['epochs'])} epochs (left out)"
    stopped = run.get(STOPPED_EPOCH)
    return f"fitted: {int(stopped)} epochs" if pd.notna(stopped) else "fitted: epoch unrecorded"


def _runs_table(control: pd.DataFrame, fixed: pd.DataFrame, measurements: list[str]) -> pd.DataFrame:
    table = pd.concat([control.assign(_fitted=True), fixed.assign(_fitted=False)], ignore_index=True)
    table = table.sort_values(["batch_size", "seed", "lr", "_fitted"])
    table["training"] = [_training(run) for _, run in table.iterrows()]
    columns = ["batch_size", "seed", "lr", "training"] + [m for m in measurements if m in table]
    decimals = {m: 2 if m == HESSIAN_TOP_EIG else 4 for m in measurements}
    return table[columns].round(decimals).reset_index(drop=True)


def control_html(control: Control) -> str:
    return (f"<p>{html.escape(control.lead)}</p>{to_html(control.verdicts)}"
            f"<h3>The runs</h3>{to_html(control.runs)}")


def control_markdown(control: Control) -> list[str]:
    return [control.lead, "", to_markdown(control.verdicts), "", "### The runs", "",
            to_markdown(control.runs), ""]
