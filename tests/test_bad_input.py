"""Bad input and broken state: exit code 2, one paragraph naming the problem and the fix, no traceback,
and nothing created (no MLflow experiment, no storage folder, no FAILED run) before the checks pass."""

import json
import os
import tracemalloc
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from robustsweep.cli import main
from robustsweep.errors import TrackingError, UserError
from robustsweep.launch import SWEEP_FILE, _save_spec, load_saved_sweep, read_checkpoint_state, status
from robustsweep.storage import driver_record
from robustsweep.sweep import load_sweep
from robustsweep.tracking import filter_value

from .conftest import one_paragraph_error, tiny_sweep, trial_runs_only


def _nothing_created(tmp_path, experiment="s"):
    db = tmp_path / "mlflow.db"
    if db.exists():
        assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name(experiment) is None
    assert not (tmp_path / "ray_results").exists()


# ---------------------------------------------------------------------------------------------
# sweep files


def test_binary_sweep_file(tmp_path, capsys):
    path = tmp_path / "g.yaml"
    path.write_bytes(bytes(range(256)) * 2)
    assert main(["validate", str(path)]) == 2
    one_paragraph_error(capsys, "is not a text (UTF-8) YAML file")
    path.write_bytes(b"name: x\x00\x01")
    assert main(["validate", str(path)]) == 2
    one_paragraph_error(capsys, "NUL bytes")


@pytest.mark.parametrize("text, line", [
    ("name: a\nname: b\ngroups: [{name: g}]\n", 2),
    ("name: a\ngroups:\n  - name: g\n    set: {lr: 0.1, lr: 0.2}\n", 4),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, capsys, text, line):
    path = tmp_path / "d.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    one_paragraph_error(capsys, f"at line {line}", "duplicate key", "give each key once")


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\nbase: &b {dataset: mnist, lr: 0.1}\ngroups:\n  - name: g\n    set: {<<: *b, lr: 0.2}\n")
    (trial,) = load_sweep(path).trials
    assert trial.config.lr == 0.2


@pytest.mark.parametrize("name", ["x'or'1'='1", "..", "a/b", "-x", "a b", 'x"y'])
def test_names_that_are_not_one_safe_path_component_are_refused(tmp_path, mnist_root, capsys, name):
    path = tmp_path / "n.yaml"
    path.write_text(f"name: {json.dumps(name)}\ngroups: [{{name: g}}]\n")
    assert main(["validate", str(path)]) == 2
    one_paragraph_error(capsys, "at name: expected a sweep name of letters, digits")
    path.write_text(f"name: ok\ngroups: [{{name: {json.dumps(name)}}}]\n")
    assert main(["validate", str(path)]) == 2
    one_paragraph_error(capsys, "groups[0].name")
    for command in ("status", "resume"):
        assert main([command, "--storage-path", str(tmp_path), "--", name]) == 2
        one_paragraph_error(capsys, "is not a sweep name")


def test_filter_values_are_quoted_so_mlflow_finds_them(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("q")
    values = ["plain", "it's", 'say "x"', "a'or'1'='1"]
    for value in values:
        client.create_run(experiment, tags={"sweep": value})
    for value in values:
        (run,) = trial_runs_only(client.search_runs([experiment], filter_string=f"tags.sweep = {filter_value(value)}"))
        assert run.data.tags["sweep"] == value
    with pytest.raises(TrackingError, match="both kinds of quote"):
        filter_value("""'"'""")


def test_grid_size_is_capped_before_expansion(tmp_path, capsys):
    axis = ", ".join(str(i + 1) for i in range(100))
    path = tmp_path / "big.yaml"
    path.write_text(f"name: big\ngroups:\n  - name: g\n    grid: {{batch_size: [{axis}], epochs: [{axis}], "
                    f"pgd_steps: [{axis}]}}\n")
    tracemalloc.start()
    try:
        assert main(["validate", str(path)]) == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_paragraph_error(capsys, "expands to 1,000,000 trials, more than the limit of 100,000", "--max-trials")
    assert peak < 20e6  # counted, never expanded (expanding took gigabytes)
    small = tmp_path / "small.yaml"
    small.write_text("name: small\nseeds: [0, 1, 2]\ngroups: [{name: g, grid: {batch_size: [16, 32, 64, 128]}}]\n")
    assert main(["validate", str(small), "--max-trials", "11"]) == 2
    one_paragraph_error(capsys, "expands to 12 trials, more than the limit of 11")
    assert main(["validate", str(small), "--max-trials", "12"]) == 0


# ---------------------------------------------------------------------------------------------
# storage, data, saved sweeps


def test_storage_path_under_a_regular_file(tmp_path, mnist_root, capsys):
    (tmp_path / "afile").write_text("")
    path = tiny_sweep(tmp_path, mnist_root, storage=tmp_path / "afile" / "sub")
    assert main(["launch", str(path)]) == 2
    one_paragraph_error(capsys, f"{tmp_path / 'afile'} is a file, not a folder")
    _nothing_created(tmp_path)


@pytest.mark.slow  # the S3 client retries for several seconds before it gives up
def test_unreachable_cloud_storage(tmp_path, mnist_root, capsys, monkeypatch):
    # An S3 endpoint on a closed local port: nothing leaves this machine. No credential look-ups either.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    path = tiny_sweep(tmp_path, mnist_root, storage="s3://bucket/ray?endpoint_override=127.0.0.1:9&scheme=http")
    assert main(["launch", str(path)]) == 2
    one_paragraph_error(capsys, "storage_path s3://bucket/ray", "cannot be reached", "credentials")
    _nothing_created(tmp_path)


@pytest.mark.parametrize("mode", [["--debug"], []])
def test_missing_dataset_is_refused_before_anything_is_created(tmp_path, mnist_root, capsys, mode):
    path = tiny_sweep(tmp_path, tmp_path / "nodata", base=", download: false")
    assert main(["launch", str(path), *mode]) == 2
    one_paragraph_error(capsys, f"The mnist dataset is not in {tmp_path / 'nodata'}/MNIST/raw",
                         "Nothing was started")  # and nothing of the Ray that started meanwhile printed
    _nothing_created(tmp_path)
    import ray

    assert not ray.is_initialized()  # the local Ray started beside the data check was shut down again


@pytest.mark.parametrize("content", [b"", b'{"name": "s", "stor', b'{"name": "s"}', b"\x00\x01"])
def test_broken_saved_sweep_is_a_clear_error(tmp_path, capsys, content):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / SWEEP_FILE).write_bytes(content)
    for command in ("status", "resume"):
        assert main([command, "s", "--storage-path", str(tmp_path)]) == 2
        one_paragraph_error(capsys, f"{SWEEP_FILE} is unreadable", "launch the sweep file again")


def test_saved_sweep_is_replaced_whole_or_not_at_all(tmp_path, mnist_root, monkeypatch):
    spec = load_sweep(tiny_sweep(tmp_path, mnist_root))
    _save_spec(spec)
    saved = tmp_path / "ray_results" / "s" / SWEEP_FILE
    before = saved.read_bytes()
    import robustsweep.saved_sweep as saved_sweep_module

    real = saved_sweep_module.storage_file

    class DiesBeforeRename:
        """The storage, as seen by a launch that dies after writing the new copy, before the rename."""

        def __init__(self, filesystem):
            self.filesystem = filesystem

        def __getattr__(self, name):
            return getattr(self.filesystem, name)

        def move(self, src, dest):
            raise KeyboardInterrupt

    def storage_file(*args):
        filesystem, path = real(*args)
        return DiesBeforeRename(filesystem), path

    monkeypatch.setattr(saved_sweep_module, "storage_file", storage_file)
    with pytest.raises(KeyboardInterrupt):
        _save_spec(spec)
    assert saved.read_bytes() == before
    assert load_saved_sweep("s", str(tmp_path / "ray_results")).trials[0].trial_id == spec.trials[0].trial_id


# ---------------------------------------------------------------------------------------------
# status: interrupted, running, collapsed


def test_status_tells_interrupted_from_running_and_counts_collapsed(tmp_path, mnist_root, capsys):
    spec = load_sweep(tiny_sweep(tmp_path, mnist_root,
                                 groups="[{name: g, grid: {lr: [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]}}]"))
    _save_spec(spec)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.create_experiment("s")
    ids = [t.trial_id for t in spec.trials]
    # the last: ended FAILED by its sweep's stop (SIGTERM, Ctrl-C), which `resume` continues from its checkpoint
    stopped = {"error": "TrialInterrupted: the sweep stopped while this trial ran (after its epoch 4): ...",
               "outcome": "failed", "retryable": "1", "failed_attempts": "1"}
    for trial_id, state, tags in ((ids[0], "FINISHED", {"outcome": "collapsed"}),
                                  (ids[1], "FINISHED", {"outcome": "finished"}), (ids[2], "RUNNING", {}),
                                  (ids[4], "FAILED", stopped),
                                  # the stop killed this one's process before it could mark its run FAILED
                                  (ids[5], "RUNNING", stopped)):
        run = client.create_run(experiment, tags={"sweep": "s", "trial_id": trial_id, **tags})
        if state != "RUNNING":
            client.set_terminated(run.info.run_id, status=state)
    storage = str(tmp_path / "ray_results")
    common = {"pending": 1, "finished": 1, "pruned": 0, "collapsed": 1, "diverged": 0, "failed": 0}
    # no driver: the plain RUNNING run was left by a killed one, the others by a stopped one: all interrupted
    assert status("s", storage).counts == {**common, "running": 0, "interrupted": 3}
    assert status("s", storage).progress.startswith("2/6 trials done")
    assert main(["status", "s", "--storage-path", storage]) == 0
    out = capsys.readouterr().out
    assert "no driver is running" in out and "interrupted  3  (no live Ray trial" in out
    assert f"/#/experiments/{experiment}/runs?workflowType=machine_learning" in out  # straight to the runs table
    with driver_record(storage, "s"):  # this process, alive: running, and the stopped ones wait to go on
        live = status("s", storage)
        assert live.counts == {**common, "pending": 3, "running": 1, "interrupted": 0}
        # one runs now: the time left is for one at a time, not two (a `resume` that has not yet restarted a
        # trial the last stop interrupted before its first checkpoint)
        assert live.progress.startswith("2/6 trials done; about ") and live.progress.endswith(", 1 at a time)")
    record = tmp_path / "ray_results" / "s" / "robustsweep-driver.json"
    assert not record.exists()  # a clean exit removes the record
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    import socket

    record.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "start_ticks": "1"}))
    assert status("s", storage).counts["interrupted"] == 3  # a record whose process is gone
    record.write_text(json.dumps({"host": "some-other-host", "pid": 1}))
    # a driver elsewhere: cannot tell, say running (the stopped ones: waiting to go on)
    assert status("s", storage).counts["running"] == 1 and status("s", storage).counts["pending"] == 3


# ---------------------------------------------------------------------------------------------
# checkpoints hold no code


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code from the checkpoint ran"))

    torch.save({"epoch": 1, "model": {}, "payload": Payload()}, tmp_path / "trial_state.pt")
    with pytest.raises(UserError, match="cannot be read as tensors and plain values"):
        read_checkpoint_state(tmp_path)
    assert not marker.exists()
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "history": [{"a": 1.0}]}, tmp_path / "trial_state.pt")
    assert read_checkpoint_state(tmp_path)["epoch"] == 1


def _status_after(tmp_path, mnist_root, runs) -> str:
    """status's progress line for a 10-trial sweep whose first trials ended as ``runs`` say: (start, end) in
    minutes, tags, trial_seconds or None."""
    rates = ", ".join(f"{0.01 * i:g}" for i in range(1, 11))
    spec = load_sweep(tiny_sweep(tmp_path, mnist_root, groups=f"[{{name: g, grid: {{lr: [{rates}]}}}}]"))
    _save_spec(spec)
    client = MlflowClient(spec.tracking_uri)
    experiment = client.create_experiment("s")
    t0, minute = 1_790_000_000_000, 60_000  # ms
    for trial, (start, end, tags, cost) in zip(spec.trials, runs):
        run = client.create_run(experiment, start_time=t0 + start * minute,
                                tags={"sweep": "s", "trial_id": trial.trial_id, "outcome": "finished", **tags})
        if cost is not None:
            client.log_metric(run.info.run_id, "trial_seconds", cost)
        client.set_terminated(run.info.run_id, status="FINISHED", end_time=t0 + end * minute)
    return status("s", str(tmp_path / "ray_results")).progress


def test_status_estimates_from_what_trials_cost_not_from_spans_holding_a_break(tmp_path, mnist_root):
    # Four finished trials of ten, run one at a time: two ran in one go (10 min each, end minus start); one
    # logged trial_seconds (10 min, resumed across a 5 h break); one resumed before that metric existed (its
    # 5 h span holds the break: left out). Six left at 10 min a trial: about 1 h.
    hours = 60
    runs = [(0, 10, {}, None), (10, 20, {}, None), (20, 20 + 5 * hours, {"resumed_from_epoch": "3"}, 600.0),
            (20 + 5 * hours, 20 + 10 * hours, {"resumed_from_epoch": "2"}, None)]
    assert _status_after(tmp_path, mnist_root, runs) == (
        "4/10 trials done; about 1 h 00 min left (mean 10 min a trial over 3 finished, 1 at a time)")


def test_status_counts_trials_at_a_time_without_a_resumed_trials_span(tmp_path, mnist_root):
    # Two at a time in two sessions five hours apart; one trial ran on from the first into the second. Its
    # span would join the sessions into one busy stretch, as if the trials had run one at a time.
    runs = [(0, 10, {}, None), (0, 10, {}, None), (10, 20, {}, None), (10, 300, {"resumed_from_epoch": "1"}, 600.0),
            (300, 310, {}, None), (300, 310, {}, None)]
    assert _status_after(tmp_path, mnist_root, runs) == (
        "6/10 trials done; about 20 min left (mean 10 min a trial over 6 finished, 2 at a time)")
