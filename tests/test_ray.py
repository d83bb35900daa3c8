"""The sweep service on a real Ray runtime with a real MLflow store (SQLite, and an HTTP server)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from robustsweep import metrics as keys
from robustsweep.cli import main
from robustsweep.launch import launch, status
from robustsweep.sweep import load_sweep

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
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run)
    return client, by_trial


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    ray.shutdown()


def test_local_sweep_one_finished_run_per_trial_and_a_retried_fault(tmp_path, mnist_root, mlflow_uri, ray_shutdown,
                                                                    capsys):
    groups = """  - name: plain
    grid: {lr: [0.05, 0.1]}
  - name: faulty
    set: {lr: 0.02, fail_at_epoch: 2}   # fails in its 2nd epoch on the first attempt only
"""
    path = _sweep(tmp_path, mnist_root, "local", mlflow_uri, groups, epochs=3)
    assert main(["launch", str(path), "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "sweep local: 3 finished" in out
    spec = load_sweep(path)
    client, by_trial = _runs_by_trial(mlflow_uri, "local")
    assert set(by_trial) == {t.trial_id for t in spec.trials}
    wanted = set(keys.final_metric_keys([0.03, 0.15])) | {"train_loss", "train_acc", "test_acc", "lr"}
    for trial in spec.trials:
        (run,) = by_trial[trial.trial_id]  # exactly one run per trial, retries included
        assert run.info.status == "FINISHED"
        assert wanted <= set(run.data.metrics)
        assert run.data.tags["sweep"] == "local" and run.data.tags["group"] == trial.group
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == [1, 2, 3]  # the retry continued from the epoch-1 checkpoint, nothing repeated
    (faulty,) = by_trial[next(t.trial_id for t in spec.trials if t.group == "faulty")]
    assert "injected failure in epoch 2" in faulty.data.tags["previous_error"]
    assert "error" not in faulty.data.tags
    st = status("local", str(tmp_path / "ray_results"))
    assert st.counts == {"pending": 0, "running": 0, "finished": 3, "diverged": 0, "failed": 0}


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
        return [r for r in client.search_runs([exp.experiment_id]) if r.info.status == "FINISHED"] if exp else []
    except Exception:
        return []


def test_driver_killed_mid_sweep_then_resume_completes_it(tmp_path, mnist_root, mlflow_uri):
    # Longer trials than elsewhere (1500 examples, 4 epochs: several seconds each), so the kill
    # lands while a later trial is still training.
    groups = "  - name: g\n    set: {subset: 1500}\n    grid: {lr: [0.01, 0.02, 0.05, 0.1]}\n"
    path = _sweep(tmp_path, mnist_root, "killed", mlflow_uri, groups, epochs=4, concurrent=1)
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([BIN / "robustsweep", "launch", str(path), "--verbose", "0"], cwd=tmp_path, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: len(_finished(mlflow_uri, "killed")) >= 1, 240, "a first finished trial")
        time.sleep(1)  # into the next trial
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started, all at once
        driver.wait(30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    before = {r.data.tags["trial_id"]: r for r in _finished(mlflow_uri, "killed")}
    assert 1 <= len(before) < 4, "the driver must be killed mid-sweep"

    resumed = subprocess.run([BIN / "robustsweep", "resume", "killed", "--storage-path", str(tmp_path / "ray_results"),
                              "--verbose", "0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "sweep killed: 4 finished" in resumed.stdout

    client, by_trial = _runs_by_trial(mlflow_uri, "killed")
    assert len(by_trial) == 4
    for trial_id, runs in by_trial.items():
        assert len(runs) == 1, f"duplicate MLflow runs for {trial_id}"
        assert runs[0].info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "clean_acc")]
        assert steps == [4], "the final evaluation ran once"
    for trial_id, run in before.items():
        (after,) = by_trial[trial_id]
        assert after.info.end_time == run.info.end_time, "a finished trial was run again"
    assert main(["status", "killed", "--storage-path", str(tmp_path / "ray_results")]) == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=open(tmp_path / "mlflow-server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return urllib.request.urlopen(uri + "/health", timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait_for(healthy, 120, "the MLflow server")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_two_ray_nodes_log_over_http_to_a_real_mlflow_server(tmp_path, mnist_root, mlflow_server, ray_shutdown):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        groups = "  - name: g\n    grid: {lr: [0.05, 0.1]}\n"
        path = _sweep(tmp_path, mnist_root, "twonodes", mlflow_server, groups, epochs=1)
        result = launch(load_sweep(path), address=cluster.address, verbose=0)
        assert result.counts() == {"finished": 2}
        client, by_trial = _runs_by_trial(mlflow_server, "twonodes")
        runs = [r for rs in by_trial.values() for r in rs]
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        # one trial per node: each node has one CPU and a trial takes one
        assert len({r.data.tags["ray_node_id"] for r in runs}) == 2
        # the weights went through the server to its artifact store
        assert "model.pt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
