"""Sweeps of thousands of trials (issue 23): what Tune is handed, and how many queries a sweep's read makes.

The times themselves belong to the benchmark (bench/scale.py), not to tests.
"""

from __future__ import annotations

import inspect
import json
import pickle
import types
from collections import Counter
from pathlib import Path

import pytest

from robustsweep.sweep import load_sweep

from .conftest import trial_runs_only

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "sweeps" / "table1-mnist-cpu.yaml"
EXPORT = REPO / "results" / "table1-mnist-cpu" / "runs.jsonl"


def _study_sweep(tmp_path: Path, uri: str) -> Path:
    """The CPU study's sweep file, logging to ``uri`` and storing under ``tmp_path``."""
    text = STUDY.read_text().replace("tracking_uri: sqlite:///mlflow.db", f'tracking_uri: "{uri}"')
    text = text.replace("storage_path: ray_results", f"storage_path: {tmp_path / 'ray_results'}")
    path = tmp_path / STUDY.name
    path.write_text(text)
    return path


def _study_records(count: int) -> list[str]:
    """The first ``count`` exported runs of the study that log the same metric keys (most of them do; a
    collapsed run logs fewer), so that stores of different sizes differ only in their number of runs."""
    lines = EXPORT.read_text().splitlines(keepends=True)
    keys = [tuple(sorted(json.loads(line)["metrics"])) for line in lines]
    common = Counter(keys).most_common(1)[0][0]
    return [line for line, k in zip(lines, keys) if k == common][:count]


def _import_first(tmp_path: Path, uri: str, count: int) -> Path:
    """:func:`_study_records`, imported into ``uri``; returns the sweep file."""
    from robustsweep.archive import import_runs

    sweep = _study_sweep(tmp_path, uri)
    some = tmp_path / f"runs-{count}.jsonl"
    some.write_text("".join(_study_records(count)))
    spec = load_sweep(sweep, base_dir=tmp_path)
    assert import_runs(some, uri, spec.experiment, spec.name).imported == count
    return sweep


class _Count:
    """Calls to MLflow's tracking store (every client call lands there, and so do our bulk reads) and SQL
    statements sent to the database, while the block runs."""

    def __enter__(self):
        import sqlalchemy
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.calls: Counter = Counter()
        self.statements = 0
        self._patched = []
        for name in dir(SqlAlchemyStore):
            attr = inspect.getattr_static(SqlAlchemyStore, name)
            if name.startswith("_") or not isinstance(attr, types.FunctionType):
                continue  # plain methods only: static and class methods, properties and classes stay as they are

            def counted(*args, __name=name, __real=attr, **kwargs):
                self.calls[__name] += 1
                return __real(*args, **kwargs)

            setattr(SqlAlchemyStore, name, counted)
            self._patched.append((SqlAlchemyStore, name, attr))

        def statement(*args, **kwargs):
            self.statements += 1

        self._listener = statement
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", statement)
        return self

    def __exit__(self, *exc):
        import sqlalchemy

        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", self._listener)
        for owner, name, attr in self._patched:
            setattr(owner, name, attr)
        return False


def test_the_shared_read_of_a_sweep_makes_as_many_queries_for_16_runs_as_for_4(tmp_path, monkeypatch):
    # status, audit, export and the report each read the sweep's runs (one paged search) and, where they need
    # them, the metric histories in bulk (one call per metric key): the number of store calls and SQL
    # statements does not grow with the number of runs. Before issue 23, export made 27 history calls a run.
    # The full reads, without the local copy of ended runs (its warm reads: tests/test_run_cache.py).
    monkeypatch.setenv("ROBUSTSWEEP_RUN_CACHE", "off")
    from robustsweep.archive import export_runs
    from robustsweep.audit import audit
    from robustsweep.report.collect import collect
    from robustsweep.runs import status
    from robustsweep.saved_sweep import _save_spec

    counts = {}
    for n in (4, 16):
        folder = tmp_path / str(n)
        folder.mkdir()
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        sweep = _import_first(folder, uri, n)
        spec = load_sweep(sweep, base_dir=folder)
        _save_spec(spec)
        for command, call in {
                "status": lambda: status(spec.name, spec.storage_path),
                "audit": lambda: audit(str(sweep), uri),
                "export": lambda: export_runs(uri, spec.experiment, spec.name, folder / "out.jsonl"),
                "report": lambda: collect(str(sweep), tracking_uri=uri)}.items():
            call()  # once to warm MLflow's caches (its store, the schema check), then counted
            with _Count() as counted:
                result = call()
            counts[n, command] = (dict(counted.calls), counted.statements)
            if command == "audit":
                assert result.finished == n and not result.duplicated and not result.repeated_steps
            if command == "export":
                assert result == n
            if command == "report":
                assert len(result.table) == n and all(len(c) == 6 for c in result.curves.values())
        parent, *exported = [json.loads(line) for line in (folder / "out.jsonl").read_text().splitlines()]
        assert parent["kind"] == "sweep"  # the sweep's own run (robustsweep.sweep_run), which import made
        original = {r["trial_id"]: r for r in map(json.loads, _study_records(n))}
        for record in exported:  # every point of every history, as the export before issue 23 wrote it
            assert record["metrics"] == original[record["trial_id"]]["metrics"]
    for command in ("status", "audit", "export", "report"):
        assert counts[4, command] == counts[16, command], (command, counts[4, command], counts[16, command])
        calls, _ = counts[16, command]
        assert "get_metric_history" not in calls, (command, calls)  # never run by run
        keys = len(json.loads(_study_records(1)[0])["metrics"])
        # export also reads the parent's counts (trials_total, trials_finished, ...): one call per key of its own
        own = len(parent["metrics"])
        assert calls.get("get_metric_history_bulk", 0) == {"audit": keys, "export": keys + own,
                                                           "report": 4}.get(command, 0)


def _lr_sweep(tmp_path: Path, mnist_root, lrs: list[float]) -> Path:
    """Sweep ``s``: one group of one-epoch MNIST trials at the learning rates ``lrs``, its store in tmp_path."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""
name: s
storage_path: {tmp_path / 'ray_results'}
mlflow: {{tracking_uri: "sqlite:///{tmp_path / 'mlflow.db'}"}}
base: {{dataset: mnist, data_root: "{mnist_root}", epochs: 1, device: cpu}}
groups:
  - name: g
    grid: {{lr: {lrs}}}
""")
    return sweep


def test_a_local_launch_reads_what_is_left_and_checks_the_data_while_ray_starts(tmp_path, monkeypatch, mnist_root):
    # A local Ray takes seconds to start (its processes, one after another): the read of the sweep's runs and
    # the data check (torch's import, the test split) run in a thread meanwhile, not before it.
    import threading

    from ray import tune

    from robustsweep import launch as launch_module
    from robustsweep import ray_backend
    from robustsweep.tracking import TrialRun

    data_started, seen = threading.Event(), {}

    def ray_start(address):  # Ray's start, faked: it waits (up to 30 s) for the data check to begin meanwhile
        seen["ray"] = (threading.current_thread() is threading.main_thread(), data_started.wait(30))

    def data_check(*args, **kwargs):
        data_started.set()
        seen["data"] = threading.current_thread() is threading.main_thread()
        return real_check(*args, **kwargs)

    class Tuner:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            return []

    monkeypatch.setattr(tune, "Tuner", Tuner)
    real_check = launch_module.check_data
    monkeypatch.setattr(ray_backend, "_init_ray", ray_start)
    monkeypatch.setattr(launch_module, "check_data", data_check)
    monkeypatch.setattr(launch_module, "_check_cluster_resources", lambda *a: None)
    sweep = _lr_sweep(tmp_path, mnist_root, [0.01])
    stopped = []
    monkeypatch.setattr(ray_backend, "_shut_down_ray", lambda: stopped.append("shut down"))
    spec = load_sweep(sweep)
    launch_module.launch(spec, verbose=0, log=lambda m: None)
    assert seen["ray"] == (True, True)  # in the main thread (Ray's signal handlers), the data check meanwhile
    assert seen["data"] is False  # in a thread of its own
    assert stopped == []  # a trial was left: Ray stays up for it
    # every trial finished: the Ray that started while the runs were read is shut down again
    TrialRun(spec.tracking_uri, spec.experiment, tags={"sweep": "s", "trial_id": spec.trials[0].trial_id,
                                                       "outcome": "finished"}).finish()
    launch_module.launch(spec, verbose=0, log=lambda m: None)
    assert stopped == ["shut down"]


def test_launch_hands_tune_trial_ids_and_only_the_trials_left_to_run(tmp_path, monkeypatch, mnist_root):
    # Tune sees the ids of the trials that have no FINISHED run, never the trial dicts; the trainable reads
    # each trial's configuration from the saved sweep. (Tune deep-copied a parameter space holding every trial
    # dict once per trial: 71 s before the first of 1,440 trials, issue 23.)
    from ray import tune

    from robustsweep import launch as launch_module
    from robustsweep import ray_backend
    from robustsweep.tracking import TrialRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = _lr_sweep(tmp_path, mnist_root, [0.01, 0.02, 0.05, 0.1])
    spec = load_sweep(sweep)
    finished = spec.trials[1]
    run = TrialRun(uri, spec.experiment, tags={"sweep": "s", "trial_id": finished.trial_id, "outcome": "finished"})
    run.finish()
    seen = {}

    class Tuner:
        def __init__(self, trainable, *, param_space, tune_config, run_config):
            seen.update(trainable=trainable, param_space=param_space, tune_config=tune_config)

        def fit(self):
            return []

    monkeypatch.setattr(tune, "Tuner", Tuner)
    monkeypatch.setattr(ray_backend, "_init_ray", lambda address: None)
    monkeypatch.setattr(launch_module, "_check_cluster_resources", lambda *a: None)
    result = launch_module.launch(spec, verbose=0, log=lambda m: None)

    space = seen["param_space"]
    assert set(space) == {"trial_id", "sweep", "flags", "experiment_dir"}
    assert "settings" not in json.dumps(space, default=str)
    config = seen["tune_config"]
    points = config.search_alg._points_to_evaluate
    left = [t.trial_id for t in spec.trials if t is not finished]
    assert points == [{"trial_id": t} for t in left] and config.num_samples == len(left)
    assert [r["trial_id"] for r in result.rows] == [finished.trial_id]  # known from MLflow, not run again
    # what the trainable reads for each id: the trial, as the sweep expanded it
    for trial in spec.trials:
        params = {**space, "trial_id": trial.trial_id}
        assert ray_backend.trial_of(params) == trial
        assert ray_backend.param_trial_id(params) == trial.trial_id
    legacy = {"trial": spec.trials[0].to_json(), "sweep": "s"}  # a Tuner state saved before issue 23
    assert ray_backend.trial_of(legacy) == spec.trials[0] and ray_backend.param_trial_id(legacy) == spec.trials[0].trial_id


def test_expansion_makes_each_combination_once_and_each_seed_the_same_as_from_scratch(tmp_path, monkeypatch):
    # A sweep of 10,000 trials is mostly seeds: a combination of settings is made and resolved once, each of its
    # seeds copied from it. Every trial (id, settings) must be the one expansion makes without that shortcut.
    from robustsweep import config as config_module
    from robustsweep import sweep as sweep_module
    from robustsweep.saved_sweep import _save_spec, load_saved_sweep
    from robustsweep.sweep import SweepOverrides

    sweep = _study_sweep(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    seeds = SweepOverrides(seeds=(7, 0, 1))  # the first made of each combination has a seed other than the default
    made = Counter()
    real = config_module.TrialConfig.resolved

    def counted(self):
        made[self.seed] += 1
        return real(self)

    monkeypatch.setattr(config_module.TrialConfig, "resolved", counted)
    spec = load_sweep(sweep, base_dir=tmp_path, overrides=seeds)
    fast = spec.trials
    assert len(fast) == 3 * 144 and sum(made.values()) == 144  # once per combination, none per other seed
    # a saved sweep's trials (resume, status, audit by name) are read back the same way
    _save_spec(spec)
    assert load_saved_sweep(spec.name, spec.storage_path).trials == list(fast)
    assert sum(made.values()) == 2 * 144

    class FromScratch:
        def made(self, values):
            config = config_module.make_trial_config(values, validate=False).resolved()
            return config, sweep_module._science(config)

    monkeypatch.setattr(sweep_module, "SeedlessMemo", FromScratch)
    slow = load_sweep(sweep, base_dir=tmp_path, overrides=seeds).trials
    assert [(t.trial_id, t.group, t.config) for t in fast] == [(t.trial_id, t.group, t.config) for t in slow]
    assert len({t.trial_id for t in fast}) == len(fast) and {t.config.seed for t in fast} == {0, 1, 7}


def test_ray_state_check_reads_trial_ids_in_either_form_and_never_unpickles(tmp_path):
    # Tune pickles its variant generator's state under a .json name: the check before restore looks at its
    # shape (whole or cut short), and at experiment states whose configs hold trial ids or full trial dicts.
    import ray.cloudpickle as cloudpickle

    from robustsweep.ray_backend import _ray_state_problem

    folder = tmp_path / "exp"
    folder.mkdir()
    for config in ({"trial_id": "g-1", "sweep": "s"}, {"trial": {"trial_id": "g-1"}, "sweep": "s"}):
        (folder / "experiment_state-2026.json").write_text(json.dumps(
            {"trial_data": [[json.dumps({"config": config}), "{}"]]}))
        (folder / "basic-variant-state-2026.json").write_bytes(cloudpickle.dumps({"_iterators": []}))
        assert _ray_state_problem(str(folder)) is None
    whole = cloudpickle.dumps({"points": list(range(100))}, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / "basic-variant-state-2026.json").write_bytes(whole[:len(whole) // 2])
    assert "basic-variant-state-2026.json is unreadable" in _ray_state_problem(str(folder))


def test_sqlite_stores_get_planner_statistics_when_filled(tmp_path):
    # The statistics make SQLite read a run's metric history through index_metrics_run_uuid_key_step, not
    # through every run's rows of that key (the primary-key index, which begins with the key).
    import sqlite3

    from robustsweep.tracking import analyze_sqlite

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _import_first(tmp_path, uri, 3)  # an import ends with ANALYZE
    query = "EXPLAIN QUERY PLAN SELECT * FROM metrics WHERE run_uuid = 'x' AND key = 'train_loss'"

    def plan() -> str:
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            return " ".join(str(row) for row in db.execute(query))

    assert "index_metrics_run_uuid_key_step" in plan()
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("DROP TABLE sqlite_stat1")  # a store as MLflow leaves it
    assert "index_metrics_run_uuid_key_step" not in plan()
    analyze_sqlite(uri)  # what launch and resume run on the store
    assert "index_metrics_run_uuid_key_step" in plan()


#: A Tuner as robustsweep built it before issue 23: every trial's whole dict in a grid_search.
def _legacy_tuner(spec):
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from robustsweep.ray_backend import ray_trainable

    def resources(params):
        r = params["trial"]["resources"]
        return PlacementGroupFactory([{"CPU": r["cpu"], "GPU": r["gpu"]}])

    def name(trial):
        return trial.config["trial"]["trial_id"]

    return tune.Tuner(
        tune.with_resources(ray_trainable, resources=resources),
        param_space={"trial": tune.grid_search([t.to_json() for t in spec.trials]), "sweep": spec.name,
                     "flags": spec.flags, "experiment_dir": spec.experiment_dir},
        tune_config=tune.TuneConfig(max_concurrent_trials=1, trial_name_creator=name, trial_dirname_creator=name,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=spec.storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))


@pytest.mark.slow
def test_resume_restores_a_tuner_state_saved_before_issue_23(tmp_path, mnist_root, mlflow_uri, monkeypatch):
    # A sweep launched by the code before issue 23 (full trial dicts in Tune's parameter space) whose faulty
    # trial errored after its first checkpoint: today's resume restores Ray's state (not set aside as
    # unreadable), continues that trial from its checkpoint, and leaves one FINISHED run per trial.
    import ray
    from mlflow.tracking import MlflowClient

    from robustsweep.launch import _prepare_tracking, resume
    from robustsweep.saved_sweep import _save_spec

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    sweep = tmp_path / "legacy.yaml"
    sweep.write_text(f"""
name: legacy
storage_path: {tmp_path / 'ray_results'}
mlflow: {{tracking_uri: "{mlflow_uri}"}}
resources: {{cpu: 1}}
max_concurrent: 1
max_failures: 0
base: {{dataset: mnist, data_root: "{mnist_root}", epochs: 2, subset: 300, test_subset: 200, batch_size: 50,
        attack_subset: 40, hessian_samples: 32, pgd_steps: 2, hessian_iters: 3, eval_batch_size: 200, device: cpu}}
groups:
  - name: ok
  - name: faulty
    set: {{fail_at_epoch: 2}}
""")
    spec = load_sweep(sweep)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    try:
        _prepare_tracking(spec)
        _save_spec(spec)
        grid = _legacy_tuner(spec).fit()
        assert sorted(r.error is None for r in grid) == [False, True]  # the faulty trial errored
    finally:
        ray.shutdown()
    said = []
    result = resume("legacy", storage_path=str(tmp_path / "ray_results"), verbose=0, log=said.append)
    ray.shutdown()
    assert not any("cannot be read" in line for line in said), said  # restored, not set aside
    assert sorted(r["outcome"] for r in result.rows) == ["finished", "finished"], result.rows
    client = MlflowClient(mlflow_uri)
    runs = trial_runs_only(client.search_runs([client.get_experiment_by_name("legacy").experiment_id]))
    assert sorted(r.data.tags["group"] for r in runs) == ["faulty", "ok"]  # one run per trial
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    (faulty,) = [r for r in runs if r.data.tags["group"] == "faulty"]
    assert faulty.data.tags.get("resumed_from_epoch") == "1"
