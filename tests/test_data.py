"""Reading the datasets (robustsweep/data.py) from the real MNIST files (tests/conftest.py finds them)."""

import shutil
import subprocess
import sys

import pytest
import torch

from robustsweep.data import MNIST_FILES, load_split
from robustsweep.errors import DataError


@pytest.mark.parametrize("train", [True, False])
def test_mnist_reader_gives_what_torchvision_gives(mnist_root, train):
    import torchvision

    split = load_split("mnist", mnist_root, train=train, download=False)
    reference = torchvision.datasets.MNIST(str(mnist_root), train=train, download=False)
    assert split.images.dtype == torch.uint8 and split.images.shape == (len(reference), 1, 28, 28)
    assert split.images.is_contiguous()
    assert torch.equal(split.images[:, 0], reference.data)
    assert split.labels.dtype == torch.int64 and torch.equal(split.labels, reference.targets)


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-100], "is truncated or damaged"),
    (lambda data: b"\x1f\x8b" + data[2:], "is not an IDX file"),  # a gzip file under the IDX name
])
def test_damaged_mnist_file_is_a_clear_error(tmp_path, mnist_root, damage, message):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES[False]:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / name, raw / name)
    images = raw / MNIST_FILES[False][0]
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(DataError, match=message) as info:
        load_split("mnist", tmp_path, train=False, download=False)
    assert str(images) in str(info.value) and "copy or download MNIST again" in str(info.value)


def test_a_trial_reads_mnist_without_importing_torchvision(mnist_root):
    """torchvision's import costs a second per trial process (it pulls in torch._dynamo)."""
    script = ("import sys, torch\nfrom robustsweep.data import DeviceData\nimport robustsweep.trial\n"
              f"data = DeviceData.load('mnist', {str(mnist_root)!r}, torch.device('cpu'), download=False)\n"
              "print(len(data.train), len(data.test), 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["60000", "10000", "False"], out.stderr[-2000:]
