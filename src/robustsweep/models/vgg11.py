"""VGG-11, the study's CIFAR-10 model."""

from __future__ import annotations

import torch
from torch import nn

from ..datasets.cifar10 import CIFAR10
from .base import Normalize

VGG11_LAYERS = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    """VGG-11 (Simonyan & Zisserman 2015, configuration A) for 3x32x32 CIFAR-10.

    With BatchNorm after every convolution and a single linear classifier on the
    512-channel 1x1 output, the usual CIFAR adaptation (as in the widely used
    pytorch-cifar models). BatchNorm is kept because without it VGG-11 does not
    train at the study's learning rate of 0.1 from a standard initialization;
    Hessian and attacks evaluate the model in eval mode (running statistics).
    """

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10, mean: tuple[float, ...] = CIFAR10.mean,
                 std: tuple[float, ...] = CIFAR10.std):
        super().__init__()
        self.normalize = Normalize(mean, std)
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
