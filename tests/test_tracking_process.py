"""`robustsweep run` logs to MLflow from a child process (robustsweep/tracking_process.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from robustsweep.cli import main
from robustsweep.tracking_process import TrackingProcess

from .conftest import TINY_EVAL, trial_runs_only


def test_child_logs_the_run_and_never_imports_torch(mlflow_uri, tmp_path):
    artifact = tmp_path / "notes.txt"
    artifact.write_text("hello")
    with TrackingProcess(mlflow_uri) as tracking:
        run = tracking.open_run(mlflow_uri, "e", tags={"torch_version": torch.__version__}, run_name="r")
        run.log_params({"lr": 0.1, "eps": (0.03, 0.15)})
        run.log_metrics({"acc": np.float32(0.5), "loss": torch.tensor(2.0)}, step=1)
        run.log_artifact(artifact)
        assert run.logged_steps("acc") == set()  # a new run: nothing to skip on a retry
        maps = Path(f"/proc/{tracking.pid}/maps")
        if maps.exists():  # a torch value sent over would have made the child load libtorch to unpickle it
            assert "libtorch" not in maps.read_text()
        run.finish()
    logged = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "r"
    assert logged.data.params == {"lr": "0.1", "eps": "(0.03, 0.15)"}
    assert logged.data.metrics == {"acc": 0.5, "loss": 2.0}
    assert logged.data.tags["torch_version"] == str(torch.__version__)
    assert [a.path for a in MlflowClient(mlflow_uri).list_artifacts(run.run_id)] == ["notes.txt"]


def test_an_mlflow_error_in_the_child_is_the_trials_clear_error(mnist_root, capsys):
    code = main(["run", f"data_root={mnist_root}", "mlflow_tracking_uri=http://127.0.0.1:9", "device=cpu",
                 "subset=100", "epochs=1", *TINY_EVAL, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "The MLflow tracking server at http://127.0.0.1:9 does not answer" in err and "Traceback" not in err


def _start_long_run(mnist_root, mlflow_uri) -> subprocess.Popen:
    """A `robustsweep run` of 200 short epochs, in a session of its own (its tracking child with it)."""
    command = [sys.executable, "-m", "robustsweep.cli", "run", f"data_root={mnist_root}",
               f"mlflow_tracking_uri={mlflow_uri}", "device=cpu", "subset=500", "epochs=200", "batch_size=100",
               *TINY_EVAL, "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _the_run(uri, predicate, timeout, what):
    client = MlflowClient(uri)
    deadline = time.time() + timeout
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("robustsweep")
        runs = trial_runs_only(client.search_runs([experiment.experiment_id])) if experiment else []
        if len(runs) == 1 and predicate(runs[0]):
            return runs[0]
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _training(run) -> bool:
    return run.info.status == "RUNNING" and "train_loss" in run.data.metrics


def _session_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
def test_ctrl_c_marks_the_run_failed(mnist_root, mlflow_uri):
    process = _start_long_run(mnist_root, mlflow_uri)
    try:
        _the_run(mlflow_uri, _training, 120, "the run to log its first epoch")
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the child too
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, out
    assert "robustsweep: interrupted" in out and "Traceback" not in out
    run = _the_run(mlflow_uri, lambda r: r.info.status != "RUNNING", 10, "the run to end")
    assert run.info.status == "FAILED" and run.data.tags["error"].startswith("KeyboardInterrupt")
    assert _session_gone(process.pid, 30), "the tracking process outlived the trial"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
def test_a_killed_trial_process_leaves_its_run_failed_not_running(mnist_root, mlflow_uri):
    process = _start_long_run(mnist_root, mlflow_uri)
    try:
        _the_run(mlflow_uri, _training, 120, "the run to log its first epoch")
        os.kill(process.pid, signal.SIGKILL)  # the trial process only: its child sees the end of its input
        process.communicate(timeout=60)
        run = _the_run(mlflow_uri, lambda r: r.info.status != "RUNNING", 30, "the child to end the run")
    finally:
        if not _session_gone(process.pid, 30):
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail("the tracking process outlived the trial")
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: the trial process ended before it finished its MLflow run"


def test_closing_before_the_run_ends_marks_it_failed(mlflow_uri):
    with TrackingProcess(mlflow_uri) as tracking:
        run = tracking.open_run(mlflow_uri, "e")
        run.log_metrics({"loss": 1.0}, step=1)
    logged = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags["error"] == "RuntimeError: the trial closed its MLflow logging before it finished its run"
