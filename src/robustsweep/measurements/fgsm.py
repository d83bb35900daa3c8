"""FGSM (Goodfellow, Shlens, Szegedy 2015): one signed-gradient step of size eps; the study's first attack."""

from __future__ import annotations

from .base import Attack


class FGSM(Attack):
    name = "fgsm"
    label = "FGSM"
    phase = "fgsm"

    def correct(self, ctx, x, y, eps):
        from ..attacks import attack_correct

        return attack_correct(ctx.model, x, y, "fgsm", eps, batch_size=ctx.batch_size, seed=ctx.config.seed)
