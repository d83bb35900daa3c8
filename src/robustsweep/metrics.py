"""The MLflow metric keys, spelled in one place (reports and users' queries depend on them)."""

from __future__ import annotations

#: Per-epoch learning-curve metrics (MLflow step = epoch, 1-based).
EPOCH_METRICS = ("train_loss", "train_acc", "test_acc", "lr", "epoch_seconds")
#: Final metrics that do not depend on eps (step = last epoch).
CLEAN_ACC = "clean_acc"
HESSIAN_TOP_EIG = "hessian_top_eig"
HESSIAN_ITERS = "hessian_iters"
ATTACKED_CLEAN_ACC = "attacked_clean_acc"


def eps_label(eps: float) -> str:
    return f"{eps:g}"


def attack_key(attack: str, what: str, eps: float) -> str:
    """``fgsm_acc_eps0.03``, ``pgd_ratio_eps0.15``: attack in {fgsm, pgd}, what in {acc, ratio}."""
    return f"{attack}_{what}_eps{eps_label(eps)}"


def final_metric_keys(eps: tuple[float, ...] | list[float]) -> list[str]:
    keys = [CLEAN_ACC, ATTACKED_CLEAN_ACC, HESSIAN_TOP_EIG, HESSIAN_ITERS]
    for e in eps:
        for attack in ("fgsm", "pgd"):
            keys += [attack_key(attack, "acc", e), attack_key(attack, "ratio", e)]
    return keys
