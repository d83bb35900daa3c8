"""Selective Backprop: back-propagate the examples with the highest losses.

Jiang, Wong, Zhou, Andersen, Dean, Ganger, Joshi, Kaminsky, Kozuch, Lipton,
Pillai, "Accelerating deep learning by focusing on the biggest losers", 2019,
and the authors' reference implementation, which this module follows.

Update rule. Every example of each incoming minibatch is forwarded without
gradients, in eval mode, giving its loss l. The batch's losses are added to a
history of the last R losses, then each example is selected with probability

    P(l) = CDF_R(l) ** beta,

where CDF_R(l) is the fraction of the R recorded losses (this batch's
included) that are lower than l. Selected examples accumulate in a pool; each
time the pool holds a full batch (the training batch size), that batch is
back-propagated with an ``sgd`` step (lr, momentum, weight decay) on its mean
loss, in training mode.

As in the reference code:

* beta = 3 by default (``sb_beta``; the paper studies 1, 2 and 3: beta 3
  back-propagates about a quarter of the examples), R = 1024 (``sb_history``);
* the selection forward runs in eval mode: BatchNorm normalizes with its
  running statistics there and does not update them; the back-propagated
  batch's forward, in training mode, updates them (with the selected, high-loss
  examples, as the reference code does);
* the current batch's losses enter the history before P is computed.

Choices the paper leaves open, and what was chosen:

* The first epoch back-propagates every example (P = 1) while recording the
  loss history, so the CDF is meaningful afterwards.
* "Lower" is strict: an example whose loss ties the lowest recorded has P = 0.
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
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
        with torch.no_grad(), eval_mode(self.model):
            logits = self.model(x)
            losses = self.loss_fn(logits, y)
        self.record(losses)
        if self.select_all:
            chosen = torch.ones_like(y, dtype=torch.bool)
        else:
            p = selection_probability(losses, self.history, self.config.sb_beta)
            chosen = torch.rand(len(y), generator=self.generator).to(p.device) < p
        self.last_chosen = chosen
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
        self.loss_fn(self.model(x), y).mean().backward()
        self.optimizer.step()
        self.counters["sb_backward"] += len(y)
        self.counters["grad_evals"] += len(y)

    def extra_state(self) -> dict[str, Any]:
        return {"history": self.history, "pool_x": self.pool_x, "pool_y": self.pool_y}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.history = state["history"]
        self.pool_x, self.pool_y = state["pool_x"], state["pool_y"]
