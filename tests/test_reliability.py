"""Reliability under concurrency and faults (issue 21), without Ray: one live driver per sweep, duplicate
metric steps in the audit, MLflow outages inside a trial, the dataset-row race, unreadable checkpoints."""

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from robustsweep.cli import main
from robustsweep.errors import UserError
from robustsweep.launch import _save_spec
from robustsweep.storage import DRIVER_FILE, _start_ticks, driver_record, driver_state
from robustsweep.sweep import load_sweep

from .conftest import one_paragraph_error, tiny_sweep, trial_runs_only


def _write_record(storage: Path, name: str, **record) -> Path:
    path = storage / name / DRIVER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def live_process():
    """Another live process on this host (what a second driver would find recorded)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# ---------------------------------------------------------------------------------------------
# one live driver per sweep


def test_a_live_driver_is_never_overwritten(tmp_path, live_process):
    storage = str(tmp_path / "ray_results")
    _write_record(tmp_path / "ray_results", "s", host=socket.gethostname(), pid=live_process.pid,
                  start_ticks=_start_ticks(live_process.pid), since="then", command="launch")
    with pytest.raises(UserError, match=f"pid {live_process.pid}") as err:
        with driver_record(storage, "s"):
            pass
    assert "is already driven" in str(err.value) and socket.gethostname() in str(err.value)
    assert json.loads((tmp_path / "ray_results" / "s" / DRIVER_FILE).read_text())["pid"] == live_process.pid


def test_a_stale_record_is_taken_over_saying_so(tmp_path):
    storage = str(tmp_path / "ray_results")
    said = []
    for record in ({"pid": _dead_pid(), "start_ticks": "1"},  # a dead pid
                   {"pid": os.getpid(), "start_ticks": "1"}):  # a pid reused by another process (this one)
        _write_record(tmp_path / "ray_results", "s", host=socket.gethostname(), **record)
        with driver_record(storage, "s", log=said.append):
            mine = json.loads((tmp_path / "ray_results" / "s" / DRIVER_FILE).read_text())
            assert mine["pid"] == os.getpid() and mine["start_ticks"] == _start_ticks(os.getpid())
        assert said and "taking over" in said[-1] and f"pid {record['pid']}" in said[-1], said
        assert not (tmp_path / "ray_results" / "s" / DRIVER_FILE).exists()


def test_a_record_from_another_host_is_refused_with_how_to_clear_it(tmp_path):
    storage = str(tmp_path / "ray_results")
    path = _write_record(tmp_path / "ray_results", "s", host="head-2", pid=4242, start_ticks="7")
    with pytest.raises(UserError) as err:
        with driver_record(storage, "s"):
            pass
    assert "head-2" in str(err.value) and str(path) in str(err.value) and "delete" in str(err.value)
    assert driver_state(storage, "s").startswith("elsewhere (host head-2")


def _race(storage, barrier, results):
    barrier.wait()
    try:
        with driver_record(storage, "s", log=lambda _: None):
            results.put("won")
            barrier.wait()  # hold the record until every contender has tried
    except UserError:
        results.put("refused")
        barrier.wait()


def test_of_drivers_started_at_once_exactly_one_wins(tmp_path):
    storage = str(tmp_path / "ray_results")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    procs = [context.Process(target=_race, args=(storage, barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["refused"] * 5 + ["won"], outcomes


@pytest.mark.parametrize("command", ["launch", "resume", "import"])
def test_launch_resume_and_import_refuse_while_another_driver_lives(tmp_path, mnist_root, capsys, live_process,
                                                                    command):
    path = tiny_sweep(tmp_path, mnist_root)
    spec = load_sweep(path)
    _save_spec(spec)
    record = _write_record(tmp_path / "ray_results", "s", host=socket.gethostname(), pid=live_process.pid,
                           start_ticks=_start_ticks(live_process.pid), since="2026-01-01 10:00:00",
                           command="launch")
    (tmp_path / "runs.jsonl").write_text("")
    argv = {"launch": ["launch", str(path)], "resume": ["resume", "s", "--storage-path", str(tmp_path / "ray_results")],
            "import": ["import", str(tmp_path / "runs.jsonl"), str(path)]}[command]
    assert main(argv) == 2
    one_paragraph_error(capsys, "is already driven", f"pid {live_process.pid}", "2026-01-01 10:00:00")
    assert json.loads(record.read_text())["pid"] == live_process.pid
    assert MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name("s") is None


def test_audit_flags_a_metric_logged_twice_at_one_step(tmp_path, mnist_root, capsys):
    from mlflow.entities import Metric

    path = tiny_sweep(tmp_path, mnist_root, groups="[{name: g, grid: {lr: [0.01, 0.02]}}]")
    spec = load_sweep(path)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.create_experiment("s")
    for trial, steps in zip(spec.trials, ([1, 2], [1, 1, 2, 2])):  # the second: two drivers logged each epoch
        run = client.create_run(experiment, tags={"sweep": "s", "trial_id": trial.trial_id})
        client.log_batch(run.info.run_id, metrics=[Metric("train_loss", 0.5, i, step) for i, step in enumerate(steps)])
        client.set_terminated(run.info.run_id)
    assert main(["audit", str(path)]) == 1
    out = capsys.readouterr().out
    assert "logged twice at one step: 1" in out and f"{spec.trials[1].trial_id}: train_loss at steps [1, 2]" in out
    assert "audit: FAILED" in out


# ---------------------------------------------------------------------------------------------
# an MLflow server that does not answer, inside a trial


class _ApiStub:
    """A stand-in for an MLflow server's search API that starts answering when ``up()`` is called."""

    def __init__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        from tests.conftest import free_port

        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self._server_class, self._handler, self._threading = http.server.HTTPServer, Handler, threading
        self.server = None

    def up(self):
        self.server = self._server_class(("127.0.0.1", self.port), self._handler)
        self._threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def test_a_trial_waits_for_a_server_that_comes_back_and_says_so():
    import threading
    import time

    from robustsweep.tracking import wait_for_server

    stub = _ApiStub()
    said = []
    try:
        threading.Timer(2.0, stub.up).start()
        t0 = time.monotonic()
        wait_for_server(stub.uri, patience=60, log=said.append)
        assert 1.5 < time.monotonic() - t0 < 20
    finally:
        stub.close()
    assert "does not answer; this trial waits for it, retrying for up to 1.0 minutes" in said[0], said
    assert "answers again" in said[-1], said


def test_a_server_down_for_good_ends_a_trial_attempt_in_the_stated_time_and_is_no_user_error(
        tmp_path, mnist_root, monkeypatch, capsys):
    import time

    import ray
    from ray import tune

    from robustsweep import launch as launch_module
    from robustsweep.errors import TrackingUnavailable

    stub = _ApiStub()  # never up: nothing listens on its port
    spec = load_sweep(tiny_sweep(tmp_path, mnist_root))
    import dataclasses

    trial = spec.trials[0]
    trial = dataclasses.replace(trial, config=dataclasses.replace(trial.config, mlflow_tracking_uri=stub.uri))
    reports = []
    monkeypatch.setenv("ROBUSTSWEEP_MLFLOW_PATIENCE_S", "3")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda self: "n1"})())
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(metrics))
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match="did not answer for 0.1 minutes") as err:
        launch_module.ray_trainable({"trial": trial.to_json(), "sweep": "s"})
    assert not isinstance(err.value, UserError)  # Ray retries it; a user error would end the trial for good
    assert time.monotonic() - t0 < 30 and reports == []
    assert "this trial waits for it, retrying for up to 0.1 minutes" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# the driver: stopped by SIGTERM, by an MLflow server down for good, by a filling disk


def _guarded_wait(guard, seconds=30):
    import signal
    import time

    # A fresh driver's SIGINT handler (KeyboardInterrupt): an earlier test may have left Ray Tune's own one
    # installed in this process, which only flags a stop, so the guard's interrupt would never end the wait.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        deadline = time.monotonic() + seconds
        with guard:
            while time.monotonic() < deadline:  # what tuner.fit() does: the main thread busy until interrupted
                time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, before)
    guard.raise_if_stopped()


def test_sigterm_to_the_driver_is_one_line_saying_how_to_resume(tmp_path):
    import signal
    import threading

    from robustsweep.errors import SweepInterrupted
    from robustsweep.launch import _Guard

    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's own once a test has started Ray in-process
    guard = _Guard("s", str(tmp_path / "elsewhere"), "sqlite:///x.db", log=lambda _: None)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with pytest.raises(SweepInterrupted) as err:
        _guarded_wait(guard)
    assert str(err.value) == f"interrupted: robustsweep resume s --storage-path {tmp_path / 'elsewhere'}"
    assert err.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # restored afterwards


def test_a_server_down_for_good_stops_the_sweep_in_the_stated_time_with_one_message(tmp_path, monkeypatch):
    import time

    from robustsweep.launch import _Guard

    monkeypatch.setenv("ROBUSTSWEEP_MLFLOW_PATIENCE_S", "2")
    said = []
    guard = _Guard("s", str(tmp_path / "ray_results"), _ApiStub().uri, log=said.append)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="did not answer for 0.0 minutes") as err:
        _guarded_wait(guard)
    assert 2 <= time.monotonic() - t0 < 15
    assert "the sweep stopped" in str(err.value) and "robustsweep resume s" in str(err.value)
    assert "the sweep stops if it is still down in 0.0 minutes" in said[0]


def test_a_filling_disk_stops_the_sweep_and_too_little_space_refuses_a_launch(tmp_path, mnist_root, monkeypatch,
                                                                              capsys):
    from robustsweep import preflight
    from robustsweep.launch import _Guard

    monkeypatch.setattr(preflight, "free_bytes", lambda path: 100 * 2**20)  # 100 MB left
    with pytest.raises(UserError, match="has 100 MB free, less than 512 MB") as err:
        _guarded_wait(_Guard("s", str(tmp_path / "ray_results"), "sqlite:///x.db", log=lambda _: None))
    assert "Free space on that disk, then `robustsweep resume s" in str(err.value)
    monkeypatch.undo()
    monkeypatch.setenv("ROBUSTSWEEP_MIN_FREE_MB", str(10**9))  # more than any disk here has
    path = tiny_sweep(tmp_path, mnist_root)
    assert main(["launch", str(path)]) == 2
    one_paragraph_error(capsys, "less than the 1000000000 MB a sweep needs", "Free space")
    assert not (tmp_path / "ray_results").exists()


def test_a_symlink_loop_as_storage_path_is_a_clear_error(tmp_path, mnist_root, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    path = tiny_sweep(tmp_path, mnist_root)
    path.write_text(path.read_text().replace(str(tmp_path / "ray_results"), str(tmp_path / "loop" / "results")))
    for argv in (["launch", str(path)], ["status", "s", "--storage-path", str(tmp_path / "loop")]):
        assert main(argv) == 2
        one_paragraph_error(capsys, "cannot be resolved", "points back at itself")


# ---------------------------------------------------------------------------------------------
# the dataset rows, at trial start


DATASETS = {"training": ("mnist-train-300", "0123456789ab", "/data"), "evaluation": ("mnist-test-200", "ba9876543210", "/data")}


def _start_trial(uri, barrier, results):
    from robustsweep.tracking import TrialRun

    try:
        run = TrialRun(uri, "fresh")
        barrier.wait(60)  # every trial logs its inputs at the same moment, into a fresh experiment
        run.log_datasets(DATASETS)
        run.finish()
        results.put(("ok", run.run_id))
    except Exception as exc:
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_many_trials_starting_at_once_in_a_fresh_experiment_all_log_their_inputs(mlflow_uri):
    context = multiprocessing.get_context("fork")
    n = 8
    barrier, results = context.Barrier(n), context.Queue()
    procs = [context.Process(target=_start_trial, args=(mlflow_uri, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [kind for kind, _ in outcomes] == ["ok"] * n, outcomes
    client = MlflowClient(mlflow_uri)
    for _, run_id in outcomes:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.name for i in inputs) == ["mnist-test-200", "mnist-train-300"], run_id


def test_a_reopened_run_without_inputs_gets_them_once(mnist_root, mlflow_uri):
    from robustsweep.config import make_trial_config
    from robustsweep.tracking import TrialRun
    from robustsweep.trial import run_trial

    config = make_trial_config({"data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu",
                                "subset": 100, "test_subset": 50, "epochs": 1, "attack_subset": 10,
                                "hessian_samples": 10, "pgd_steps": 1, "hessian_iters": 2, "eps": [0.1],
                                "mlflow_experiment": "e"})
    first = TrialRun(mlflow_uri, "e")  # an attempt that died before it logged its inputs
    run_trial(config, run_id=first.run_id)  # the retry reopens that run
    TrialRun(mlflow_uri, "e", run_id=first.run_id).log_datasets(DATASETS)  # inputs there already: no more
    inputs = MlflowClient(mlflow_uri).get_run(first.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"mnist-train-100", "mnist-test-50",  # the trial's own
                                                "mnist-train-300", "mnist-test-200"}
    again = TrialRun(mlflow_uri, "e", run_id=first.run_id)
    again.log_datasets(DATASETS)
    assert len(MlflowClient(mlflow_uri).get_run(first.run_id).inputs.dataset_inputs) == 4


# ---------------------------------------------------------------------------------------------
# a checkpoint cut short


@pytest.mark.parametrize("readable_older", [True, False])
def test_a_truncated_latest_checkpoint_falls_back_and_the_run_finishes(tmp_path, mnist_root, monkeypatch,
                                                                        readable_older):
    import dataclasses
    import io

    import ray
    import torch
    from ray import tune

    from robustsweep import launch as launch_module
    from robustsweep.trial import InjectedFailure, run_trial

    spec = load_sweep(tiny_sweep(tmp_path, mnist_root))
    trial = spec.trials[0]
    trial = dataclasses.replace(trial, config=dataclasses.replace(trial.config, epochs=3))
    states = {}

    def checkpoint_then_die_after_epoch_2(epoch, metrics, state):
        states[epoch] = state()
        if epoch == 2:
            raise InjectedFailure("the process died")

    with pytest.raises(InjectedFailure):  # the first attempt: checkpoints after epochs 1 and 2, then dies
        run_trial(trial.config, tags={"sweep": "s", "trial_id": trial.trial_id},
                  on_epoch_end=checkpoint_then_die_after_epoch_2)
    folder = tmp_path / "ray_results" / "s" / trial.trial_id
    for epoch in (1, 2):
        (folder / f"checkpoint_00000{epoch - 1}").mkdir(parents=True)
        buffer = io.BytesIO()
        torch.save(states[epoch], buffer)
        (folder / f"checkpoint_00000{epoch - 1}" / "trial_state.pt").write_bytes(buffer.getvalue())
    latest = folder / "checkpoint_000001" / "trial_state.pt"
    latest.write_bytes(latest.read_bytes()[:300])  # cut short (a full disk)
    if not readable_older:
        (folder / "checkpoint_000000" / "trial_state.pt").write_bytes(b"")
    reports = []
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda self: "n1"})())
    monkeypatch.setattr(tune, "get_checkpoint", lambda: tune.Checkpoint.from_directory(str(folder / "checkpoint_000001")))
    monkeypatch.setattr(tune, "report", lambda metrics, **kw: reports.append(metrics))
    launch_module.ray_trainable({"trial": trial.to_json(), "sweep": "s"})
    assert reports[-1]["outcome"] == "finished"
    client = MlflowClient(spec.tracking_uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name("s").experiment_id]))
    assert run.info.status == "FINISHED"
    note = run.data.tags["checkpoint_fallback"]
    assert "checkpoint_000001/trial_state.pt is unreadable" in note
    if readable_older:
        assert "continued from checkpoint_000000 (epoch 1)" in note and run.data.tags["resumed_from_epoch"] == "1"
    else:
        assert "no readable checkpoint, started afresh into the same MLflow run" in note
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3]


def test_a_batch_larger_than_the_training_set_is_warned_about(tmp_path, mnist_root, capsys):
    path = tiny_sweep(tmp_path, mnist_root, groups="[{name: big, grid: {batch_size: [64, 256]}}]")
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().out
    assert err.count("warning") == 1, err  # 64 fits in the 100 examples, 256 does not
    assert "group big: batch_size 256 is larger than its training set (100 examples, subset)" in err


def test_a_failed_attempt_that_ray_retries_is_running_and_retries_keep_every_node(tmp_path, mnist_root):
    from robustsweep.launch import status
    from robustsweep.tracking import TrialRun

    spec = load_sweep(tiny_sweep(tmp_path, mnist_root, groups="[{name: g, grid: {lr: [0.01, 0.02]}}]"))  # max_failures 2
    _save_spec(spec)
    storage = str(tmp_path / "ray_results")
    ids = [t.trial_id for t in spec.trials]
    retried = TrialRun(spec.tracking_uri, "s", tags={"sweep": "s", "trial_id": ids[0], "ray_node_id": "node-a"})
    retried.fail(RuntimeError("a worker died"))  # the first attempt; Ray tries again, maybe elsewhere
    bad = TrialRun(spec.tracking_uri, "s", tags={"sweep": "s", "trial_id": ids[1]})
    bad.fail(UserError("device=cuda asks for CUDA"))  # a user error: Ray does not try again
    with driver_record(storage, "s"):
        assert status("s", storage).counts["running"] == 1 and status("s", storage).counts["failed"] == 1
        for node in ("node-b", "node-a"):
            again = TrialRun(spec.tracking_uri, "s", run_id=retried.run_id,
                             tags={"sweep": "s", "trial_id": ids[0], "ray_node_id": node})
            again.fail(RuntimeError("died again"))
        assert status("s", storage).counts["failed"] == 2  # 3 failed attempts: max_failures 2 used up
    tags = MlflowClient(spec.tracking_uri).get_run(retried.run_id).data.tags
    assert tags["ray_node_id"] == "node-a,node-b" and tags["failed_attempts"] == "3"
    assert status("s", storage).counts["failed"] == 2  # no driver: what failed stays failed


def test_a_server_that_asks_for_a_login_gets_the_credentials_and_a_wrong_one_is_one_paragraph(monkeypatch):
    import http.server
    import threading

    from robustsweep.errors import TrackingError
    from robustsweep.tracking import check_server
    from tests.conftest import free_port

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            ok = self.headers.get("Authorization") == "Basic dTpw"  # u:p
            self.send_response(200 if ok else 401)
            self.end_headers()
            self.wfile.write(b"{}" if ok else b"You are not authenticated.")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(TrackingError, match="HTTP 401.*MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
            check_server(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "p")
        check_server(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_a_grid_trial_tune_stops_at_a_report_is_interrupted_never_pruned(tmp_path, mnist_root, monkeypatch):
    # Stopping a sweep (Ctrl-C, SIGTERM, the guard) makes Ray Tune end each running trial with SystemExit(0)
    # from its next report, as ASHA's stop does in a search. A grid trial has no scheduler: its run must end
    # FAILED with a reason, not FINISHED as pruned, or `resume` would take it for done (CI once lost a trial so).
    import ray
    from ray import tune

    from robustsweep import launch as launch_module

    spec = load_sweep(tiny_sweep(tmp_path, mnist_root, groups="[{name: g, set: {epochs: 3}}]"))
    trial = spec.trials[0]
    reports = []

    def report(metrics, **kw):
        reports.append(metrics)
        if metrics.get("epoch") == 2:
            raise SystemExit(0)  # what Tune's function session raises when it ends the trial

    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"get_node_id": lambda self: "n1"})())
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", report)
    with pytest.raises(SystemExit) as stopped:
        launch_module.ray_trainable({"trial": trial.to_json(), "sweep": "s"})
    assert stopped.value.code == 0 and [r["epoch"] for r in reports] == [1, 2]
    client = MlflowClient(spec.tracking_uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name("s").experiment_id]))
    assert run.info.status == "FAILED" and run.data.tags.get("outcome") != "pruned"
    assert "the sweep stopped while this trial ran (after its epoch 2)" in run.data.tags["error"]
    assert run.data.tags["retryable"] == "1"
