"""The study's claims, each tested against a sweep's runs: a statistic, its uncertainty and a verdict.

The claims come from the study's abstract (Kamath, Deshpande, Subrahmanyam, "How do SGD
hyperparameters in natural training affect adversarial robustness?", arXiv:2006.11604) and from the
sections of its text quoted in this project's fidelity issue; each claim names its source. They are
paraphrased in one line each; the statistic is computed over the MNIST runs that the study's own
figures use for the claim (the selections of :mod:`.study_figures`).

Verdicts: *supported* (every test of the claim goes the claimed way, p < 0.05 where it is a trend),
*contradicted* (every test goes against it), *inconclusive* (mixed, or too weak to tell), *not run*
(the sweep has no runs the claim is about). Collapsed runs carry no attack ratio or eigenvalue (see
``for_analysis``) and diverged runs no measurement at all: they are counted, never silently used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ..metrics import CLEAN_ACC, HESSIAN_TOP_EIG, attack_key
from .correlation import spearman
from .study_figures import _constant_rate, _constant_schedule, _plain, _sgd

ALPHA = 0.05
VERDICTS = ("supported", "contradicted", "inconclusive", "not run")


@dataclass(frozen=True)
class Finding:
    claim: str
    source: str
    statistic: str
    verdict: str


@dataclass(frozen=True)
class Claim:
    claim: str
    source: str
    test: Callable[[pd.DataFrame, list[float]], tuple[str, str]]


def _mnist(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["dataset"] == "mnist"] if not df.empty else df


def _trend(part: pd.DataFrame, y: str) -> tuple[float, float, int]:
    return spearman(part["batch_size"], part[y]) if y in part else (math.nan, math.nan, 0)


def _fmt_trend(label: str, rho: float, p: float, n: int) -> str:
    if not n or math.isnan(rho):
        return f"{label}: too few runs (n={n})"
    return f"{label}: rho={rho:+.2f} (p={p:.2g}, n={n})"


def _verdict(outcomes: list[bool | None]) -> str:
    """True: went the claimed way; False: went against it; None: could not tell."""
    if not outcomes:
        return "not run"
    if all(o is True for o in outcomes):
        return "supported"
    if all(o is False for o in outcomes):
        return "contradicted"
    return "inconclusive"


def _directional(rho: float, p: float, sign: int) -> bool | None:
    """A significant trend of the claimed sign (True), of the other sign (False), or no clear trend (None)."""
    if math.isnan(rho) or math.isnan(p) or p >= ALPHA:
        return None
    return (rho > 0) == (sign > 0)


def _constant_lr_sgd(df: pd.DataFrame) -> pd.DataFrame:
    return df[_sgd(df) & _constant_rate(df) & _constant_schedule(df) & _plain(df)]


def _ratio_sgd(df: pd.DataFrame) -> pd.DataFrame:
    return df[_sgd(df) & ~_constant_rate(df) & _constant_schedule(df) & _plain(df)]


def robustness_falls_with_batch_size(df: pd.DataFrame, eps: list[float]) -> tuple[str, str]:
    runs = _constant_lr_sgd(_mnist(df))
    parts, outcomes = [], []
    for lr, part in runs.groupby("lr"):
        for e in eps:
            rho, p, n = _trend(part, attack_key("pgd", "ratio", e))
            parts.append(_fmt_trend(f"lr {lr:g}, PGD ratio at eps {e:g}", rho, p, n))
            outcomes.append(_directional(rho, p, -1) if n else None)
    return "\n".join(parts) or "no constant-rate SGD runs", _verdict(outcomes if parts else [])


def _spread(part: pd.DataFrame, y: str) -> float:
    means = part.groupby("batch_size")[y].mean().dropna()
    return float(means.max() - means.min()) if len(means) > 1 else math.nan


def robustness_constant_under_ratio(df: pd.DataFrame, eps: list[float]) -> tuple[str, str]:
    mnist = _mnist(df)
    ratio, constant = _ratio_sgd(mnist), _constant_lr_sgd(mnist)
    if ratio.empty:
        return "no constant lr/batch-size SGD runs", "not run"
    parts, outcomes = [], []
    for e in eps:
        y = attack_key("pgd", "ratio", e)
        rho, p, n = _trend(ratio, y)
        spread = _spread(ratio, y)
        # the constant-rate regime at the study's base rate is the yardstick for "almost constant"
        reference = _spread(constant[constant["lr"] == 0.01], y) if not constant.empty else math.nan
        parts.append(f"{_fmt_trend(f'PGD ratio at eps {e:g}', rho, p, n)}, range of the per-batch-size means "
                     f"{spread:.3f} (constant lr 0.01: {reference:.3f})")
        if n == 0 or math.isnan(rho):
            outcomes.append(None)
        elif p < ALPHA:
            outcomes.append(False)  # a significant trend with batch size: not constant
        elif not math.isnan(reference):
            outcomes.append(True if spread < reference else None)
        else:
            outcomes.append(None)
    return "\n".join(parts), _verdict(outcomes)


def curvature_rises_with_batch_size(df: pd.DataFrame, eps: list[float]) -> tuple[str, str]:
    runs = _constant_lr_sgd(_mnist(df))
    parts, outcomes = [], []
    for lr, part in runs.groupby("lr"):
        rho, p, n = _trend(part, HESSIAN_TOP_EIG)
        parts.append(_fmt_trend(f"lr {lr:g}, top eigenvalue", rho, p, n))
        outcomes.append(_directional(rho, p, +1) if n else None)
    return "\n".join(parts) or "no constant-rate SGD runs", _verdict(outcomes if parts else [])


def momentum_and_high_rate_are_best(df: pd.DataFrame, eps: list[float]) -> tuple[str, str]:
    mnist = _mnist(df)
    runs = mnist[_sgd(mnist) & _constant_rate(mnist) & _constant_schedule(mnist)
                 & (mnist["weight_decay"].fillna(0) == 0)]
    runs = runs.assign(momentum=runs["momentum"].fillna(0))
    if runs.empty or runs["momentum"].nunique() < 2 or 0.9 not in set(runs["momentum"]) or 0.1 not in set(runs["lr"]):
        return "no runs with momentum 0.9 at lr 0.1 beside other momenta", "not run"
    y = attack_key("pgd", "ratio", eps[0]) if eps else None
    cells = runs.groupby(["lr", "momentum"]).agg(
        clean=(CLEAN_ACC, "mean"), ratio=(y, "mean"), n=("run_id", "size"),
        bad=("diverged", "sum"), collapsed=("collapsed", "sum"))
    best_clean = cells["clean"].idxmax()
    best_ratio = cells["ratio"].idxmax()
    target = (0.1, 0.9)
    cell = cells.loc[target]
    text = (f"lr 0.1 + momentum 0.9: clean accuracy {cell['clean']:.4f}, PGD ratio at eps {eps[0]:g} "
            f"{cell['ratio']:.3f} (mean over {int(cell['n'])} runs, {int(cell['bad'])} diverged, "
            f"{int(cell['collapsed'])} collapsed)\nbest clean accuracy of {len(cells)} lr x momentum cells: "
            f"lr {best_clean[0]:g} + momentum {best_clean[1]:g} ({cells.loc[best_clean, 'clean']:.4f})\n"
            f"best PGD ratio: lr {best_ratio[0]:g} + momentum {best_ratio[1]:g} ({cells.loc[best_ratio, 'ratio']:.3f})")
    return text, _verdict([best_clean == target, best_ratio == target])


CLAIMS = (
    Claim("At a constant learning rate, adversarial robustness (attack accuracy / clean accuracy) falls as "
          "the batch size grows.", "abstract (after Yao et al. 2018); Figure 1", robustness_falls_with_batch_size),
    Claim("With a constant learning-rate-to-batch-size ratio, robustness is almost constant, independent of "
          "the batch size.", "abstract; Figure 2", robustness_constant_under_ratio),
    Claim("At a constant learning rate, the top Hessian eigenvalue grows with the batch size (sharper minima).",
          "abstract (after Yao et al. 2018); Figures 1-2", curvature_rises_with_batch_size),
    Claim("The best accuracy and adversarial robustness come with the higher learning rate (0.1) and "
          "momentum 0.9.", "section 3.4.3; Figure 3", momentum_and_high_rate_are_best),
)


def conclusions(df: pd.DataFrame, eps: list[float]) -> list[Finding]:
    """Each claim of :data:`CLAIMS` against the runs (``for_analysis`` output) at the MNIST radii ``eps``."""
    findings = []
    for claim in CLAIMS:
        statistic, verdict = claim.test(df, eps) if not df.empty else ("no runs", "not run")
        findings.append(Finding(claim.claim, claim.source, statistic, verdict))
    return findings


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": f.claim, "source": f.source, "this sweep": f.statistic, "verdict": f.verdict}
                         for f in findings])
