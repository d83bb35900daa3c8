"""AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay (torch.optim.AdamW).

``weight_decay`` is the decoupled decay coefficient here (w <- w - lr * wd * w),
not an L2 term in the gradient as for ``adam`` and ``sgd``.
"""

from __future__ import annotations

import torch

from .base import Variant


class AdamW(Variant):
    name = "adamw"

    def build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.AdamW(self.model.parameters(), lr=c.effective_lr, betas=tuple(c.betas),
                                 weight_decay=c.weight_decay)
