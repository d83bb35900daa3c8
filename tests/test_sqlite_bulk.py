"""Import into a new SQLite store: built beside its path without fsync, moved in whole (robustsweep.sqlite_bulk)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from robustsweep import archive
from robustsweep.archive import import_runs
from robustsweep.errors import ConfigError, TrackingError
from robustsweep.runs import trial_runs
from robustsweep.tracking import make_client

EXPORT = Path(__file__).resolve().parents[1] / "results" / "table1-mnist-cpu" / "runs.jsonl"
SWEEP = "table1-mnist-cpu"


@pytest.fixture
def export(tmp_path) -> Path:
    """The first three trials of the committed CPU-study export (written before exports carried the parent run)."""
    some = tmp_path / "runs.jsonl"
    some.write_text("".join(EXPORT.read_text().splitlines(keepends=True)[:3]))
    return some


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _trials(uri: str) -> set[str]:
    client = make_client(uri, log=lambda m: None)
    experiment = client.get_experiment_by_name(SWEEP)
    return {t for t, runs in trial_runs(client, experiment.experiment_id, SWEEP).items() if runs} if experiment else set()


def test_a_new_store_is_built_beside_its_path_without_fsync_and_appears_whole(tmp_path, export, monkeypatch):
    store = tmp_path / "stores" / "mlflow.db"
    store.parent.mkdir()
    seen = []
    real = archive._recreate

    def watching(target, record, tags):
        building = [p for p in store.parent.iterdir() if p.name.startswith(".mlflow.db.importing-")]
        engine = target.client._tracking_client.store.engine  # the store MLflow writes this run through
        with engine.connect() as connection:
            synchronous = connection.exec_driver_sql("PRAGMA synchronous").scalar()
        seen.append((store.exists(), len(building), synchronous))
        return real(target, record, tags)

    monkeypatch.setattr(archive, "_recreate", watching)
    result = import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP)
    assert result.imported == 3
    assert seen and all(s == (False, 1, 0) for s in seen)  # not there yet; one file aside; synchronous=OFF
    assert _files(store.parent) == {"mlflow.db"}  # nothing left beside it
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # a plain single-file store
    assert len(_trials(f"sqlite:///{store}")) == 3
    # importing again writes into the store that now exists, the usual way: nothing built aside, all skipped
    seen.clear()
    assert import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP).skipped == 3 and seen == []


def test_an_import_that_fails_midway_leaves_no_store_and_no_partial_file(tmp_path, export, monkeypatch):
    store = tmp_path / "mlflow.db"
    calls = []
    real = archive._recreate

    def failing(target, record, tags):
        calls.append(record["trial_id"])
        if len(calls) == 3:
            raise OSError("disk gone")
        return real(target, record, tags)

    monkeypatch.setattr(archive, "_recreate", failing)
    with pytest.raises(ConfigError, match=r"trial \S+ in .*could not be made again.*OSError: disk gone.*nothing was "
                                          "written: the new store was discarded"):
        import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP)
    assert not store.exists() and not [p for p in tmp_path.iterdir() if "importing" in p.name]
    # an import killed mid-way (SIGKILL) leaves its partial build: the next try removes it, and only it
    ended = subprocess.Popen(["true"])
    ended.wait()
    killed, running = (tmp_path / f".mlflow.db.importing-{pid}-0a1b2c3d" for pid in (ended.pid, os.getppid()))
    killed.write_bytes(b"half a store")
    running.write_bytes(b"another import, still running")
    monkeypatch.setattr(archive, "_recreate", real)  # the next try starts from nothing and completes
    assert import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP).imported == 3
    assert not killed.exists() and running.exists()


def test_a_store_created_meanwhile_is_never_overwritten(tmp_path, export, monkeypatch):
    store = tmp_path / "mlflow.db"
    real = archive._import_records

    def racing(records, uri, *args, **kwargs):
        result = real(records, uri, *args, **kwargs)
        make_client(f"sqlite:///{store}", log=lambda m: None)  # another process makes the store meanwhile
        return result

    monkeypatch.setattr(archive, "_import_records", racing)
    with pytest.raises(TrackingError, match="created by another process while this import built it"):
        import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP)
    assert store.exists() and _trials(f"sqlite:///{store}") == set()  # theirs, untouched
    assert not [p for p in tmp_path.iterdir() if "importing" in p.name]
    monkeypatch.setattr(archive, "_import_records", real)
    assert import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP).imported == 3  # as the error says


def _six(tmp_path: Path, damaged: int | None = None) -> Path:
    """The first six trials of the CPU-study export; ``damaged``: the index of one whose metric value is text."""
    lines = EXPORT.read_text().splitlines(keepends=True)[:6]
    if damaged is not None:
        record = json.loads(lines[damaged])
        record["metrics"]["clean_acc"][0][1] = "not a number"
        lines[damaged] = json.dumps(record) + "\n"
    path = tmp_path / "six.jsonl"
    path.write_text("".join(lines))
    return path


def test_a_damaged_line_is_one_paragraph_naming_its_trial_and_leaves_no_half_made_run(tmp_path):
    export = _six(tmp_path, damaged=3)  # a metric value that is text: MLflow refuses the run
    trial = json.loads(export.read_text().splitlines()[3])["trial_id"]
    store = tmp_path / "mlflow.db"
    with pytest.raises(ConfigError, match=f"trial {trial} in .*could not be made again.*MlflowException.*nothing "
                                          "was written: the new store was discarded"):
        import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP)
    assert _files(tmp_path) == {"six.jsonl"}
    # into a store that exists, the runs before it stay, and the damaged one is not left half made (RUNNING)
    make_client(f"sqlite:///{store}", log=lambda m: None)
    with pytest.raises(ConfigError, match=f"trial {trial} .*the runs before it were written, and importing again"):
        import_runs(export, f"sqlite:///{store}", SWEEP, SWEEP)
    ids = [json.loads(line)["trial_id"] for line in export.read_text().splitlines()]
    assert _trials(f"sqlite:///{store}") == set(ids[:3])
