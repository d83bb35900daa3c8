"""The local copy of a sweep's ended runs (robustsweep.run_cache): what the reading commands see through it is
what MLflow holds, after every kind of change a sweep's runs go through, and a warm read asks MLflow only for
what can have changed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from robustsweep.run_cache import GENERATION_TAG, bump_generation, cache_dir
from robustsweep.runs import read_sweep_runs, read_sweep_runs_cached, trial_state
from robustsweep.sweep import load_sweep

from .test_scale import _Count, _import_first


def _shape(runs) -> dict[str, list[tuple]]:
    """What the commands read of each trial's runs: ids, status, times, tags, params and latest metrics."""
    return {trial_id: [(r.info.run_id, r.info.status, r.info.start_time, r.info.end_time, dict(r.data.tags),
                        dict(r.data.params), dict(r.data.metrics)) for r in mine]
            for trial_id, mine in sorted(runs.items())}


def _store(tmp_path: Path, count: int = 6):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_sweep(_import_first(tmp_path, uri, count), base_dir=tmp_path)
    client = MlflowClient(uri)
    return uri, spec, client, client.get_experiment_by_name(spec.experiment).experiment_id


def _agree(uri: str, spec) -> dict:
    """The read through the copy, checked against a full read of MLflow."""
    cached = read_sweep_runs_cached(uri, spec.experiment, spec.name)[2]
    assert _shape(cached) == _shape(read_sweep_runs(uri, spec.experiment, spec.name)[2])
    return cached


def _new_run(client, experiment_id: str, spec, trial_id: str, parent_id: str, **tags) -> str:
    run = client.create_run(experiment_id, tags={"sweep": spec.name, "trial_id": trial_id,
                                                 "mlflow.parentRunId": parent_id, **tags})
    client.log_metric(run.info.run_id, "clean_acc", 0.5)
    return run.info.run_id


def test_reads_through_the_copy_agree_with_mlflow_after_every_change(tmp_path):
    uri, spec, client, experiment_id = _store(tmp_path)
    first = _agree(uri, spec)  # a full read, kept
    assert len(list(cache_dir().glob("*.json"))) == 1
    parent = [r for r in client.search_runs([experiment_id], "tags.kind = 'sweep'")][0].info.run_id
    trial_id = sorted(first)[0]
    done = trial_state(first[trial_id])[1]

    # a trial retried: a new run that is RUNNING, then ends FINISHED; another that FAILED
    live = _new_run(client, experiment_id, spec, trial_id, parent)
    assert trial_state(_agree(uri, spec)[trial_id])[1].info.run_id == done.info.run_id  # a FINISHED run decides
    client.set_terminated(live, "FINISHED")
    assert [r.info.run_id for r in _agree(uri, spec)[trial_id]][0] == live
    failed = _new_run(client, experiment_id, spec, "t-new", parent, error="boom")
    client.set_terminated(failed, "FAILED")
    assert trial_state(_agree(uri, spec)["t-new"])[0] == "failed"

    # a FAILED run reopened (as a retried trial does), then ended again
    client.update_run(failed, status="RUNNING")
    assert trial_state(_agree(uri, spec)["t-new"])[0] == "running"
    client.set_tag(failed, "outcome", "finished")
    client.set_terminated(failed, "FINISHED")
    assert trial_state(_agree(uri, spec)["t-new"])[1].data.tags["outcome"] == "finished"

    # deleted, then restored
    client.delete_run(done.info.run_id)
    assert done.info.run_id not in {r.info.run_id for r in _agree(uri, spec)[trial_id]}
    client.restore_run(done.info.run_id)
    assert done.info.run_id in {r.info.run_id for r in _agree(uri, spec)[trial_id]}

    # a run written with an earlier end time (as import keeps the exported times) and a tag set on an ended run
    # (as nesting earlier runs does): unseen by the timestamps, seen once the generation is bumped
    old = _new_run(client, experiment_id, spec, "t-old", parent)
    client.set_terminated(old, "FINISHED", end_time=1_000)
    client.set_tag(done.info.run_id, "note", "changed after it ended")
    stale = read_sweep_runs_cached(uri, spec.experiment, spec.name)[2]
    assert "t-old" not in stale and "note" not in trial_state(stale[trial_id])[1].data.tags  # the one blind spot
    bump_generation(client, parent)
    assert "t-old" in _agree(uri, spec)


def test_import_and_nesting_bump_the_generation(tmp_path):
    from robustsweep.archive import export_runs, import_runs

    (tmp_path / "a").mkdir()
    uri, spec, _, _ = _store(tmp_path / "a")
    export_runs(uri, spec.experiment, spec.name, tmp_path / "all.jsonl")
    target = f"sqlite:///{tmp_path / 'b.db'}"
    lines = (tmp_path / "all.jsonl").read_text().splitlines(keepends=True)
    parent, trials = lines[0], lines[1:]
    (tmp_path / "half.jsonl").write_text(parent + "".join(trials[:3]))
    import_runs(tmp_path / "half.jsonl", target, spec.experiment, spec.name)
    assert len(read_sweep_runs_cached(target, spec.experiment, spec.name)[2]) == 3
    import_runs(tmp_path / "all.jsonl", target, spec.experiment, spec.name)  # the other 3, with their old times
    assert len(_agree(target, spec)) == 6
    run = MlflowClient(target).search_runs([MlflowClient(target).get_experiment_by_name(spec.experiment)
                                            .experiment_id], "tags.kind = 'sweep'")[0]
    assert run.data.tags.get(GENERATION_TAG)


def test_a_warm_read_asks_only_for_what_can_have_changed(tmp_path, monkeypatch):
    # the same few searches at 4 runs and at 16: the parents, the deleted runs, runs ended since the last read,
    # runs RUNNING and SCHEDULED; and audit reads no metric history of an ended run it has audited before
    from robustsweep.audit import audit
    from robustsweep.runs import status
    from robustsweep.saved_sweep import _save_spec

    counts = {}
    for n in (4, 16):
        folder = tmp_path / str(n)
        folder.mkdir()
        uri, spec, _, _ = _store(folder, n)
        _save_spec(spec)
        sweep = folder / "table1-mnist-cpu.yaml"
        for command, call in {"status": lambda: status(spec.name, spec.storage_path),
                              "audit": lambda: audit(str(sweep), uri)}.items():
            call()  # the full read, kept
            with _Count() as counted:
                result = call()
            counts[n, command] = dict(counted.calls)
            if command == "audit":
                assert result.finished == n and not result.repeated_steps
        assert counts[n, "status"]["search_runs"] == 6  # the 5 searches above, and status's own parent lookup
    for command in ("status", "audit"):
        assert counts[4, command] == counts[16, command], (command, counts[4, command], counts[16, command])
        assert not any("metric_history" in call for call in counts[16, command]), counts[16, command]


def test_a_damaged_copy_or_the_cache_off_means_a_full_read(tmp_path, monkeypatch):
    uri, spec, client, _ = _store(tmp_path)
    _agree(uri, spec)
    (path,) = cache_dir().glob("*.json")
    body = json.loads(path.read_text())
    assert path.stat().st_mode & 0o777 == 0o600 and body["runs"]
    body["runs"][0].pop("tags")
    path.write_text(json.dumps(body))
    _agree(uri, spec)  # read again in full, and kept again
    assert "tags" in json.loads(path.read_text())["runs"][0]
    path.write_text("{not json")
    _agree(uri, spec)
    monkeypatch.setenv("ROBUSTSWEEP_RUN_CACHE", "off")
    path.unlink()
    before = time.time()
    assert read_sweep_runs_cached(uri, spec.experiment, spec.name)[3] is None
    assert not path.exists() and time.time() - before < 60


def test_an_import_leaves_the_local_copy_up_to_date(tmp_path, monkeypatch):
    # A fresh machine: import the export, then status. The import's own read of the sweep's runs (for the parent's
    # counts) went through the copy, so status reads only what can have changed: never the sweep's runs in full.
    from robustsweep import runs as runs_module
    from robustsweep.runs import status
    from robustsweep.saved_sweep import _save_spec

    uri, spec, _, _ = _store(tmp_path, 6)
    _save_spec(spec)

    def full_read(*args, **kwargs):
        raise AssertionError("status read the sweep's runs in full")

    monkeypatch.setattr(runs_module, "trial_runs", full_read)
    counts = status(spec.name, spec.storage_path).counts
    assert counts["finished"] + counts["collapsed"] == 6 and counts["pending"] == len(spec.trials) - 6
