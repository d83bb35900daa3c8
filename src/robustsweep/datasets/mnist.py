"""MNIST (LeCun et al. 1998): 28x28 grey digits, 60,000 training and 10,000 test images, 10 classes.

Read straight from its IDX files under ``<data_root>/MNIST/raw`` (the layout torchvision's
download leaves): importing torchvision costs more than a second per process, as much as reading
the files many times over, so torchvision is imported only to download them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import Dataset

#: MNIST's files under <data_root>/MNIST/raw, as torchvision leaves them after a download.
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: Path):
    """An IDX file of unsigned bytes (MNIST's format: a zero word's high bytes, type 0x08, the number
    of dimensions, each dimension as a big-endian int32, then the values) as an array of that shape."""
    import numpy as np

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


def read_mnist(root: Path, train: bool, download: bool, verify_checksums: bool = True):
    import torch

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


MNIST = Dataset(
    name="mnist", num_classes=10, image_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,), read=read_mnist,
    folder="MNIST/raw", default_model="m1", train_size=60_000,
    # The study's MNIST settings: eps 0.03 and 0.15; its step schedule halves the rate every 10 epochs,
    # so 30 epochs see three rates (it states no epoch count; sweeps/table1.yaml says why 30); no crops.
    epochs=30, eps=(0.03, 0.15), augment_crop=0, step_every=10, step_gamma=0.5,
)
