"""The MLflow metric keys, spelled in one place (reports and users' queries depend on them)."""

from __future__ import annotations

#: Per-epoch learning-curve metrics (MLflow step = epoch, 1-based).
EPOCH_METRICS = ("train_loss", "train_acc", "test_acc", "lr", "epoch_seconds", "test_seconds")
#: Final metrics that do not depend on eps (step = last epoch).
CLEAN_ACC = "clean_acc"
HESSIAN_TOP_EIG = "hessian_top_eig"
HESSIAN_ITERS = "hessian_iters"
ATTACKED_CLEAN_ACC = "attacked_clean_acc"
#: AutoAttack's clean accuracy on its own (possibly smaller) subset: the base of its ratios.
AUTOATTACK_CLEAN_ACC = "autoattack_clean_acc"
#: Hutchinson's trace estimate of the Hessian and its standard error (curvature: trace).
HESSIAN_TRACE = "hessian_trace"
HESSIAN_TRACE_SE = "hessian_trace_se"
#: Lanczos products spent on the top-k eigenvalues (curvature: top_k).
HESSIAN_TOP_K_ITERS = "hessian_top_k_iters"
#: The epoch training stopped at (stop_train_acc), and whether it reached the target accuracy.
STOPPED_EPOCH = "stopped_epoch"
REACHED_STOP_TRAIN_ACC = "reached_stop_train_acc"
#: The trial's wall seconds from the start of its run_trial call (data loading, model set-up and MLflow
#: included; the interpreter's and torch's import and Ray's worker start-up not) to its end, summed over its
#: attempts (a resumed trial's earlier attempts up to their last checkpoint): what it cost, without the breaks
#: between them.
TRIAL_SECONDS = "trial_seconds"
#: Peak GPU memory of the trial's process, MiB (GPU trials only).
PEAK_GPU_MIB = "peak_gpu_mib"
#: The end-of-trial phases whose wall seconds are logged as ``seconds_<phase>`` (all eps together).
EVAL_PHASES = ("clean_eval", "fgsm", "pgd", "hessian")

#: Chance accuracy of the study's datasets: both have 10 balanced classes, so a constant prediction
#: scores about 0.1 (MNIST's most frequent test class, the digit 1, is 11.35% of its test set). Other
#: datasets declare their classes (robustsweep.datasets: chance = 1 / num_classes).
CHANCE_ACCURACY = 0.1
#: A trained network whose clean accuracy is no more than this above chance has collapsed (it
#: predicts nearly one class): attacks cannot lower it, so its attack ratio is ~1 and its Hessian
#: ~0, which would read as the most robust, flattest trial. Such trials get outcome=collapsed.
COLLAPSE_MARGIN = 0.05


def is_collapsed(clean_accuracy: float, chance: float = CHANCE_ACCURACY) -> bool:
    """Whether a trained network's clean accuracy is within COLLAPSE_MARGIN of its dataset's chance."""
    return clean_accuracy <= chance + COLLAPSE_MARGIN


def phase_seconds_key(phase: str) -> str:
    return f"seconds_{phase}"


def is_timing(key: str) -> bool:
    """Wall-clock metrics (epoch_seconds, test_seconds, seconds_pgd, ...): they differ between identical runs."""
    return key.endswith("_seconds") or key.startswith("seconds_")


def eps_label(eps: float) -> str:
    return f"{eps:g}"


def attack_key(attack: str, what: str, eps: float) -> str:
    """``fgsm_acc_eps0.03``, ``pgd_ratio_eps0.15``: attack in {fgsm, pgd, autoattack}, what in {acc, ratio}."""
    return f"{attack}_{what}_eps{eps_label(eps)}"


def hessian_eig_key(i: int) -> str:
    """``hessian_eig_1`` is the largest eigenvalue, ``hessian_eig_2`` the next (curvature: top_k)."""
    return f"hessian_eig_{i}"


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


def trial_metric_keys(config) -> list[str]:
    """Every metric a finished trial with this (resolved) config logs at its last epoch."""
    from . import measurements

    keys = [CLEAN_ACC, ATTACKED_CLEAN_ACC, phase_seconds_key("clean_eval")]
    for measurement in measurements.chosen(config):
        keys += measurement.keys(config) + [phase_seconds_key(measurement.phase)]
    if config.stop_train_acc is not None:
        keys += [STOPPED_EPOCH, REACHED_STOP_TRAIN_ACC]
    return keys
