"""Mini-batch multiplicative noisy SGD with Fisher-covariance noise.

Wu, Hu, Xiong, Huan, Braverman, Zhu, "On the noisy gradient descent that
generalizes as SGD", ICML 2020; the study's Algorithm 2.

Update rule. For a minibatch B of size b with per-example losses l_i and
gradients g_i, draw weights W_i = 1 + V_i, V_i ~ N(0, sigma^2) independently,
and descend on the randomized loss

    L~ = (1/b) sum_i W_i l_i.

Its gradient is g_B + (1/b) sum_i V_i g_i: unbiased (mean g_B), with extra
noise of covariance (sigma^2 / b^2) sum_i g_i g_i^T, i.e. sigma^2 / b times the
minibatch empirical Fisher. The optimizer step is ``sgd``'s (lr, momentum,
weight decay).

Noise scale. sigma is fixed (``noise_std``, default 1.0), the same at every
batch size, as the study's Algorithm 2 and Wu et al.'s code draw W = 1 + V
with V Gaussian of a fixed scale. Near a minimum, where the empirical Fisher
is close to the gradient covariance Sigma, plain SGD at batch b has noise
covariance about Sigma / b and this variant about (1 + sigma^2) Sigma / b:
with sigma = 1, the noise of SGD at batch b / 2, at every batch size. So:

* it adds noise at every batch size of the study, 32 included (a rule that
  emulates a reference batch, sigma^2 = b / b_ref - 1, adds none at b_ref);
* under a constant learning-rate-to-batch-size ratio the noise still scales
  as 1/b, like SGD's own: the batch size is not counted twice (the reference
  rule would give batch 1024 the noise of batch 32 on top of a 32x rate).

The reference-batch rule stays available as an explicit choice
(``noise_ref_batch``), for Wu et al.'s experiment of giving a large batch the
noise of a small one at a fixed rate.

Choices the papers leave open: Gaussian V (Wu et al. also allow other
zero-mean distributions); sigma = 1 (the study states no value); the noise
is drawn from the trial's seeded CPU generator, per example and per step.
"""

from __future__ import annotations

import math

import torch

from ..config import DEFAULT_NOISE_STD
from .base import Variant


def noise_std_for(batch_size: int, ref_batch: int) -> float:
    """sigma such that batch ``batch_size`` carries the SGD noise of batch ``ref_batch`` (opt-in rule)."""
    return math.sqrt(max(batch_size / ref_batch - 1.0, 0.0))


class NoisySGD(Variant):
    name = "sgdnoise"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        if c.noise_std is not None:
            self.sigma = c.noise_std
        elif c.noise_ref_batch is not None:
            self.sigma = noise_std_for(c.batch_size, c.noise_ref_batch)
        else:
            self.sigma = DEFAULT_NOISE_STD

    def loss_weights(self, n: int, device: torch.device) -> torch.Tensor:
        """W_i = 1 + V_i, V_i ~ N(0, sigma^2)."""
        return 1.0 + self.sigma * torch.randn(n, generator=self.generator).to(device)

    def batch_loss(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.loss_weights(len(losses), losses.device) * losses).mean()
