"""A claim of the study, and its evaluation against a sweep's runs: one verdict per eps.

A :class:`Claim` is metadata (id, section, dataset, our one-line wording, the exception the study
states) and the checks that test it (:mod:`.checks`). :func:`evaluate` runs every check's sub-tests
at each attack radius the claim speaks of, applies the verdict rules (:mod:`.verdicts`) and returns
one :class:`ClaimResult` per eps (one with no eps when the claim is not about attacks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...config import DEFAULT_NOISE_STD
from .checks import ATTACK_MEASURES, Context, Compare, Correlate, Trend
from .selection import Exclusion, settings
from .verdicts import ALPHA, outcomes, verdict

#: The attack radii of the study (section 3.2): MNIST a weaker and a stronger attack, CIFAR-10 one.
#: Used for a dataset the sweep did not run, so its claims still get one row per eps.
STUDY_EPS = {"mnist": (0.03, 0.15), "cifar10": (0.02,)}

#: Choices the study leaves open, named beside every claim whose runs depend on them.
OPEN_CHOICES = {
    "sgdnoise": f"noisy SGD's sigma: the study gives none; noise_std = {DEFAULT_NOISE_STD:g} here (variants/sgdnoise.py)",
    "sgdselective": "Selective Backprop's beta: the study gives none; sb_beta = 3 (the authors' default), which "
                    "back-propagates about 25% of examples per epoch after the first (24.8% in "
                    "results/table1-mnist-cpu)",
    "weight_decay": "weight decay: torch's weight_decay w is the penalty (w/2)||theta||^2, the study writes "
                    "w||theta||^2: its w is our weight_decay only if it used torch's parameter (else it is half of ours)",
}


@dataclass(frozen=True)
class Claim:
    """One testable claim of the study. Adding a claim is one entry in :mod:`.registry`."""

    id: str                      # stable: tests and readers refer to it
    section: str                 # where the study makes it: "3.4.1", "4 (take-away 1); 3.4.1"
    dataset: str                 # mnist, cifar10
    claim: str                   # one line, our own words
    checks: tuple                # Trend, Compare, Correlate: together, the claim's sub-tests
    eps: tuple[float, ...] | None = None   # the radii the claim names; None: every radius of the sweep
    exception: Exclusion | None = None     # an exception the study states, left out of the test

    @property
    def about_attacks(self) -> bool:
        return any(m in ATTACK_MEASURES for c in self.checks for m in c.measures)

    @property
    def measures(self) -> list[str]:
        return list(dict.fromkeys(m for c in self.checks for m in c.measures))

    def open_choices(self) -> list[str]:
        """The open choices its runs rest on: noisy SGD, Selective Backprop, weight decay."""
        sides = [s for c in self.checks for s in c.sides()]
        variants = set().union(*(s.variants() for s in sides))
        anything = any(not s.variants() for s in sides)  # a selection of any variant
        chosen = [OPEN_CHOICES[v] for v in ("sgdnoise", "sgdselective") if v in variants or anything]
        if any(s.decays() for s in sides):
            chosen.append(OPEN_CHOICES["weight_decay"])
        return chosen

    def runs_needed(self) -> list[str]:
        return list(dict.fromkeys(s.describe() for c in self.checks for s in c.sides()))

    def primary_section(self) -> str:
        return self.section.split(";")[0].strip()


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    eps: float | None
    verdict: str
    lines: list[str] = field(default_factory=list)   # one per sub-test, or what is missing

    @property
    def statistic(self) -> str:
        return "\n".join(self.lines)

    def row(self) -> dict:
        c = self.claim
        return {"id": c.id, "section": c.section, "dataset": c.dataset,
                "eps": "" if self.eps is None else f"{self.eps:g}", "claim": c.claim,
                "exception": c.exception.text if c.exception else "", "measurements": ", ".join(c.measures),
                "runs": "; ".join(c.runs_needed()), "statistic": self.statistic, "verdict": self.verdict,
                "open choices": "; ".join(c.open_choices())}


def claim_eps(claim: Claim, sweep_eps: dict[str, list[float]]) -> list[float | None]:
    """The radii at which the claim gets a verdict: those it names, else the sweep's (else the study's)."""
    if not claim.about_attacks:
        return [None]
    if claim.eps is not None:
        return list(claim.eps)
    return list(sweep_eps.get(claim.dataset) or STUDY_EPS[claim.dataset])


def evaluate(claim: Claim, ctx: Context, eps: float | None, sweep_eps: dict[str, list[float]]) -> ClaimResult:
    """The claim's verdict at one eps: every check's sub-tests, Holm across them, the verdict rules."""
    if eps is not None and sweep_eps.get(claim.dataset) and eps not in sweep_eps[claim.dataset]:
        attacked = ", ".join(f"{e:g}" for e in sweep_eps[claim.dataset])
        missing = [f"the sweep attacked {claim.dataset} at eps {attacked}, not at {eps:g}"]
        return ClaimResult(claim, eps, verdict([], missing), missing)
    local = ctx
    if claim.exception and not ctx.df.empty:
        local = ctx.without(claim.exception.where(settings(ctx.df)).astype(bool))
    sub_tests, missing = [], []
    for check in claim.checks:
        found, lacking = check.sub_tests(local, eps)
        sub_tests += found
        missing += lacking
    if missing:
        missing = list(dict.fromkeys(missing))
        return ClaimResult(claim, eps, verdict([], missing), missing)
    results = outcomes(sub_tests)
    header = f"Holm over {len(results)} sub-test{'s' if len(results) > 1 else ''}, alpha {ALPHA:g}"
    return ClaimResult(claim, eps, verdict(results, missing), [header] + [r.line() for r in results])


__all__ = ["Claim", "ClaimResult", "Compare", "Correlate", "Exclusion", "Trend", "claim_eps", "evaluate",
           "OPEN_CHOICES", "STUDY_EPS"]
