"""The interface every optimizer variant implements.

The training loop only ever calls :meth:`Variant.start_epoch`,
:meth:`Variant.train_step`, :meth:`Variant.end_epoch`, :meth:`Variant.set_lr`
and the state-dict pair; a variant owns its optimizer and everything it does
per minibatch (SVRG's control variate, noisy SGD's loss weights, Selective
Backprop's example selection). The base class holds the shared chores: the
torch optimizer, the learning rate, per-epoch counters, checkpoint state.
The default step is plain minibatch gradient descent on the mean loss.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrialConfig
from ..data import DeviceBatches, Split


@dataclass
class StepResult:
    """What one minibatch contributed to the epoch's training metrics (device tensors, no host sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int


def per_example_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


class Variant:
    """Base class: plain minibatch SGD step on the mean cross-entropy; subclasses change what they must."""

    name: ClassVar[str] = ""
    #: Per-example loss (outputs, targets) -> (B,). Cross-entropy for the study; tests swap in least squares.
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = staticmethod(per_example_cross_entropy)

    def __init__(self, model: nn.Module, config: TrialConfig, train: Split, generator: torch.Generator):
        self.model = model
        self.config = config
        self.train = train
        #: CPU generator for the variant's own randomness (noise, selection); checkpointed with the variant.
        self.generator = generator
        self.optimizer = self.build_optimizer()
        self.counters: Counter[str] = Counter()

    # ---- what subclasses override --------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(self.model.parameters(), lr=c.effective_lr, momentum=c.momentum,
                               weight_decay=c.weight_decay)

    def start_epoch(self, epoch: int, batches: DeviceBatches) -> None:
        """Called before each epoch (0-based) with the epoch's batch source."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One minibatch: forward, loss, backward, optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        losses = self.loss_fn(logits, y)
        self.batch_loss(losses).backward()
        self.optimizer.step()
        self.counters["grad_evals"] += len(y)
        return self.result(logits, losses, y)

    def batch_loss(self, losses: torch.Tensor) -> torch.Tensor:
        """The scalar minimized for a minibatch from the per-example losses (default: their mean)."""
        return losses.mean()

    def extra_state(self) -> dict[str, Any]:
        """Variant state beyond the optimizer's, for checkpoints."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ---- shared chores ---------------------------------------------------------------
    @staticmethod
    def result(logits: torch.Tensor, losses: torch.Tensor, y: torch.Tensor) -> StepResult:
        return StepResult(losses.detach().sum(), (logits.detach().argmax(1) == y).sum(), len(y))

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def end_epoch(self) -> dict[str, float]:
        """The epoch's counters (e.g. gradient evaluations in examples), reset for the next epoch."""
        out = {k: float(v) for k, v in self.counters.items()}
        self.counters.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.load_extra_state(state["extra"])
