"""Datasets as tensors on the training device, with device-side shuffling and augmentation.

MNIST and CIFAR-10 are read once through torchvision's dataset classes (from
``data_root``, downloading when allowed and possible) and kept as uint8
tensors on the training device, airbench-style: a minibatch is an index into
those tensors, converted to float in [0, 1] on the device, flipped and cropped
there with tensor operations. No DataLoader, no worker processes, no
per-sample CPU transforms.

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

import numpy as np
import torch
import torchvision

from .errors import DataError

#: Per-channel mean and std of the training split, used by the models' input normalization.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class _CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 reader, with the md5 check optional for self-written CIFAR-format files."""

    def __init__(self, *args, verify_checksums: bool = True, **kwargs):
        self._verify = verify_checksums
        super().__init__(*args, **kwargs)

    def _check_integrity(self) -> bool:
        if self._verify:
            return super()._check_integrity()
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        if self._verify:
            super()._load_meta()
        else:
            self.classes = [str(i) for i in range(10)]


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
    folder = root / ("MNIST/raw" if dataset == "mnist" else "cifar-10-batches-py")
    return (
        f"The {dataset} dataset is not in {folder} ({why}). Point data_root at a folder that holds it "
        f"(flag --data-root, setting data_root=..., or environment variable ROBUSTSWEEP_DATA_ROOT; "
        f"offline MNIST is in ../shared/data), or run once with internet access and download=true "
        f"to fetch it there."
    )


def load_split(dataset: str, root: str | os.PathLike, train: bool, download: bool = True,
               verify_checksums: bool = True) -> Split:
    """Read one split through torchvision's dataset class into uint8/int64 CPU tensors."""
    root = Path(root).expanduser()
    try:
        if dataset == "mnist":
            ds = torchvision.datasets.MNIST(root=str(root), train=train, download=download)
            images = ds.data.unsqueeze(1).contiguous()
            labels = ds.targets.long()
        elif dataset == "cifar10":
            ds = _CIFAR10(root=str(root), train=train, download=download, verify_checksums=verify_checksums)
            images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            labels = torch.tensor(ds.targets, dtype=torch.long)
        else:
            raise DataError(f"Unknown dataset {dataset!r}: allowed are mnist and cifar10.")
    except DataError:
        raise
    except Exception as exc:  # torchvision raises RuntimeError/URLError/OSError for missing or offline data
        why = "download failed: no internet access?" if download else "download is off"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(_missing_message(dataset, root, f"{why}; torchvision said: {detail}")) from None
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
