"""Shared fixtures: real MNIST (found as the product finds it), a real MLflow SQLite store per test."""

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
#: Where the tests look for MNIST, in order: ROBUSTSWEEP_DATA_ROOT, the offline copy beside the checkout
#: on this project's machines, then ./data in the checkout (downloaded there once where the network allows).
OFFLINE_DATA = REPO.parent / "shared" / "data"
LOCAL_DATA = REPO / "data"

#: Keeps an M1 trial to a few seconds on a 2-core CPU.
TINY_EVAL = ["test_subset=500", "attack_subset=100", "hessian_samples=100", "pgd_steps=3", "hessian_iters=20",
             "eval_batch_size=500"]


def _has_mnist(root: Path) -> bool:
    from robustsweep.data import MNIST_FILES

    return all((root / "MNIST" / "raw" / name).is_file() for names in MNIST_FILES.values() for name in names)


def find_mnist() -> Path:
    """The folder holding MNIST/raw for the tests: see OFFLINE_DATA; fails at once, in one paragraph."""
    given = os.environ.get("ROBUSTSWEEP_DATA_ROOT")
    if given:
        if _has_mnist(Path(given)):
            return Path(given)
        pytest.fail(f"ROBUSTSWEEP_DATA_ROOT={given} holds no MNIST (MNIST/raw/*-ubyte, the layout torchvision's "
                    "download leaves): point it at a folder that does, or unset it.", pytrace=False)
    for root in (OFFLINE_DATA, LOCAL_DATA):
        if _has_mnist(root):
            return root
    from robustsweep.data import load_split
    from robustsweep.errors import DataError

    try:  # once, where the network allows: torchvision's download into ./data
        load_split("mnist", LOCAL_DATA, train=True, download=True)
        load_split("mnist", LOCAL_DATA, train=False, download=True)
        return LOCAL_DATA
    except DataError:
        pytest.fail(f"The tests need real MNIST and found none: set ROBUSTSWEEP_DATA_ROOT to a folder holding "
                    f"MNIST/raw/ (train-images-idx3-ubyte and the other three IDX files), or put them under "
                    f"{LOCAL_DATA}, or run the tests once with internet access to download them there.",
                    pytrace=False)


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    return find_mnist()


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
    """Tests never write into the checkout, nor their local copies of runs (robustsweep.run_cache) into ~/.cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROBUSTSWEEP_CACHE_DIR", str(tmp_path / "run-cache"))


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
def running_mlflow_server(argv: list[str], log: Path, attempts: int = 3, env: dict[str, str] | None = None,
                          cwd: Path | None = None) -> Iterator[int]:
    """Run ``argv`` (an ``mlflow server`` command line whose port is ``{port}``) until the block ends
    (with ``env`` added to this process's environment, in ``cwd``).

    A free port can be taken by another process before the server binds it: the server then exits,
    and it is started again on another port. Yields the port it answers on.
    """
    for attempt in range(attempts):
        port = free_port()
        with open(log, "a") as out:
            server = subprocess.Popen([a.replace("{port}", str(port)) for a in argv], stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, **(env or {})}, cwd=cwd)
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


def _postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL programs (initdb, pg_ctl): the newest under /usr/lib/postgresql."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def postgres_missing() -> str | None:
    """Why no PostgreSQL server can be started for the tests here, or None."""
    if _postgres_bin() is None:
        return "needs Debian's postgresql package (apt-get install postgresql; .ci/run installs it)"
    try:
        import psycopg2  # noqa: F401  (MLflow's SQLAlchemy store reaches PostgreSQL through it)
    except ImportError:
        return "needs psycopg2 (pip install -e '.[test]' installs psycopg2-binary)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "runs as root, and PostgreSQL refuses root: needs the postgres user Debian's package creates"
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of the tests' own: a fresh cluster (initdb) on a Unix socket only, no TCP port,
    trust authentication inside a folder only its user can enter, fsync off (a test's data need not survive a
    crash). Yields a postgresql:// URI template with ``{database}`` to fill in; skips, saying why, without one."""
    import tempfile

    why = postgres_missing()
    if why:
        pytest.skip(why)
    bindir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="robustsweep-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root: the package's postgres user runs them
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "robustsweep", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, text=True, timeout=180)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
                        "-t", "120", "-o", f"-c listen_addresses='' -k {folder} -c fsync=off -c full_page_writes=off",
                        "start"], check=True, capture_output=True, text=True, timeout=180)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (folder / "server.log").read_text()[-2000:] if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc}\n{getattr(exc, 'stderr', '')}\n{log}", pytrace=False)
    try:
        yield f"postgresql+psycopg2://robustsweep@/{{database}}?host={folder}"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_uri(postgres_server, request) -> str:
    """A new, empty database on :func:`postgres_server`, for one test."""
    import re

    import psycopg2

    database = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    host = postgres_server.split("host=", 1)[1]
    connection = psycopg2.connect(dbname="postgres", user="robustsweep", host=host)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {database}")
        cursor.execute(f"CREATE DATABASE {database}")
    connection.close()
    return postgres_server.format(database=database)


def trial_runs_only(runs: list) -> list:
    """The trials' runs among ``runs`` (an MLflow search of a sweep's experiment), without the sweep's own
    parent run (robustsweep.sweep_run)."""
    return [r for r in runs if r.data.tags.get("kind") != "sweep"]


def tiny_sweep(tmp_path, mnist_root, name="s", groups="[{name: g}]", base="", *, storage=None, extra="") -> Path:
    """A sweep file of tiny one-epoch MNIST trials on the CPU, its store a SQLite file in ``tmp_path``;
    ``base``: more base settings (", key: value"), ``extra``: more top-level lines."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: "{name}"
storage_path: "{storage or tmp_path / 'ray_results'}"
mlflow: {{tracking_uri: "sqlite:///{tmp_path / 'mlflow.db'}"}}
{extra}
base: {{dataset: mnist, data_root: "{mnist_root}", epochs: 1, subset: 100, test_subset: 50, attack_subset: 10,
        hessian_samples: 10, pgd_steps: 1, hessian_iters: 2, device: cpu{base}}}
groups: {groups}
""")
    return path


def one_paragraph_error(capsys, *needles) -> str:
    """The command's stderr: one line, robustsweep's error paragraph (no traceback), holding each needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("robustsweep: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err
