"""Datasets as tensors on the training device, with device-side shuffling and augmentation.

MNIST and CIFAR-10 are read once from ``data_root``, in the layout
torchvision's dataset classes use (``MNIST/raw/*-ubyte``,
``cifar-10-batches-py/``), and kept as uint8 tensors on the training device,
airbench-style: a minibatch is an index into those tensors, converted to
float in [0, 1] on the device, flipped and cropped there with tensor
operations. No DataLoader, no worker processes, no per-sample CPU transforms.

MNIST's IDX files are read here directly: importing torchvision costs more
than a second per process (it pulls in torch._dynamo), as much as reading
the files many times over. torchvision is imported only to download MNIST
and to read CIFAR-10.

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

from .errors import DataError

#: Per-channel mean and std of the training split, used by the models' input normalization.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

#: MNIST's files under <data_root>/MNIST/raw, as torchvision leaves them after a download.
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _cifar10_class(verify_checksums: bool):
    """torchvision's CIFAR10 reader, with the md5 check optional for self-written CIFAR-format files."""
    import torchvision

    class CIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            if verify_checksums:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            if verify_checksums:
                super()._load_meta()
            else:
                self.classes = [str(i) for i in range(10)]

    return CIFAR10


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


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: a zero word's high bytes, type 0x08, the number
    of dimensions, each dimension as a big-endian int32, then the values) as an array of that shape."""
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (it starts {bytes(raw[:4]).hex() or 'empty'}). "
                        "It is damaged or not MNIST: delete it and copy or download MNIST again.")
    ndim = int(raw[3])
    shape = tuple(int(d) for d in raw[4:4 + 4 * ndim].view(">i4")) if len(raw) >= 4 + 4 * ndim else ()
    values = raw[4 + 4 * ndim:]
    if len(shape) != ndim or int(np.prod(shape)) != len(values):
        raise DataError(f"{path} holds {len(values)} values where its header promises shape {shape}: the file is "
                        "truncated or damaged. Delete it and copy or download MNIST again.")
    return values.reshape(shape)


def _read_mnist(root: Path, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / "MNIST" / "raw"
    paths = [raw / name for name in MNIST_FILES[train]]
    if download and not all(p.is_file() for p in paths):
        import torchvision

        torchvision.datasets.MNIST(root=str(root), train=train, download=True)
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no {', '.join(missing)} there")
    images, labels = (torch.from_numpy(read_idx(p)) for p in paths)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DataError(f"{paths[0]} and {paths[1]} do not match as MNIST images and labels (shapes "
                        f"{tuple(images.shape)} and {tuple(labels.shape)}). Delete them and copy or download MNIST again.")
    return images.unsqueeze(1).contiguous(), labels.long()


def load_split(dataset: str, root: str | os.PathLike, train: bool, download: bool = True,
               verify_checksums: bool = True) -> Split:
    """Read one split into uint8 (N, C, H, W) images and int64 labels on the CPU."""
    root = Path(root).expanduser()
    try:
        if dataset == "mnist":
            images, labels = _read_mnist(root, train, download)
        elif dataset == "cifar10":
            ds = _cifar10_class(verify_checksums)(root=str(root), train=train, download=download)
            images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
            labels = torch.tensor(ds.targets, dtype=torch.long)
        else:
            raise DataError(f"Unknown dataset {dataset!r}: allowed are mnist and cifar10.")
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
