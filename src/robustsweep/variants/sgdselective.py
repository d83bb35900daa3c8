"""Selective Backprop: back-propagate the examples with the highest losses.

Jiang, Wong, Zhou, Andersen, Dean, Ganger, Joshi, Kaminsky, Kozuch, Lipton,
Pillai, "Accelerating deep learning by focusing on the biggest losers", 2019.

Update rule. Every example of each incoming minibatch is forwarded without
gradients, giving its loss l. It is selected with probability

    P(l) = CDF_R(l) ** beta,

where CDF_R(l) is the fraction of the last R recorded losses that are lower
than l; the losses of every forwarded example are recorded. Selected examples
accumulate in a pool; each time the pool holds a full batch (the training
batch size), that batch is back-propagated with an ``sgd`` step (lr,
momentum, weight decay) on its mean loss.

Choices the paper leaves open, and what was chosen:

* beta = 1 by default (the paper studies 1, 2 and 3; 1 selects about half
  the examples); R = 1024 as in the reference implementation.
* The first epoch back-propagates every example (P = 1) while recording the
  loss history, so the CDF is meaningful afterwards.
* The CDF is taken over the history before the current batch's losses are
  added; an empty history selects everything.
* The selection forward runs in training mode (the losses match what would
  be back-propagated) and updates BatchNorm's running statistics with every
  example; the backward pass's forward does not update them again
  (momentum 0 for that pass), so the running statistics are not biased
  towards the selected high-loss examples.
* Examples left in the pool at the end of an epoch carry over to the next.
* ``sb_forward`` and ``sb_backward`` count forwarded and back-propagated
  examples per epoch (``grad_evals`` = ``sb_backward``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..data import DeviceBatches
from .base import StepResult, Variant


def selection_probability(losses: torch.Tensor, history: torch.Tensor, beta: float) -> torch.Tensor:
    """P = CDF(loss)^beta, CDF = fraction of ``history`` strictly lower than each loss (1 when empty)."""
    if history.numel() == 0:
        return torch.ones_like(losses)
    cdf = (history[None, :] < losses[:, None]).float().mean(dim=1)
    return cdf.pow(beta)


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """Keep BatchNorm in training mode (batch statistics) but stop it updating running statistics.

    Momentum 0 keeps the running mean and variance; the batch counter is put back afterwards.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


class SelectiveBackprop(Variant):
    name = "sgdselective"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        device = self.train.images.device
        self.history = torch.empty(0, device=device)
        self.pool_x: torch.Tensor | None = None
        self.pool_y: torch.Tensor | None = None
        self.select_all = True
        #: Which examples of the latest incoming batch were selected (for inspection and tests).
        self.last_chosen: torch.Tensor | None = None

    def start_epoch(self, epoch: int, batches: DeviceBatches) -> None:
        self.select_all = epoch == 0

    def record(self, losses: torch.Tensor) -> None:
        self.history = torch.cat([self.history, losses])[-self.config.sb_history:]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        with torch.no_grad():
            logits = self.model(x)
            losses = self.loss_fn(logits, y)
        if self.select_all:
            chosen = torch.ones_like(y, dtype=torch.bool)
        else:
            p = selection_probability(losses, self.history, self.config.sb_beta)
            chosen = torch.rand(len(y), generator=self.generator).to(p.device) < p
        self.last_chosen = chosen
        self.record(losses)
        self.counters["sb_forward"] += len(y)
        self.pool_x = x[chosen] if self.pool_x is None else torch.cat([self.pool_x, x[chosen]])
        self.pool_y = y[chosen] if self.pool_y is None else torch.cat([self.pool_y, y[chosen]])
        b = self.config.batch_size
        while len(self.pool_y) >= b:
            self.backprop(self.pool_x[:b], self.pool_y[:b])
            self.pool_x, self.pool_y = self.pool_x[b:], self.pool_y[b:]
        return self.result(logits, losses, y)

    def backprop(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with frozen_batchnorm_statistics(self.model):
            self.loss_fn(self.model(x), y).mean().backward()
        self.optimizer.step()
        self.counters["sb_backward"] += len(y)
        self.counters["grad_evals"] += len(y)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history, "pool_x": self.pool_x, "pool_y": self.pool_y}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = state["history"]
        self.pool_x, self.pool_y = state["pool_x"], state["pool_y"]
