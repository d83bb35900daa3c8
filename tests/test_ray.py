"""The sweep service on a real Ray runtime with a real MLflow SQLite store: faults, driver kills, resume.

Two Ray nodes logging to an MLflow server: tests/test_cluster_mlflow.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # imported here, before any test captures stderr: Ray's log handler keeps the stream it found
import torch
from mlflow.tracking import MlflowClient

from robustsweep import metrics as keys
from robustsweep.cli import main
from robustsweep.launch import status
from robustsweep.sweep import load_sweep

from .conftest import trial_runs_only

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
TINY = ("subset: 300, test_subset: 200, batch_size: 50, attack_subset: 40, hessian_samples: 32, "
        "pgd_steps: 2, hessian_iters: 3, eval_batch_size: 200, device: cpu")


def _sweep(tmp_path, mnist_root, name, uri, groups, *, epochs=2, concurrent=2, failures=1, storage=None):
    text = f"""
name: {name}
storage_path: {storage or tmp_path / 'ray_results'}
mlflow: {{tracking_uri: "{uri}"}}
resources: {{cpu: 1}}
max_concurrent: {concurrent}
max_failures: {failures}
base: {{dataset: mnist, data_root: "{mnist_root}", epochs: {epochs}, {TINY}}}
groups:
{groups}
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _runs_by_trial(uri, experiment):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = trial_runs_only(client.search_runs([exp.experiment_id], max_results=1000))
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run)
    return client, by_trial


def _isolated_env(tmp_path) -> dict[str, str]:
    """The environment for a driver subprocess: no RAY_ADDRESS (it would attach to another Ray)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    """In-process launches start a Ray of their own, whatever Ray this machine runs."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_unreachable_mlflow_server_is_a_clear_error_before_anything_runs(tmp_path, mnist_root, capsys):
    path = _sweep(tmp_path, mnist_root, "noserver", "http://127.0.0.1:9", "  - name: g\n")
    assert main(["launch", str(path)]) == 2
    err = capsys.readouterr().err
    assert "The MLflow tracking server at http://127.0.0.1:9 does not answer" in err
    assert "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _finished(uri, experiment):
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        return [r for r in trial_runs_only(client.search_runs([exp.experiment_id])) if r.info.status == "FINISHED"] if exp else []
    except Exception:
        return []


def _checkpoints_known_to_ray(experiment_dir: Path) -> set[str]:
    """Trial ids whose checkpoint Ray's newest experiment-state snapshot records (what a restore uses).

    The checkpoint manager is stored as a hex-encoded pickle: its bytes are searched, never unpickled.
    """
    known = set()
    try:
        newest = max(experiment_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        for trial_state, metadata in json.loads(newest.read_text())["trial_data"]:
            config = json.loads(trial_state)["config"]  # a trial id (a dict of the trial before issue 23)
            trial_id = config["trial_id"] if "trial_id" in config else config["trial"]["trial_id"]
            manager = json.loads(metadata).get("checkpoint_manager") or {}
            if b"checkpoint_0" in bytes.fromhex(manager.get("value", "")):
                known.add(trial_id)
    except (ValueError, KeyError, OSError):  # no snapshot yet, or one being written
        pass
    return known


def _interrupted_trial(uri, experiment, experiment_dir: Path, epochs: int):
    """A trial whose checkpoint Ray's experiment state has recorded, and whose MLflow run is unfinished
    with fewer than ``epochs`` epochs logged, while some other trial has finished."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = trial_runs_only(client.search_runs([exp.experiment_id])) if exp else []
    if not any(r.info.status == "FINISHED" for r in runs):
        return None
    known = _checkpoints_known_to_ray(experiment_dir)
    for run in runs:
        logged = len(client.get_metric_history(run.info.run_id, "train_loss"))
        if run.info.status != "FINISHED" and run.data.tags["trial_id"] in known and logged < epochs:
            return run.data.tags["trial_id"]
    return None


def _kill_mid_trial(driver: subprocess.Popen, uri: str, experiment: str, experiment_dir: Path, epochs: int,
                    timeout: float) -> str:
    """SIGKILL the driver's whole process group when some trial is checkpointed but unfinished.

    The group is frozen (SIGSTOP) before the last check, so what was checked is what the kill leaves.
    """
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _interrupted_trial(uri, experiment, experiment_dir, epochs) is not None:
            os.killpg(driver.pid, signal.SIGSTOP)
            try:
                trial_id = _interrupted_trial(uri, experiment, experiment_dir, epochs)
            except Exception:  # a frozen writer may hold the SQLite lock: let it go on, look again
                trial_id = None
            if trial_id is not None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(30)
                return trial_id
            os.killpg(driver.pid, signal.SIGCONT)
        time.sleep(0.1)
    raise AssertionError(f"no trial was checkpointed and unfinished within {timeout}s")


def test_a_retried_fault_and_a_driver_killed_mid_trial_then_resume_leave_one_run_per_trial(
        tmp_path, mnist_root, mlflow_uri):
    # Trials run one at a time: `faulty` fails in its 2nd epoch on its first attempt and is retried by
    # Ray; once some trial has finished, the driver is killed in the middle of another (after Ray has
    # recorded a checkpoint of it); `resume` finishes that one and runs the rest.
    epochs = 4
    groups = """  - name: faulty
    set: {lr: 0.02, fail_at_epoch: 2}
  - name: g
    set: {subset: 3000}
    grid: {lr: [0.02, 0.05]}
"""
    path = _sweep(tmp_path, mnist_root, "killed", mlflow_uri, groups, epochs=epochs, concurrent=1)
    spec = load_sweep(path)
    experiment_dir = tmp_path / "ray_results" / "killed"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([BIN / "robustsweep", "launch", str(path), "--verbose", "0"], cwd=tmp_path,
                              env=_isolated_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        interrupted = _kill_mid_trial(driver, mlflow_uri, "killed", experiment_dir, epochs, timeout=240)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished_before = {r.data.tags["trial_id"]: r for r in _finished(mlflow_uri, "killed")}
    assert interrupted not in finished_before
    # A trial process can outlive the kill of its driver's process group by a moment and checkpoint one more
    # epoch, and resume rightly goes on from the newest checkpoint on disk: so it is bounded by the last epoch,
    # not by the newest checkpoint seen just after the kill.
    assert any((experiment_dir / interrupted).glob("checkpoint_*/trial_state.pt"))

    resumed = subprocess.run([BIN / "robustsweep", "resume", "killed", "--storage-path", str(tmp_path / "ray_results"),
                              "--verbose", "0"], cwd=tmp_path, env=_isolated_env(tmp_path), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sweep killed: 3 finished" in resumed.stdout
    # the resumed driver's progress counts the trials that ended before it (its callback is the launch's)
    assert "robustsweep: 3/3 trials done" in resumed.stderr, resumed.stderr[-3000:]

    client, by_trial = _runs_by_trial(mlflow_uri, "killed")
    assert set(by_trial) == {t.trial_id for t in spec.trials}
    wanted = set(keys.final_metric_keys([0.03, 0.15])) | {"train_loss", "train_acc", "test_acc", "lr"}
    for trial in spec.trials:
        runs = by_trial[trial.trial_id]
        assert len(runs) == 1, f"duplicate MLflow runs for {trial.trial_id}"  # retries and resume included
        (run,) = runs
        assert run.info.status == "FINISHED" and wanted <= set(run.data.metrics)
        assert run.data.tags["sweep"] == "killed" and run.data.tags["group"] == trial.group
        for key in ("train_loss", "test_acc"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == [1, 2, 3, 4], (trial.trial_id, key, steps)  # one point per epoch, none twice
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "clean_acc")]
        assert steps == [4], "the final evaluation ran once"
    for trial_id, run in finished_before.items():
        (after,) = by_trial[trial_id]
        assert after.info.end_time == run.info.end_time, "a finished trial was run again"
    # Ray's retry of the fault went on from a checkpoint (epoch 1's, or a later one when the kill hit
    # the retried trial: Ray may run other trials before a retry), with the error kept for the record
    (faulty,) = by_trial[next(t.trial_id for t in spec.trials if t.group == "faulty")]
    assert int(faulty.data.tags.get("resumed_from_epoch", 0)) >= 1
    assert "injected failure in epoch 2" in faulty.data.tags["previous_error"] and "error" not in faulty.data.tags
    # the interrupted trial went on from a checkpoint it had written, not from scratch
    (run,) = by_trial[interrupted]
    assert 1 <= int(run.data.tags.get("resumed_from_epoch", 0)) <= 4
    st = status("killed", str(tmp_path / "ray_results"))
    assert st.counts == {"pending": 0, "running": 0, "interrupted": 0, "finished": 3, "pruned": 0, "collapsed": 0,
                         "diverged": 0, "failed": 0}
    # one parent run for the sweep, the one the launch made and resume reopened, every trial nested under it
    from robustsweep.sweep_run import find_parents

    (parent,) = find_parents(client, client.get_experiment_by_name("killed").experiment_id, "killed")
    assert st.parent_id == parent.info.run_id and parent.info.status == "FINISHED"
    assert all(runs[0].data.tags["mlflow.parentRunId"] == parent.info.run_id for runs in by_trial.values())
    assert {runs[0].info.run_name for runs in by_trial.values()} == {t.run_name for t in spec.trials}
    assert client.get_metric_history(parent.info.run_id, "trials_finished")[-1].value == 3


def test_unsatisfiable_resources_are_refused_and_a_user_error_fails_once(tmp_path, mnist_root, mlflow_uri, capsys):
    try:
        # Every trial asks for a quarter GPU; this local Ray has none: refused before anything is created.
        greedy = _sweep(tmp_path, mnist_root, "greedy", mlflow_uri, "  - name: g\n    resources: {gpu: 0.25}\n")
        assert main(["launch", str(greedy), "--verbose", "0"]) == 2
        err = capsys.readouterr().err
        assert "Each trial asks for CPU 1, GPU 0.25, but no node of this Ray cluster has that much" in err
        assert "resources: {gpu: 0}" in err and "Traceback" not in err
        assert not (tmp_path / "ray_results" / "greedy").exists()
        assert MlflowClient(mlflow_uri).get_experiment_by_name("greedy") is None

        # A trial whose settings cannot run here (CUDA on a CPU machine) fails once, not max_failures + 1
        # times, and the launch summary says why.
        cuda = _sweep(tmp_path, mnist_root, "cuda", mlflow_uri, "  - name: g\n    set: {device: cuda}\n",
                      failures=2)
        assert main(["launch", str(cuda), "--verbose", "0"]) == 1
        out = capsys.readouterr().out
        assert "sweep cuda: 1 failed" in out
        assert "failed: Trial setting device='cuda' asks for CUDA, but no GPU is visible here" in out
        (trial_dir,) = (tmp_path / "ray_results" / "cuda").glob("g-*")
        assert not list(trial_dir.glob("error*")), "Ray saw an error, so it retried the trial"
    finally:
        ray.shutdown()


def test_sigterm_to_the_driver_then_an_emptied_ray_state_still_resumes(tmp_path, mnist_root, mlflow_uri):
    # SIGTERM (the driver's pid alone, as `kill` or a scheduler sends it) stops the sweep as Ctrl-C does:
    # one line saying how to resume, exit 143, no Ray C++ signal dump. Then Ray's state files are emptied
    # (as a full disk or a SIGKILL mid-write leaves them): resume says so and continues from MLflow and the
    # trials' checkpoints, never a traceback. Six epochs: the first trial is stopped at its first checkpoint,
    # and on a fast CPU a 3-epoch trial could finish during the stop (CI once did: nothing was left to resume).
    epochs = 6
    path = _sweep(tmp_path, mnist_root, "termed", mlflow_uri, "  - name: g\n    set: {subset: 3000}\n"
                  "    grid: {lr: [0.02, 0.05]}\n", epochs=epochs, concurrent=1)
    spec = load_sweep(path)
    experiment_dir = tmp_path / "ray_results" / "termed"
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([BIN / "robustsweep", "launch", str(path), "--verbose", "0"], cwd=tmp_path,
                              env=_isolated_env(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        _wait_for(lambda: list(experiment_dir.glob("*/checkpoint_*/trial_state.pt")), 240, "a first checkpoint")
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(120) == 143
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    out = (tmp_path / "driver.log").read_text()
    assert "interrupted: robustsweep resume termed" in out, out[-3000:]
    assert "SIGTERM received" not in out and "Traceback" not in out, out[-3000:]
    # a trial Tune stopped at its report is interrupted, not pruned: a grid has no scheduler
    assert not [r for r in _finished(mlflow_uri, "termed") if r.data.tags.get("outcome") == "pruned"]
    for state in [*experiment_dir.glob("basic-variant-state-*.json"), *experiment_dir.glob("experiment_state-*.json")]:
        state.write_bytes(b"")

    resumed = subprocess.run([BIN / "robustsweep", "resume", "termed", "--storage-path", str(tmp_path / "ray_results"),
                              "--verbose", "0"], cwd=tmp_path, env=_isolated_env(tmp_path), capture_output=True,
                             text=True, timeout=600)
    both = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0 and "Traceback" not in both, both[-3000:]
    assert "Ray's experiment state in" in both and "cannot be read" in both, both[-3000:]
    assert "trials already have a FINISHED MLflow run" not in both, both[-3000:]  # the stop came mid-trial
    assert "sweep termed: 2 finished" in resumed.stdout, resumed.stdout[-3000:]
    client, by_trial = _runs_by_trial(mlflow_uri, "termed")
    assert set(by_trial) == {t.trial_id for t in spec.trials}
    resumed_from = []
    for trial in spec.trials:
        (run,) = by_trial[trial.trial_id]
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == list(range(1, epochs + 1)), (trial.trial_id, steps)
        resumed_from.append(int(run.data.tags.get("resumed_from_epoch", 0)))
    assert max(resumed_from) >= 1  # the interrupted trial went on from its checkpoint, not from scratch
