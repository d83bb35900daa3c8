"""Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient (torch.optim.Adam)."""

from __future__ import annotations

import torch

from .base import Variant


class Adam(Variant):
    name = "adam"

    def build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.Adam(self.model.parameters(), lr=c.effective_lr, betas=tuple(c.betas),
                                weight_decay=c.weight_decay)
