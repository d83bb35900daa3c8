"""PGD against AutoAttack on the same images, per run: a gap of more than 2 points is a warning sign.

AutoAttack's gradient pair is at least as strong as a sound PGD; where PGD's accuracy is more than 2
points above AutoAttack's on the same images (``autoattack_pgd_acc_eps*`` beside ``autoattack_acc_eps*``),
PGD was too weak for that model or its gradients are masked, and PGD-based robustness overstates it.
"""

from __future__ import annotations

import pandas as pd

from ..metrics import attack_key, eps_label

#: Accuracy points (as a fraction) above which the PGD-AutoAttack gap is flagged.
GAP_FLAG = 0.02


def autoattack_gap(table: pd.DataFrame, eps: dict[str, list[float]]) -> pd.DataFrame:
    """One row per run and eps where AutoAttack ran with PGD before it."""
    rows = []
    for dataset, radii in eps.items():
        part = table[table["dataset"] == dataset] if not table.empty else table
        for e in radii:
            pgd, aa = attack_key("autoattack_pgd", "acc", e), attack_key("autoattack", "acc", e)
            if pgd not in part or aa not in part:
                continue
            for _, r in part[part[pgd].notna() & part[aa].notna()].iterrows():
                gap = r[pgd] - r[aa]
                rows.append({"trial_id": r["trial_id"], "variant": r["variant"], "batch_size": r["batch_size"],
                             "lr": r["lr"], "seed": r["seed"], "eps": eps_label(e), "pgd_acc": r[pgd],
                             "autoattack_acc": r[aa], "gap": gap,
                             "flag": "PGD too weak or gradients masked" if gap > GAP_FLAG else ""})
    return pd.DataFrame(rows, columns=["trial_id", "variant", "batch_size", "lr", "seed", "eps", "pgd_acc",
                                       "autoattack_acc", "gap", "flag"])
