"""Accuracy under l-inf attacks (torchattacks FGSM, PGD and AutoAttack's APGD pair) on pixels in [0, 1].

The models normalize inside, so torchattacks sees [0, 1] inputs as it
expects. Attacks are built after the model is on its device (torchattacks
reads the device from the parameters) and run with the model in eval mode
(torchattacks' default), which this module restores afterwards.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

ATTACKS = ("fgsm", "pgd", "autoattack")
#: AutoAttack "standard" (Croce & Hein 2020, the reference code): 100 iterations per APGD run and
#: APGD-T against the 9 most likely wrong classes of a 10-class problem.
AUTOATTACK_STEPS = 100
AUTOATTACK_TARGETS = 9


def pgd_default_step_size(eps: float, steps: int) -> float:
    """2.5 * eps / steps, the rule of Madry et al. (2018): PGD can cross the whole ball and back."""
    return 2.5 * eps / steps


def build_attack(model: nn.Module, attack: str, eps: float, *, steps: int = 20, step_size: float | None = None,
                 random_start: bool = True) -> torchattacks.attack.Attack:
    if attack == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if attack == "pgd":
        alpha = pgd_default_step_size(eps, steps) if step_size is None else step_size
        return torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
    raise ValueError(f"unknown attack {attack!r}: allowed are {', '.join(ATTACKS)}")


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    return int((model(x).argmax(1) == y).sum())


def attack_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, attack: str, eps: float,
                    **options) -> float:
    """Fraction of (inputs, targets) that ``model`` classifies correctly after the attack, in [0, 1].

    ``attack`` is "fgsm", "pgd" (l-inf, random start) or "autoattack"; see :func:`attack_correct`.
    """
    return int(attack_correct(model, inputs, targets, attack, eps, **options).sum()) / max(len(targets), 1)


def attack_correct(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, attack: str, eps: float,
                   **options) -> torch.Tensor:
    """Per example, whether ``model`` classifies it correctly after the attack (a bool tensor on the CPU).

    Options: ``steps`` (PGD, default 20; AutoAttack, default 100), ``step_size`` (PGD, default
    2.5 * eps / steps), ``random_start`` (PGD, default True), ``target_classes`` (AutoAttack),
    ``batch_size`` (default 1000) and ``seed`` (the random starts, default 0). Inputs must be pixels in
    [0, 1]. Each example's result does not depend on the batch it was attacked in, so the first n
    results are those of attacking the first n examples alone (tests/test_measurements.py).
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}: allowed are {', '.join(ATTACKS)}")
    if attack == "autoattack":
        return autoattack_robust(model, inputs, targets, eps, **options).cpu()
    batch_size = int(options.pop("batch_size", 1000))
    seed = int(options.pop("seed", 0))
    was_training = model.training
    device = next(model.parameters()).device
    atk = build_attack(model, attack, eps, **options)
    correct = []
    devices = [device] if device.type == "cuda" else []
    try:
        # PGD's random start uses the global RNG: fork it so results are seeded and the caller's stream untouched.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(targets), batch_size):
                x = inputs[start:start + batch_size].to(device)
                y = targets[start:start + batch_size].to(device)
                adversarial = atk(x, y)
                model.eval()
                with torch.no_grad():
                    correct.append((model(adversarial).argmax(1) == y).cpu())
    finally:
        model.train(was_training)
    return torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)


def autoattack_robust(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, eps: float, *,
                      steps: int = AUTOATTACK_STEPS, target_classes: int = AUTOATTACK_TARGETS, seed: int = 0,
                      batch_size: int = 1000) -> torch.Tensor:
    """Per example, whether ``model`` stays correct under the worst case of APGD-CE and APGD-T (l-inf, ``eps``).

    The two gradient attacks of AutoAttack "standard" (Croce & Hein, ICML 2020), composed as its
    reference code composes them: APGD with the cross-entropy loss, then, on the examples still
    classified correctly, targeted APGD with the DLR loss against each of the ``target_classes``
    most likely wrong classes in turn. An example counts as robust only if it is correct on its
    clean image and on the adversarial image of every attack that ran on it. FAB-T and Square, the
    standard version's other two attacks, are left out: in the AutoAttack paper's evaluations the
    two APGD runs account for nearly all of the ensemble's success on models without gradient
    masking, and FAB-T and Square cost several times more.

    torchattacks' own ``AutoAttack`` wrapper builds these attacks with 10 steps and a clock seed,
    so they are built here from its components with explicit ``steps``, targets and ``seed``. The
    attacks reseed the global RNG on every call: it is forked, so the caller's stream is untouched.
    Returns a bool tensor on the inputs' device.
    """
    was_training = model.training
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            logits = torch.cat([model(inputs[s:s + batch_size].to(device)) for s in range(0, len(targets), batch_size)])
            robust = logits.argmax(1) == targets.to(device)
        n_classes = logits.shape[1]
        if n_classes < 4:
            raise ValueError(f"AutoAttack's DLR loss needs at least 4 classes; the model has {n_classes}")
        if not 1 <= target_classes <= n_classes - 1:
            raise ValueError(f"target_classes must be in 1..{n_classes - 1} for a {n_classes}-class model, "
                             f"got {target_classes}")
        apgd_ce = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce")
        apgd_t = torchattacks.APGDT(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=seed,
                                    n_classes=n_classes)
        apgd_t.n_target_classes = target_classes  # torchattacks fixes it at n_classes - 1
        for attack in (apgd_ce, apgd_t):
            with torch.random.fork_rng(devices=devices):
                remaining = robust.nonzero().flatten()
                for start in range(0, len(remaining), batch_size):
                    index = remaining[start:start + batch_size]
                    x, y = inputs[index.to(inputs.device)].to(device), targets[index.to(targets.device)].to(device)
                    adversarial = attack(x, y)
                    model.eval()
                    with torch.no_grad():
                        robust[index] &= model(adversarial).argmax(1) == y
    finally:
        model.train(was_training)
    return robust


@torch.no_grad()
def clean_accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction classified correctly, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        correct = sum(_correct(model, inputs[s:s + batch_size], targets[s:s + batch_size])
                      for s in range(0, len(targets), batch_size))
    finally:
        model.train(was_training)
    return correct / max(len(targets), 1)
