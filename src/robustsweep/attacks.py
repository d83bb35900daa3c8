"""Accuracy under l-inf attacks (torchattacks FGSM and PGD) on pixels in [0, 1].

The models normalize inside, so torchattacks sees [0, 1] inputs as it
expects. Attacks are built after the model is on its device (torchattacks
reads the device from the parameters) and run with the model in eval mode
(torchattacks' default), which this module restores afterwards.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

ATTACKS = ("fgsm", "pgd")


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

    ``attack`` is "fgsm" or "pgd" (l-inf, random start). Options: ``steps``
    (PGD, default 20), ``step_size`` (PGD, default 2.5 * eps / steps),
    ``random_start`` (PGD, default True), ``batch_size`` (default 1000) and
    ``seed`` (PGD's random start, default 0). Inputs must be pixels in [0, 1].
    """
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}: allowed are {', '.join(ATTACKS)}")
    batch_size = int(options.pop("batch_size", 1000))
    seed = int(options.pop("seed", 0))
    was_training = model.training
    device = next(model.parameters()).device
    atk = build_attack(model, attack, eps, **options)
    correct = 0
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
                correct += _correct(model, adversarial, y)
    finally:
        model.train(was_training)
    return correct / max(len(targets), 1)


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
