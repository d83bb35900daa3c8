"""The verdict rules, written once: from a claim's sub-tests to one verdict.

A claim (at one eps, for attack claims) has one or more sub-tests: one per measurement, learning
rate, variant, ... it speaks of. Each sub-test gives a :class:`~.statistics.Evidence` with ``p_for``
and ``p_against``. The rules:

1. **Holm's correction** across the claim's sub-tests, at :data:`ALPHA` = 0.05 family-wise: each
   sub-test's deciding p-value (the smaller of ``p_for`` and ``p_against``) is Holm-adjusted.
2. A sub-test's **outcome** is ``for`` when its adjusted p is below alpha and ``p_for`` decided it,
   ``against`` when ``p_against`` decided it, ``unclear`` otherwise. For a directional sub-test
   (a trend, a difference) ``p_for`` is the two-sided p-value when the effect has the claimed sign,
   ``p_against`` when it has the other; for an equivalence sub-test ``p_for`` is the TOST p-value and
   ``p_against`` the p-value of the effect lying beyond the margin.
3. The claim's **verdict**: ``not run`` when a sub-test has no runs to test (the sweep lacks a
   setting the claim needs; what is missing is named); ``contradicted`` when any sub-test is
   ``against`` (the claim asserts all of its parts); ``supported`` when every sub-test is ``for``;
   ``inconclusive`` otherwise (too few runs, or effects within the noise).

Absence of significance is never read as "no change": a claim of no change is supported only by an
equivalence test against a stated margin (see :mod:`.margins`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .statistics import Evidence

#: Family-wise error rate of each claim's sub-tests (Holm).
ALPHA = 0.05
VERDICTS = ("supported", "contradicted", "inconclusive", "not run")
OUTCOMES = ("for", "against", "unclear")


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values: the i-th smallest p times (m - i + 1), made monotone, capped at 1.

    Rejecting where the adjusted p is below alpha controls the family-wise error rate at alpha for any
    dependence between the tests (Holm 1979)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Outcome:
    label: str           # which sub-test: "lr 0.01, PGD / clean at eps 0.03"
    evidence: Evidence
    p_holm: float
    outcome: str         # for, against, unclear

    def line(self) -> str:
        note = f" [{self.evidence.note}]" if self.evidence.note else ""
        return f"{self.label}: {self.evidence.summary}; Holm p={self.p_holm:.2g} -> {self.outcome}{note}"


def outcomes(sub_tests: list[tuple[str, Evidence]], alpha: float = ALPHA) -> list[Outcome]:
    """Each sub-test's outcome after Holm's correction across all of them (rules 1 and 2)."""
    adjusted = holm([e.p for _, e in sub_tests])
    result = []
    m = len(sub_tests)
    for (label, evidence), p_holm in zip(sub_tests, adjusted):
        if p_holm < alpha:
            outcome = "for" if evidence.p_for <= evidence.p_against else "against"
        else:
            outcome = "unclear"
            if not evidence.note and evidence.floor * m >= alpha:
                evidence = replace(evidence, note=(
                    f"{evidence.n} pairs cannot reach alpha {alpha:g} after Holm over {m} sub-test"
                    f"{'s' if m > 1 else ''}: the smallest possible p is {min(1.0, evidence.floor * m):.2g}; "
                    "more seeds would"))
        result.append(Outcome(label, evidence, p_holm, outcome))
    return result


def verdict(results: list[Outcome], missing: list[str]) -> str:
    """The claim's verdict from its sub-tests' outcomes (rule 3)."""
    if missing or not results:
        return "not run"
    kinds = [r.outcome for r in results]
    if "against" in kinds:
        return "contradicted"
    if all(k == "for" for k in kinds):
        return "supported"
    return "inconclusive"
