"""Mini-batch multiplicative noisy SGD with Fisher-covariance noise.

Wu, Hu, Xiong, Huan, Braverman, Zhu, "On the noisy gradient descent that
generalizes as SGD", ICML 2020.

Update rule. For a minibatch B of size b with per-example losses l_i and
gradients g_i, draw v_i ~ N(0, sigma^2) independently and descend on the
randomized loss

    L~ = (1/b) sum_i (1 + v_i) l_i.

Its gradient is g_B + (1/b) sum_i v_i g_i: unbiased (mean g_B), with noise
covariance (sigma^2 / b^2) sum_i g_i g_i^T, i.e. sigma^2 / b times the
minibatch empirical Fisher. The optimizer step is ``sgd``'s (lr, momentum,
weight decay).

Noise scale. ``noise_std`` sets sigma directly. Otherwise sigma comes from a
reference batch size b_ref (``noise_ref_batch``, default 32, the study's
smallest batch): plain SGD at batch b has gradient-noise covariance about
(1/b) Sigma; adding the multiplicative noise makes it about (1 + sigma^2)/b Sigma
(with the empirical Fisher ~ Sigma near a minimum), so matching SGD at b_ref
gives

    sigma^2 = b / b_ref - 1     (0 when b <= b_ref: no extra noise).

This is how Wu et al. use it: a large batch carries the gradient noise of a
small one.

Choices the paper leaves open: Gaussian v_i (the paper also allows other
zero-mean distributions); the noise is drawn from the trial's seeded CPU
generator, per example and per step.
"""

from __future__ import annotations

import math

import torch

from .base import Variant


def noise_std_for(batch_size: int, ref_batch: int) -> float:
    """sigma such that batch ``batch_size`` carries the SGD noise of batch ``ref_batch``."""
    return math.sqrt(max(batch_size / ref_batch - 1.0, 0.0))


class NoisySGD(Variant):
    name = "sgdnoise"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        self.sigma = c.noise_std if c.noise_std is not None else noise_std_for(c.batch_size, c.noise_ref_batch or 32)

    def loss_weights(self, n: int, device: torch.device) -> torch.Tensor:
        """w_i = 1 + v_i, v_i ~ N(0, sigma^2)."""
        return 1.0 + self.sigma * torch.randn(n, generator=self.generator).to(device)

    def batch_loss(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.loss_weights(len(losses), losses.device) * losses).mean()
