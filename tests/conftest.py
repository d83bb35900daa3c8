"""Shared fixtures: the real MNIST under ../shared/data, a real MLflow SQLite store per test."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ROBUSTSWEEP_TEST_DATA", REPO.parent / "shared" / "data"))

#: Keeps an M1 trial to a few seconds on a 2-core CPU.
TINY_EVAL = ["test_subset=500", "attack_subset=100", "hessian_samples=100", "pgd_steps=3", "hessian_iters=20",
             "eval_batch_size=500"]


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    raw = SHARED_DATA / "MNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").is_file():
        pytest.fail(f"real MNIST expected in {raw} (see ../shared/data/README.md); set ROBUSTSWEEP_TEST_DATA")
    return SHARED_DATA


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    """Tests never write into the checkout."""
    monkeypatch.chdir(tmp_path)


def write_cifar_batches(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Write small CIFAR-10-format pickles (data_batch_1..5, test_batch, batches.meta) under root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        labels = rng.integers(0, 10, n)
        # class-dependent mean colour, so the data is learnable
        base = (labels[:, None] * 25).astype(np.int64)
        data = np.clip(base + rng.integers(0, 30, (n, 3072)), 0, 255).astype(np.uint8)
        return {"data": data, "labels": labels.tolist()}

    per = max(n_train // 5, 1)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(per), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


@pytest.fixture
def cifar_root(tmp_path) -> Path:
    return write_cifar_batches(tmp_path / "cifar")
