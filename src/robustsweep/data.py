"""Datasets as tensors on the training device, with device-side shuffling and augmentation.

A dataset (robustsweep.datasets: MNIST, CIFAR-10, or a plugin's) is read once
from ``data_root`` by its declared reader, and kept as uint8 tensors on the training device,
airbench-style: a minibatch is an index into those tensors, converted to
float in [0, 1] on the device, flipped and cropped there with tensor
operations. No DataLoader, no worker processes, no per-sample CPU transforms.

Random numbers for the data order and augmentation come from one CPU
``torch.Generator`` (tiny tensors, moved to the device), so the same seed
gives the same batches on every device and the generator state can be
checkpointed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from . import datasets
from .errors import DataError

# MNIST's reader lives with its declaration (datasets/mnist.py); these names stay importable from here.
from .datasets.mnist import MNIST_FILES, read_idx  # noqa: E402,F401


@dataclass
class Split:
    """One split as tensors: images uint8 (N, C, H, W), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> "Split":
        """The first n examples (n = 0 means all)."""
        return self if n <= 0 or n >= len(self) else Split(self.images[:n], self.labels[:n])

    def floats(self, index: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [0, 1] as float32, and labels, for the given index."""
        return self.images[index].float().div_(255.0), self.labels[index]


def _missing_message(dataset: str, root: Path, why: str) -> str:
    folder = root / datasets.get(dataset).folder
    return (
        f"The {dataset} dataset is not in {folder} ({why}). Point data_root at a folder that holds it "
        f"(flag --data-root, setting data_root=..., or environment variable ROBUSTSWEEP_DATA_ROOT), or run "
        f"once with internet access and download=true to fetch it there."
    )


def load_split(dataset: str, root: str | os.PathLike, train: bool, download: bool = True,
               verify_checksums: bool = True) -> Split:
    """Read one split into uint8 (N, C, H, W) images and int64 labels on the CPU (robustsweep.datasets)."""
    root = Path(root).expanduser()
    try:
        spec = datasets.get(dataset)
    except KeyError:
        raise DataError(f"Unknown dataset {dataset!r}: allowed are {', '.join(datasets.names())}.") from None
    try:
        images, labels = spec.read(root, train, download, verify_checksums)
    except DataError:
        raise
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError for missing or offline data
        why = "download failed: no internet access?" if download else "download is off"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(_missing_message(dataset, root, f"{why}; {detail}")) from None
    return Split(images, labels)


class DeviceBatches:
    """Shuffled, augmented minibatches drawn from a Split that lives on the training device."""

    def __init__(self, split: Split, batch_size: int, generator: torch.Generator,
                 flip: bool = False, crop_padding: int = 0, drop_last: bool = False):
        self.split = split
        self.batch_size = batch_size
        self.generator = generator
        self.flip = flip
        self.crop_padding = crop_padding
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.split.images.device
        order = torch.randperm(len(self.split), generator=self.generator).to(device)
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            if self.drop_last and len(index) < self.batch_size:
                break
            x, y = self.split.floats(index)
            yield self.augment(x), y

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random horizontal flip and random padded crop, per example, as tensor ops on x's device."""
        if self.flip:
            flip = (torch.rand(len(x), generator=self.generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.generator)
        return x


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to the original size at a random offset per example."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


@dataclass
class DeviceData:
    """Train and test splits of one dataset, on the training device."""

    train: Split
    test: Split

    @classmethod
    def load(cls, dataset: str, root: str | os.PathLike, device: torch.device, *, download: bool = True,
             verify_checksums: bool = True, train_subset: int = 0, test_subset: int = 0) -> "DeviceData":
        train = load_split(dataset, root, True, download, verify_checksums).head(train_subset)
        test = load_split(dataset, root, False, download, verify_checksums).head(test_subset)
        return cls(train.to(device), test.to(device))
