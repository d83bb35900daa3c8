"""The study's claims, each tested on a sweep's runs with seed-aware statistics and given a verdict.

* :mod:`.registry`: every claim, one entry each (``CLAIMS``; ``by_id``);
* :mod:`.selection`: which runs a claim needs, by their settings;
* :mod:`.checks`: the kinds of test (trend with batch size, paired comparison, correlation);
* :mod:`.statistics`: the scipy tests behind them, with effect sizes and n;
* :mod:`.margins`: the equivalence margin of "no change" claims (the seed-to-seed spread);
* :mod:`.verdicts`: Holm's correction and the verdict rules, written once.

:func:`evaluate_claims` gives one :class:`~.claim.ClaimResult` per claim and eps; :func:`claims_table`
is ``claims.csv``.
"""

from __future__ import annotations

import pandas as pd

from .checks import Context
from .claim import Claim, ClaimResult, claim_eps, evaluate
from .registry import CLAIMS, by_id
from .selection import fitted
from .verdicts import ALPHA, VERDICTS

__all__ = ["ALPHA", "CLAIMS", "Claim", "ClaimResult", "VERDICTS", "by_id", "claims_table", "evaluate_claims",
           "in_report_order", "study_context",
           "SECTION_ORDER", "section_of"]

#: Sections in the order the report shows them: the study's four take-aways first.
SECTION_ORDER = ("4 (take-away 1)", "4 (take-away 2)", "4 (take-away 3)", "4 (take-away 4)",
                 "3.4.1", "3.4.2", "3.4.3")
COLUMNS = ["id", "section", "dataset", "eps", "claim", "exception", "measurements", "runs", "statistic",
           "verdict", "open choices"]


def section_of(claim: Claim) -> str:
    return claim.primary_section()


def in_report_order(claims: tuple[Claim, ...] = CLAIMS) -> list[Claim]:
    """The claims by section (take-aways first), then as registered."""
    return sorted(claims, key=lambda c: SECTION_ORDER.index(section_of(c)))


def study_context(df: pd.DataFrame) -> Context:
    """The runs the claims are tested on (``for_analysis`` output), with their margins: runs trained to a
    training accuracy (:func:`.selection.fitted`) are left out, since the study trains for a fixed number of
    epochs and those runs share every setting a claim selects by with the runs they control for."""
    return Context(df[~fitted(df)])


def evaluate_claims(df: pd.DataFrame, sweep_eps: dict[str, list[float]],
                    claims: tuple[Claim, ...] = CLAIMS) -> list[ClaimResult]:
    """Every claim at every eps it speaks of, against the runs (``for_analysis`` output; :func:`study_context`),
    in the report's order (:func:`in_report_order`)."""
    ctx = study_context(df)
    return [evaluate(claim, ctx, eps, sweep_eps) for claim in in_report_order(claims)
            for eps in claim_eps(claim, sweep_eps)]


def claims_table(results: list[ClaimResult]) -> pd.DataFrame:
    """``claims.csv``: one row per claim and eps (empty eps for claims not about attacks)."""
    return pd.DataFrame([r.row() for r in results], columns=COLUMNS)
