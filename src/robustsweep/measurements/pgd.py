"""PGD (Madry et al. 2018): ``pgd_steps`` projected signed-gradient steps from a random start in the eps ball.

The study names PGD without its settings; ``pgd_steps`` (20) and the step 2.5 * eps / steps are
Madry et al.'s rule (robustsweep.attacks).
"""

from __future__ import annotations

from .base import Attack


class PGD(Attack):
    name = "pgd"
    label = "PGD"
    phase = "pgd"

    def correct(self, ctx, x, y, eps):
        from ..attacks import attack_correct

        c = ctx.config
        return attack_correct(ctx.model, x, y, "pgd", eps, batch_size=ctx.batch_size, seed=c.seed,
                              steps=c.pgd_steps, step_size=c.pgd_step_size)
