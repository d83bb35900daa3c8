"""Minibatch SGD: learning rate, heavy-ball momentum, L2 weight decay (torch.optim.SGD).

The update is the base class's: w <- w - lr * (v), v <- momentum * v + g + weight_decay * w,
with g the gradient of the minibatch's mean cross-entropy. Schedules (step,
constant lr/batch-size ratio) are applied by the training loop through ``set_lr``.
"""

from __future__ import annotations

from .base import Variant


class SGD(Variant):
    name = "sgd"
