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
    verdicts: pd.DataFrame   # control.csv: one row per trend and eps
    runs: pd.DataFrame       # the runs tested, fitted beside fixed, one row per run
    lead: str


def _restricted(claim: Claim, lrs: tuple[float, ...], seeds: tuple[int, ...]) -> Claim:
    """The claim's checks on the control's rates and seeds only, so both sides differ only in training length."""
    checks = tuple(replace(check, runs=replace(check.runs, lr=lrs, seeds=seeds)) for check in claim.checks)
    return replace(claim, checks=checks)


def _values(column: pd.Series) -> str:
    return ", ".join(f"{v:g}" for v in sorted(column.dropna().unique()))


def fit_control(df: pd.DataFrame, sweep_eps: dict[str, list[float]]) -> Control | None:
    """The control's verdicts and runs (``df``: ``for_analysis`` output), None when no plain-SGD run at a
    constant rate was fitted."""
    if df.empty:
        return None
    is_fitted = fitted(df)
    fitted_runs, fixed_runs = df[is_fitted], df[~is_fitted]
    base = mnist()  # plain SGD at a constant rate: the runs take-away 1's trends speak of
    control = settings(fitted_runs[base.mask(fitted_runs)])
    if control.empty:
        return None
    lrs = tuple(sorted(float(v) for v in control["lr"].unique()))
    seeds = tuple(sorted(int(v) for v in control["seed"].unique()))
    fixed = settings(fixed_runs[replace(base, lr=lrs, seeds=seeds).mask(fixed_runs)])
    here, there = Context(fitted_runs), Context(fixed_runs)
    rows = []
    for claim in (_restricted(by_id(i), lrs, seeds) for i in TRENDS):
        for eps in claim_eps(claim, sweep_eps):
            with_fit, without = evaluate(claim, here, eps, sweep_eps), evaluate(claim, there, eps, sweep_eps)
            rows.append({"id": claim.id, "eps": "" if eps is None else f"{eps:g}", "claim": claim.claim,
                         "verdict, fixed epochs": without.verdict, "verdict, fitted": with_fit.verdict,
                         "answer": ANSWERS.get((without.verdict, with_fit.verdict),
                                               f"{without.verdict} at fixed epochs, {with_fit.verdict} fitted"),
                         "statistic, fixed epochs": without.statistic, "statistic, fitted": with_fit.statistic})
    verdicts = pd.DataFrame(rows)
    target = _values(control["stop_train_acc"])
    stopped = control.get(STOPPED_EPOCH, pd.Series(index=control.index, dtype=float))
    reached = control.get(REACHED_STOP_TRAIN_ACC, pd.Series(index=control.index, dtype=float))
    short = int((reached == 0).sum())
    lead = (f"{len(control)} runs of plain SGD at constant lr {'/'.join(f'{v:g}' for v in lrs)} (seed{'s' if len(seeds) > 1 else ''} "
            f"{', '.join(map(str, seeds))}) were trained at each batch size until their training accuracy over an "
            f"epoch reached {target} (at most {_values(control['epochs'])} epochs): they stopped after "
            f"{_values(stopped) or 'unrecorded'} epochs"
            + (f", and {short} reached the cap first" if short else "")
            + f". Beside them, the {len(fixed)} runs of the same rates and seeds trained for "
            f"{_values(fixed['epochs']) or 'no'} epochs. Each of take-away 1's batch-size trends is tested on "
            "each set with the claims' statistics; the claims' own verdicts (every seed, both rates) are in the "
            "Claims section.")
    return Control(verdicts, _runs_table(control, fixed, sweep_eps.get("mnist", [])), lead)


def _runs_table(control: pd.DataFrame, fixed: pd.DataFrame, eps: list[float]) -> pd.DataFrame:
    measures = ["clean_acc"] + [attack_key(a, "ratio", e) for e in eps for a in ("fgsm", "pgd")] + [HESSIAN_TOP_EIG]
    parts = []
    for frame, fit in ((control, True), (fixed, False)):
        part = frame[["batch_size", "seed", "lr", "epochs"] + [c for c in (STOPPED_EPOCH, *measures) if c in frame]]
        training = (part[STOPPED_EPOCH].map(lambda e: f"fitted: {int(e)} epochs") if fit and STOPPED_EPOCH in part
                    else part["epochs"].map(lambda e: f"{int(e)} epochs"))
        parts.append(part.assign(training=training, _fitted=fit))
    table = pd.concat(parts, ignore_index=True).sort_values(["batch_size", "seed", "lr", "_fitted"])
    columns = ["batch_size", "seed", "lr", "training"] + [m for m in measures if m in table]
    decimals = {m: 2 if m == HESSIAN_TOP_EIG else 4 for m in measures}
    return table[columns].round(decimals).reset_index(drop=True)


def control_html(control: Control) -> str:
    return (f"<p>{html.escape(control.lead)}</p>{to_html(control.verdicts)}"
            f"<h3>The runs</h3>{to_html(control.runs)}")


def control_markdown(control: Control) -> list[str]:
    return [f"## {TITLE}", "", control.lead, "", to_markdown(control.verdicts), "", "### The runs", "",
            to_markdown(control.runs), ""]
