"""What every model shares: pixels in [0, 1] in, normalized inside (so attacks work in pixel space)."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as the model's first layer (buffers, not parameters)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
