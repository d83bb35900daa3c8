"""AutoAttack's gradient pair (Croce & Hein 2020): per example, the worst case of APGD-CE and APGD-T.

See :func:`robustsweep.attacks.autoattack_robust` for the composition. Settings: ``autoattack_steps``
(100) and ``autoattack_targets`` (9), the reference "standard" version's; ``autoattack_subset``
attacks only the first N of the attacked examples, since it costs about (1 + targets) x 100 steps per
image that APGD-CE does not break. Its ratios are over the clean accuracy on that subset, logged as
``autoattack_clean_acc``. When PGD ran before it (``attacks: [..., pgd, autoattack]``), PGD's accuracy
on the same images is logged as ``autoattack_pgd_acc_eps<eps>``: where PGD scores more than 2 points
above AutoAttack there, PGD was too weak or the gradients are masked (the report flags it).
"""

from __future__ import annotations

from .. import metrics as keys
from .base import Attack


class AutoAttack(Attack):
    name = "autoattack"
    label = "AutoAttack (APGD-CE + APGD-T)"
    phase = "autoattack"

    def keys(self, config):
        paired = [keys.attack_key("autoattack_pgd", "acc", e) for e in config.eps] \
            if "pgd" in config.attacks and config.attacks.index("pgd") < config.attacks.index(self.name) else []
        return super().keys(config) + [keys.AUTOATTACK_CLEAN_ACC] + paired

    def examples(self, ctx):
        x, y = ctx.attacked
        n = ctx.config.autoattack_subset
        if not n or n >= len(y):
            return x, y, ctx.attacked_clean_acc, {keys.AUTOATTACK_CLEAN_ACC: ctx.attacked_clean_acc}
        from ..attacks import clean_accuracy

        x, y = x[:n], y[:n]
        with ctx.clock("clean_eval"):
            base = clean_accuracy(ctx.model, x, y, ctx.batch_size)
        return x, y, base, {keys.AUTOATTACK_CLEAN_ACC: base}

    def correct(self, ctx, x, y, eps):
        from ..attacks import attack_correct

        c = ctx.config
        return attack_correct(ctx.model, x, y, "autoattack", eps, batch_size=ctx.batch_size, seed=c.seed,
                              steps=c.autoattack_steps, target_classes=c.autoattack_targets)

    def measure(self, ctx):
        out = super().measure(ctx)
        n = len(ctx.correct[(self.name, ctx.config.eps[0])]) if ctx.config.eps else 0
        for eps in ctx.config.eps:
            pgd = ctx.correct.get(("pgd", eps))
            if pgd is not None:  # PGD's results on the same first n images (they do not depend on batching)
                out[keys.attack_key("autoattack_pgd", "acc", eps)] = int(pgd[:n].sum()) / max(n, 1)
        return out
