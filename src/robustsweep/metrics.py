"""The MLflow metric keys, spelled in one place (reports and users' queries depend on them)."""

from __future__ import annotations

#: Per-epoch learning-curve metrics (MLflow step = epoch, 1-based).
EPOCH_METRICS = ("train_loss", "train_acc", "test_acc", "lr", "epoch_seconds", "test_seconds")
#: Final metrics that do not depend on eps (step = last epoch).
CLEAN_ACC = "clean_acc"
HESSIAN_TOP_EIG = "hessian_top_eig"
HESSIAN_ITERS = "hessian_iters"
ATTACKED_CLEAN_ACC = "attacked_clean_acc"
#: Peak GPU memory of the trial's process, MiB (GPU trials only).
PEAK_GPU_MIB = "peak_gpu_mib"
#: The end-of-trial phases whose wall seconds are logged as ``seconds_<phase>`` (all eps together).
EVAL_PHASES = ("clean_eval", "fgsm", "pgd", "hessian")

#: Both datasets have 10 balanced classes; a constant prediction scores about 0.1 (MNIST's most
#: frequent test class, the digit 1, is 11.35% of its test set).
CHANCE_ACCURACY = 0.1
#: A trained network whose clean accuracy is no more than this above chance has collapsed (it
#: predicts nearly one class): attacks cannot lower it, so its attack ratio is ~1 and its Hessian
#: ~0, which would read as the most robust, flattest trial. Such trials get outcome=collapsed.
COLLAPSE_MARGIN = 0.05


def is_collapsed(clean_accuracy: float) -> bool:
    return clean_accuracy <= CHANCE_ACCURACY + COLLAPSE_MARGIN


def phase_seconds_key(phase: str) -> str:
    return f"seconds_{phase}"


def is_timing(key: str) -> bool:
    """Wall-clock metrics (epoch_seconds, test_seconds, seconds_pgd, ...): they differ between identical runs."""
    return key.endswith("_seconds") or key.startswith("seconds_")


def eps_label(eps: float) -> str:
    return f"{eps:g}"


def attack_key(attack: str, what: str, eps: float) -> str:
    """``fgsm_acc_eps0.03``, ``pgd_ratio_eps0.15``: attack in {fgsm, pgd}, what in {acc, ratio}."""
    return f"{attack}_{what}_eps{eps_label(eps)}"


def measurement_keys(eps: tuple[float, ...] | list[float]) -> list[str]:
    """The study's measurements in table order: clean, FGSM/PGD accuracy and ratio per eps, eigenvalue."""
    keys = [CLEAN_ACC]
    for attack in ("fgsm", "pgd"):
        for e in eps:
            keys += [attack_key(attack, "acc", e), attack_key(attack, "ratio", e)]
    return keys + [HESSIAN_TOP_EIG]


def final_metric_keys(eps: tuple[float, ...] | list[float]) -> list[str]:
    """Every metric a finished trial logs at its last epoch."""
    return measurement_keys(eps) + [ATTACKED_CLEAN_ACC, HESSIAN_ITERS] + [phase_seconds_key(p) for p in EVAL_PHASES]
