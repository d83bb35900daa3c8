"""The claims that rest on PGD, tested again with AutoAttack: does a verdict survive the stronger attack?

PGD-20 can overstate robustness (the per-run gap, :mod:`.autoattack_gap`). Each claim with a PGD sub-test is
evaluated twice more, with its PGD measurements swapped for those of two attacks on the same images,
AutoAttack's subset: PGD there (``autoattack_pgd_acc_eps*``, its ratio over ``autoattack_clean_acc``) and
AutoAttack. Its other sub-tests (FGSM, clean accuracy, the eigenvalue) are left out, so the two verdicts differ
only in the attack. The claims' own verdicts, on PGD's larger subset and with every sub-test, stay in Claims.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ..metrics import AUTOATTACK_CLEAN_ACC, attack_key
from .claims import in_report_order, study_context
from .claims.checks import Context, metric_key
from .claims.claim import Claim, claim_eps, evaluate

#: The claims' PGD measurements, and what each becomes on AutoAttack's images.
SWAPS = {"PGD": {"pgd_ratio": "autoattack_pgd_ratio", "pgd_acc": "autoattack_pgd_acc"},
         "AutoAttack": {"pgd_ratio": "autoattack_ratio", "pgd_acc": "autoattack_acc"}}


def _swapped(claim: Claim, swap: dict[str, str]) -> Claim | None:
    """The claim with only its PGD measurements, each swapped; None if it has none."""
    checks = []
    for check in claim.checks:
        measures = tuple(swap[m] for m in check.measures if m in swap)
        if measures:
            checks.append(replace(check, measures=measures))
    return replace(claim, checks=tuple(checks)) if checks else None


def on_autoattack_images(df: pd.DataFrame, eps: list[float]) -> pd.DataFrame:
    """``df`` (``for_analysis`` output) with PGD's ratio on AutoAttack's images at each eps (its accuracy there
    over AutoAttack's clean accuracy, as AutoAttack's own ratio is), and each attack's measurements there kept
    only where the other has them too, so both verdicts rest on the same runs: a run measured before PGD's
    accuracy on AutoAttack's images was logged has AutoAttack's alone, and a collapsed run has no AutoAttack
    ratio (``for_analysis``), so neither ratio."""
    out = df.copy()
    for e in eps:
        accuracy = attack_key("autoattack_pgd", "acc", e)
        if accuracy not in out or AUTOATTACK_CLEAN_ACC not in out:
            continue
        ratio = out[accuracy] / out[AUTOATTACK_CLEAN_ACC].where(out[AUTOATTACK_CLEAN_ACC] > 0)
        out[attack_key("autoattack_pgd", "ratio", e)] = ratio
        for what in ("acc", "ratio"):
            pgd, autoattack = attack_key("autoattack_pgd", what, e), attack_key("autoattack", what, e)
            if autoattack in out:
                both = out[pgd].notna() & out[autoattack].notna()
                out[pgd], out[autoattack] = out[pgd].where(both), out[autoattack].where(both)
    return out


def _measured(claim: Claim, ctx: Context, eps: float | None) -> bool:
    """Whether every set of runs the claim compares has some run with a value of its measurements at ``eps``."""
    return all(any(side.values(ctx.df, metric_key(measure, eps))["value"].notna().any() for measure in check.measures)
               for check in claim.checks for side in check.sides())


def claims_under_autoattack(df: pd.DataFrame, sweep_eps: dict[str, list[float]]) -> pd.DataFrame:
    """One row per claim with a PGD sub-test and eps: its verdict with PGD and with AutoAttack on AutoAttack's
    images (``df``: ``for_analysis`` output), the changed verdicts first, then in the claims' order; a claim
    one of whose sets of runs has none with both measurements is left out. Empty when no run has PGD's accuracy on AutoAttack's
    images."""
    eps = sorted({e for values in sweep_eps.values() for e in values})
    if df.empty or not any(attack_key("autoattack_pgd", "acc", e) in df for e in eps):
        return pd.DataFrame()
    runs = on_autoattack_images(df, eps)
    ctx = study_context(runs)
    rows = []
    for claim in in_report_order():
        sides = {attack: _swapped(claim, swap) for attack, swap in SWAPS.items()}
        if sides["PGD"] is None:
            continue
        for e in claim_eps(sides["PGD"], sweep_eps):
            if not _measured(sides["AutoAttack"], ctx, e):  # some runs it compares never took AutoAttack
                continue
            pgd, autoattack = (evaluate(sides[a], ctx, e, sweep_eps) for a in SWAPS)
            if pgd.verdict == autoattack.verdict == "not run":  # some other runs it compares are not in the sweep
                continue
            changed = f"{pgd.verdict} -> {autoattack.verdict}" if pgd.verdict != autoattack.verdict else ""
            rows.append({"id": claim.id, "section": claim.section, "eps": "" if e is None else f"{e:g}",
                         "claim": claim.claim, "verdict, PGD": pgd.verdict, "verdict, AutoAttack": autoattack.verdict,
                         "changed": changed, "statistic, PGD": pgd.statistic,
                         "statistic, AutoAttack": autoattack.statistic})
    return pd.DataFrame(sorted(rows, key=lambda r: r["changed"] == ""))  # the verdicts that change first
