"""The study's models. Each takes pixels in [0, 1] and normalizes inside, so attacks work in pixel space."""

from __future__ import annotations

import torch
from torch import nn

from .data import NORMALIZATION


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer (buffers, not parameters)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class M1(nn.Module):
    """M1 of Yao et al. 2018 ("Hessian-based analysis of large batch training and robustness to adversaries"):
    Conv(5x5, 20) - max-pool - Conv(5x5, 50) - max-pool - FC(500) - FC(10), ReLU, for 1x28x28 MNIST.

    Each ReLU comes after its max-pool, on a quarter of the values: max(relu(a), relu(b)) =
    relu(max(a, b)), and both orders send the gradient to the same element (or to none), so the
    outputs and every gradient are bit for bit those of conv-ReLU-pool (tests/test_models.py); a
    training step, PGD and the Hessian run 6-10% faster on a CPU. The parameters keep their names
    (features.0, features.3), so weights saved with either order load into the other.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(*NORMALIZATION["mnist"])
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),   # 28 -> 24 -> 12
            nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.ReLU(),  # 12 -> 8 -> 4
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(50 * 4 * 4, 500), nn.ReLU(), nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 (Simonyan & Zisserman 2015, configuration A) for 3x32x32 CIFAR-10.

    With BatchNorm after every convolution and a single linear classifier on the
    512-channel 1x1 output, the usual CIFAR adaptation (as in the widely used
    pytorch-cifar models). BatchNorm is kept because without it VGG-11 does not
    train at the study's learning rate of 0.1 from a standard initialization;
    Hessian and attacks evaluate the model in eval mode (running statistics).
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.normalize = Normalize(*NORMALIZATION["cifar10"])
        layers: list[nn.Module] = []
        channels = 3
        for item in VGG11_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


MODELS = {"m1": M1, "vgg11": VGG11}


def build_model(name: str) -> nn.Module:
    return MODELS[name]()
