"""Shared fixtures: the real MNIST under ../shared/data, a real MLflow SQLite store per test."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(scope="session")
def _empty_mlflow_store(tmp_path_factory) -> Path:
    """One SQLite store with MLflow's schema, made once (creating the tables costs about a second)."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path, _empty_mlflow_store) -> str:
    """A real MLflow SQLite store of the test's own: a copy of the empty template."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_mlflow_store, path)
    return f"sqlite:///{path}"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_mlflow_server(argv: list[str], log: Path, attempts: int = 3) -> Iterator[int]:
    """Run ``argv`` (an ``mlflow server`` command line whose port is ``{port}``) until the block ends.

    A free port can be taken by another process before the server binds it: the server then exits,
    and it is started again on another port. Yields the port it answers on.
    """
    for attempt in range(attempts):
        port = free_port()
        with open(log, "a") as out:
            server = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while server.poll() is None and time.time() < deadline and not _answers(f"http://127.0.0.1:{port}/health"):
            time.sleep(0.5)
        if server.poll() is None and _answers(f"http://127.0.0.1:{port}/health"):
            break
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        if attempt == attempts - 1:
            raise AssertionError(f"the MLflow server did not start; its log:\n{log.read_text()[-3000:]}")
    try:
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
