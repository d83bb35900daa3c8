"""SVRG: stochastic variance-reduced gradient.

Johnson & Zhang, "Accelerating stochastic gradient descent using predictive
variance reduction", NeurIPS 2013; the large-batch snapshot of Babanezhad et
al., "Stop wasting my gradients: practical SVRG", NeurIPS 2015.

Update rule. Every ``svrg_snapshot_every`` epochs a snapshot w~ of the
weights is stored with mu = the mean gradient at w~ over the training set
(or over ``svrg_snapshot_batch`` = N >= b random examples, the practical
variant). Each inner step on a minibatch B uses the direction

    d = g_B(w) - g_B(w~) + mu

(the same minibatch, with the same augmentation, for both gradients), and the
configured optimizer step (lr, momentum, weight decay as for ``sgd``) with d
in place of the gradient.

Choices the papers leave open, and what was chosen:

* Snapshot frequency: once per epoch (Johnson & Zhang's practical choice of
  m = 2n for convex problems is "every 1-2 epochs"); configurable.
* mu is accumulated over minibatches of the training batch size, in
  training mode, over one augmented pass of the data in the epoch's random
  order. So mu is exactly the average of the correction term g_B(w~) that the
  inner steps subtract, including BatchNorm's per-batch statistics, and d
  stays an unbiased estimate of the full gradient.
* BatchNorm: both snapshot gradients (mu and g_B(w~)) are taken on a separate
  copy of the model in training mode (batch statistics, as the inner step's
  g_B(w) is). The copy's running statistics move, the trained model's do not:
  the snapshot pass never disturbs the running statistics that evaluation uses.
* The snapshot is the current weights (Johnson & Zhang's "option I").
* Cost: each inner step evaluates two minibatch gradients, and each snapshot
  one pass over N examples; ``grad_evals`` counts per-example gradient
  evaluations per epoch (SGD's is the number of training examples).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..data import DeviceBatches
from .base import StepResult, Variant


class SVRG(Variant):
    name = "svrg"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshot = copy.deepcopy(self.model)
        self.snapshot.requires_grad_(True)
        self.mu: list[torch.Tensor] | None = None

    def start_epoch(self, epoch: int, batches: DeviceBatches) -> None:
        if self.mu is None or epoch % self.config.svrg_snapshot_every == 0:
            self.take_snapshot(batches)

    def take_snapshot(self, batches: DeviceBatches) -> None:
        """Copy the weights to the snapshot and average its gradient over N examples."""
        self.snapshot.load_state_dict(self.model.state_dict())
        self.snapshot.train()
        params = list(self.snapshot.parameters())
        total = [torch.zeros_like(p) for p in params]
        limit = self.config.svrg_snapshot_batch or None  # None: one full pass
        seen = 0
        for x, y in batches:
            if limit is not None:
                x, y = x[: limit - seen], y[: limit - seen]
            loss = self.loss_fn(self.snapshot(x), y).sum()
            for acc, g in zip(total, torch.autograd.grad(loss, params)):
                acc += g
            seen += len(y)
            if limit is not None and seen >= limit:
                break
        self.mu = [t / seen for t in total]
        self.counters["grad_evals"] += seen
        self.counters["snapshots"] += 1

    def direction(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The variance-reduced direction g_B(w) - g_B(w~) + mu, with the outputs and losses at w."""
        logits = self.model(x)
        losses = self.loss_fn(logits, y)
        grads = torch.autograd.grad(losses.mean(), list(self.model.parameters()))
        snap_loss = self.loss_fn(self.snapshot(x), y).mean()
        snap_grads = torch.autograd.grad(snap_loss, list(self.snapshot.parameters()))
        self.counters["grad_evals"] += 2 * len(y)
        return [g - gs + mu for g, gs, mu in zip(grads, snap_grads, self.mu)], logits, losses

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        direction, logits, losses = self.direction(x, y)
        for p, d in zip(self.model.parameters(), direction):
            p.grad = d
        self.optimizer.step()
        return self.result(logits, losses, y)

    def extra_state(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot.state_dict(), "mu": self.mu}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.snapshot.load_state_dict(state["snapshot"])
        self.mu = state["mu"]
