"""Sweep files' search: block (issue 24): its validation, the Pareto/best-trial computation, the searcher's
constraints, Ray's saved search state, and (slow) a search launched, killed and resumed on a real Ray runtime."""

import json
import math
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustsweep.errors import ConfigError
from robustsweep.search import Constraint, Objective, Search, best_trials, non_dominated, search_summary
from robustsweep.sweep import load_sweep

from .conftest import trial_runs_only

BIN = Path(sys.executable).parent
TINY = ("subset: 300, test_subset: 200, batch_size: 50, attack_subset: 40, hessian_samples: 32, "
        "pgd_steps: 2, hessian_iters: 3, eval_batch_size: 200, device: cpu, eps: [0.03]")


def _file(tmp_path, search: str, *, root="data", name="s", uri=None, storage=None, epochs=3, concurrent=2,
          extra="") -> Path:
    text = f"""
name: {name}
storage_path: {storage or tmp_path / 'ray_results'}
mlflow: {{tracking_uri: "{uri or 'sqlite:///' + str(tmp_path / 'mlflow.db')}"}}
resources: {{cpu: 1}}
max_concurrent: {concurrent}
max_failures: 1
base: {{dataset: mnist, data_root: "{root}", epochs: {epochs}, {TINY}}}
{extra}search:
{search}
"""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


GOOD = """  num_samples: 4
  space:
    lr: {loguniform: [0.001, 0.5]}
    momentum: {uniform: [0.0, 0.9]}
    batch_size: {choice: [25, 50]}
  objective: {metric: pgd_ratio_eps0.03, mode: max}
  constraints: ["clean_acc >= 0.5"]
  scheduler: {asha: {grace_period: 1, reduction_factor: 2}}"""


def test_a_search_block_loads_and_its_trials_are_normal_trials(tmp_path):
    spec = load_sweep(_file(tmp_path, GOOD))
    search = spec.search
    assert spec.trials == () and search.num_samples == 4 and search.group == "search"
    assert search.objectives == (Objective("pgd_ratio_eps0.03", "max"),)
    assert search.constraints == (Constraint("clean_acc", ">=", 0.5),)
    a = search.trial({"lr": 0.01, "momentum": 0.5, "batch_size": 25})
    b = search.trial({"lr": 0.01, "momentum": 0.5, "batch_size": 25})
    c = search.trial({"lr": 0.02, "momentum": 0.5, "batch_size": 25})
    assert a.trial_id == b.trial_id != c.trial_id and a.trial_id.startswith("search-")
    assert a.config.lr == 0.01 and a.config.epochs == 3 and a.config.seed == 0 and a.group == "search"
    # the same settings in a grid group of the same name give the same id: ids come from settings alone
    grid = tmp_path / "g.yaml"
    grid.write_text(_file(tmp_path, GOOD).read_text().split("search:\n")[0]
                    + "groups:\n  - name: search\n    set: {lr: 0.01, momentum: 0.5, batch_size: 25}\n")
    assert load_sweep(grid).trials[0].trial_id == a.trial_id
    assert Search.from_json(json.loads(json.dumps(search.to_json()))) == search


@pytest.mark.parametrize("block, where, message", [
    ("  num_samples: 4\n  space: {lr: {loguniform: [0, 0.1]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.lr.loguniform", "needs low > 0"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.1, 0.01]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.lr.uniform", "low must be below high"),
    ("  num_samples: 4\n  space: {lr: {normal: [0, 1]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.lr", "expected one domain"),
    ("  num_samples: 4\n  space: {lrr: {uniform: [0.1, 0.2]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.lrr", "unknown key 'lrr'"),
    ("  num_samples: 4\n  space: {batch_size: {uniform: [16, 64]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.batch_size.uniform", "integer setting"),
    ("  num_samples: 4\n  space: {variant: {choice: [sgd, nope]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space", "the sample variant=nope is not a valid trial"),
    ("  num_samples: 4\n  space: {seed: {int: [0, 3]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.space.seed", "cannot be searched"),
    ("  num_samples: 0\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: max}",
     "search.num_samples", "integer >= 1"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: up}",
     r"search.objective\[0\].mode", "max or min"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: pgd_ratio_eps0.3, mode: max}",
     r"search.objective\[0\].metric", "not a metric these trials log"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective:\n"
     "    - {metric: clean_acc, mode: max}\n    - {metric: pgd_ratio_eps0.03, mode: max}\n"
     "    - {metric: fgsm_ratio_eps0.03, mode: max}", "search.objective", "one objective or a list of two"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: max}\n"
     "  constraints: ['clean_acc > 0.9']", r"search.constraints\[0\]", "METRIC >= NUMBER"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: max}\n"
     "  algorithm: hyperband", "search.algorithm", "optuna, random"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: max}\n"
     "  scheduler: {asha: {grace_period: 3}}", "search.scheduler.asha.grace_period", "could never stop"),
    ("  num_samples: 4\n  space: {lr: {uniform: [0.01, 0.1]}}\n  objective: {metric: clean_acc, mode: max}\n"
     "  set: {lr: 0.1}", "search.space.lr", "both searched and fixed"),
    ("  num_samples: 4\n  space: {lr_batch_ratio: {uniform: [0.0001, 0.001]}}\n  set: {lr: 0.1}\n"
     "  objective: {metric: clean_acc, mode: max}", "search.space", "is not a valid trial"),
])
def test_a_bad_search_block_is_one_paragraph_naming_the_key(tmp_path, block, where, message):
    with pytest.raises(ConfigError) as info:
        load_sweep(_file(tmp_path, block))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"Sweep file {tmp_path / 's.yaml'}, at ")
    assert re.search(f"at {where}: ", text), text
    assert message in text, text


def test_a_search_beside_groups_is_refused_and_so_is_forcing_a_searched_setting(tmp_path):
    from robustsweep.sweep import SweepOverrides

    with pytest.raises(ConfigError, match="groups \\(a grid\\) or a search, not both"):
        load_sweep(_file(tmp_path, GOOD, extra="groups:\n  - name: g\n"))
    with pytest.raises(ConfigError, match="--set lr: the search samples lr"):
        load_sweep(_file(tmp_path, GOOD), overrides=SweepOverrides(settings=("lr=0.1",)))
    with pytest.raises(ConfigError, match="--seeds: a search's trials run one seed"):
        load_sweep(_file(tmp_path, GOOD), overrides=SweepOverrides(seeds=(1, 2)))
    with pytest.raises(ConfigError, match="--only g: picks a grid's groups or axis values, but .* is a search"):
        load_sweep(_file(tmp_path, GOOD), overrides=SweepOverrides(only=("g",)))
    # flags that change no trial's settings still apply: --cpu to the searched trials' resources
    assert load_sweep(_file(tmp_path, GOOD), overrides=SweepOverrides(cpu=2)).search.resources.cpu == 2


def test_debug_mode_refuses_a_search_saying_why(tmp_path):
    from robustsweep.errors import UserError
    from robustsweep.launch import run_debug

    with pytest.raises(UserError, match="is a search: its trials are sampled by Ray Tune's searcher"):
        run_debug(load_sweep(_file(tmp_path, GOOD)))


def test_non_dominated_points_on_hand_made_data():
    points = [(0.99, 0.90), (0.98, 0.95), (0.97, 0.95), (0.95, 0.97), (0.96, 0.96), (0.99, 0.90), (0.90, 0.80),
              (math.nan, 1.0)]
    # (0.97, 0.95) is dominated by (0.98, 0.95); (0.90, 0.80) by all; NaN is never on the front; the two
    # equal points (0.99, 0.90) dominate neither each other
    assert non_dominated(points, ["max", "max"]) == [True, True, False, True, True, True, False, False]
    # minimizing the second objective instead: (2, 4) beats (1, 5) and (2, 6) in both; (0, 1) is the lowest second
    assert non_dominated([(1, 5), (2, 4), (2, 6), (0, 1)], ["max", "min"]) == [False, True, False, True]
    assert non_dominated([], ["max", "max"]) == []


def test_the_best_trial_meets_the_constraints_and_two_objectives_give_the_front():
    rows = [{"trial_id": "a", "outcome": "finished", "clean_acc": 0.99, "pgd": 0.90},
            {"trial_id": "b", "outcome": "finished", "clean_acc": 0.97, "pgd": 0.99},   # best, but infeasible
            {"trial_id": "c", "outcome": "finished", "clean_acc": 0.985, "pgd": 0.95},
            {"trial_id": "d", "outcome": "collapsed", "clean_acc": 0.99, "pgd": 1.0},   # takes no part
            {"trial_id": "e", "outcome": "pruned"},
            {"trial_id": "f", "outcome": "finished", "clean_acc": 0.981, "pgd": 0.91}]  # dominated by c
    one = Search("s", "optuna", 6, {}, (Objective("pgd", "max"),), (Constraint("clean_acc", ">=", 0.98),))
    assert [r["trial_id"] for r in best_trials(rows, one)] == ["c"]
    two = Search("s", "optuna", 6, {}, (Objective("clean_acc", "max"), Objective("pgd", "max")),
                 (Constraint("clean_acc", ">=", 0.98),))
    assert [r["trial_id"] for r in best_trials(rows, two)] == ["a", "c"]
    free = Search("s", "optuna", 6, {}, (Objective("clean_acc", "max"), Objective("pgd", "max")))
    assert [r["trial_id"] for r in best_trials(rows, free)] == ["a", "c", "b"]


def test_the_search_table_and_pareto_figure_of_the_report(tmp_path):
    import pandas as pd

    from robustsweep.report.search_section import search_section
    from robustsweep.report.tables import to_html, to_markdown

    table = pd.DataFrame([
        {"trial_id": "s-a", "group": "s", "outcome": "finished", "lr": 0.1, "clean_acc": 0.99, "pgd": 0.90},
        {"trial_id": "s-b", "group": "s", "outcome": "finished", "lr": 0.2, "clean_acc": 0.97, "pgd": 0.99},
        {"trial_id": "s-c", "group": "s", "outcome": "finished", "lr": 0.3, "clean_acc": 0.985, "pgd": 0.95},
        {"trial_id": "s-f", "group": "s", "outcome": "finished", "lr": 0.4, "clean_acc": 0.981, "pgd": 0.91}])
    two = Search("s", "optuna", 6, {"lr": ("loguniform", (0.01, 1.0))},
                 (Objective("clean_acc", "max"), Objective("pgd", "max")), (Constraint("clean_acc", ">=", 0.98),))
    problems = [{"trial_id": "s-e", "kind": "pruned", "reason": "stopped", "run_id": "x"}]
    body, markdown, figures = search_section(table, problems, two, tmp_path, to_html, to_markdown)
    assert figures == [tmp_path / "search_pareto.png"] and figures[0].stat().st_size > 1000
    written = pd.read_csv(tmp_path / "search.csv")
    assert dict(zip(written["trial_id"], written["non_dominated"])) == {"s-a": True, "s-b": False, "s-c": True,
                                                                         "s-f": False}
    assert "pruned (stopped early by ASHA, kept out of every statistic): 1" in body
    assert "s-a" in body and "s-c" in body and "s-f" not in body.split("Non-dominated")[1]


def test_the_searchers_constraints_are_optunas_and_finished_trials_are_told_to_a_new_one(tmp_path):
    from robustsweep.search import make_searcher

    search = load_sweep(_file(tmp_path, GOOD)).search
    searcher = make_searcher(search, 0)
    first = searcher.suggest("t1")["sample"]
    assert set(first) == {"lr", "momentum", "batch_size"} and 0.001 <= first["lr"] <= 0.5
    searcher.on_trial_complete("t1", {"outcome": "finished", "clean_acc": 0.4, "pgd_ratio_eps0.03": 0.9})
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", {"epoch": 1, "test_acc": 0.3})  # stopped by ASHA: no outcome
    searcher.suggest("t3")
    searcher.on_trial_complete("t3", {"outcome": "failed", "error": "x"})
    trials = searcher._ot_study.trials
    assert trials[0].state.name == "COMPLETE" and trials[0].constraints == {"clean_acc >= 0.5": pytest.approx(0.1)}
    assert trials[1].state.name == "PRUNED" and trials[2].state.name == "FAIL"
    # a new searcher (a Ray state set aside, a launch again) is told what finished, as Optuna trials
    again = make_searcher(search, 0, told=[(first, {"clean_acc": 0.6, "pgd_ratio_eps0.03": 0.8}, "finished"),
                                           (first, {}, "pruned")])
    told = again._ot_study.trials
    assert [t.state.name for t in told] == ["COMPLETE", "PRUNED"]
    assert told[0].constraints == {"clean_acc >= 0.5": pytest.approx(-0.1)} and told[0].value == 0.8
    # and survives the pickle Ray saves it in
    restored = pickle.loads(pickle.dumps(again))
    assert len(restored._ot_study.trials) == 2
    # two objectives: a Pareto study, values in the objectives' order, a pruned trial told as pruned
    pareto = load_sweep(_file(tmp_path, GOOD.replace(
        "objective: {metric: pgd_ratio_eps0.03, mode: max}",
        "objective: [{metric: clean_acc, mode: max}, {metric: pgd_ratio_eps0.03, mode: max}]"))).search
    searcher = make_searcher(pareto, 0)
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"outcome": "finished", "clean_acc": 0.6, "pgd_ratio_eps0.03": 0.7})
    searcher.suggest("b")
    searcher.on_trial_complete("b", {"epoch": 1, "test_acc": 0.2})
    a, b = searcher._ot_study.trials
    assert a.values == [0.6, 0.7] and a.constraints == {"clean_acc >= 0.5": pytest.approx(-0.1)}
    assert b.state.name == "PRUNED"


def test_a_searchs_saved_ray_state_is_read_and_not_set_aside_unless_cut_short(tmp_path):
    from robustsweep.launch import _ray_state_problem

    state = {"trial_data": [[json.dumps({"config": {"sample": {"lr": 0.1}, "sweep": "s"}}), "{}"]]}
    (tmp_path / "experiment_state-2026-12-02_00-00-00.json").write_text(json.dumps(state))
    (tmp_path / "search_gen_state-2026-12-02_00-00-00.json").write_bytes(pickle.dumps({"counter": 3}))
    searcher = tmp_path / "searcher-state-2026-12-02_00-00-00.pkl"
    searcher.write_bytes(pickle.dumps({"_ot_study": None}))
    assert _ray_state_problem(str(tmp_path)) is None
    searcher.write_bytes(searcher.read_bytes()[:-3])
    assert "searcher-state-2026-12-02_00-00-00.pkl is unreadable" in _ray_state_problem(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# a real search on Ray: launched, killed, resumed


def _runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, (trial_runs_only(client.search_runs([exp.experiment_id], max_results=1000)) if exp else [])


def _ray_knows_unfinished(experiment_dir: Path) -> bool:
    """Ray's newest experiment state records a checkpoint of some trial (its restore uses that)."""
    try:
        newest = max(experiment_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
        for trial_state, metadata in json.loads(newest.read_text())["trial_data"]:
            status = json.loads(trial_state).get("status")
            manager = json.loads(metadata).get("checkpoint_manager") or {}
            if status in ("RUNNING", "PENDING", "PAUSED") and b"checkpoint_0" in bytes.fromhex(manager.get("value", "")):
                return True
    except (ValueError, KeyError, OSError):
        pass
    return False


def _resumable(uri, experiment_dir: Path) -> bool:
    """At least two trials have FINISHED runs, not all eight, and an unfinished trial has a checkpoint both in Ray's
    state and in its own folder (what a new searcher over an emptied state continues from), its MLflow run still
    RUNNING (not being pruned)."""
    runs = _runs(uri, "searched")[1]
    done = [r for r in runs if r.info.status == "FINISHED"]
    running = [r for r in runs if r.info.status == "RUNNING"
               and list((experiment_dir / r.data.tags["trial_id"]).glob("checkpoint_*/trial_state.pt"))]
    return 2 <= len(done) < 8 and bool(running) and _ray_knows_unfinished(experiment_dir)


def _kill_session(driver: subprocess.Popen) -> None:
    """SIGKILL to every process of the driver's session: Ray's trial workers have process groups of their own, so
    a kill of the driver's group leaves them to notice the raylet's end (and write to MLflow) a moment later."""
    subprocess.run(["pkill", "-9", "-s", str(driver.pid)], check=False)
    driver.wait(30)
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["pgrep", "-s", str(driver.pid)],
                                                     capture_output=True).returncode == 0:
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("ray_state", ["restored", "emptied"])
def test_a_search_killed_in_the_middle_resumes_to_exactly_its_samples_one_run_each(tmp_path, mnist_root,
                                                                                     mlflow_uri, ray_state):
    # Every process of the driver's session is killed once two trials have FINISHED runs and Ray's state records a
    # checkpoint of an unfinished one. `resume` then continues the search: Ray restores the searcher ("restored"),
    # or, when Ray's state files were emptied (a full disk), a new searcher is told what finished in MLflow and
    # runs the unfinished trials first ("emptied"). Either way: exactly num_samples trials, one run each.
    # epochs of 1,500 examples (about a second each here): an unfinished trial with a checkpoint lasts long enough
    # for the loop below to see it
    search = """  num_samples: 8
  set: {subset: 1500}
  space:
    lr: {loguniform: [0.002, 0.3]}
    momentum: {uniform: [0.0, 0.9]}
  objective: {metric: pgd_ratio_eps0.03, mode: max}
  constraints: ["clean_acc >= 0.5"]
  scheduler: {asha: {grace_period: 1, reduction_factor: 2}}"""
    path = _file(tmp_path, search, root=mnist_root, name="searched", uri=mlflow_uri, epochs=3)
    experiment_dir = tmp_path / "ray_results" / "searched"
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "TUNE_GLOBAL_CHECKPOINT_S": "1",
           "PYTHONUNBUFFERED": "1", "ROBUSTSWEEP_SEARCH_PROGRESS_S": "0"}
    log = open(tmp_path / "driver.log", "w")
    resume = [BIN / "robustsweep", "resume", "searched", "--storage-path", str(tmp_path / "ray_results"),
              "--verbose", "0"]
    # The trial seen unfinished may end (ASHA stops it at a report) in the moment between the look and the kill: then
    # nothing is left to continue from a checkpoint, so the search is resumed and killed again, as a user might.
    for command in ([BIN / "robustsweep", "launch", str(path), "--verbose", "0"], resume, resume):
        driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.time() + 400
            while time.time() < deadline and driver.poll() is None and not _resumable(mlflow_uri, experiment_dir):
                time.sleep(0.3)
            assert driver.poll() is None and time.time() < deadline, \
                "the search ended, or never had two finished trials and an unfinished one, before the kill: " \
                + (tmp_path / "driver.log").read_text()[-3000:]
        finally:
            _kill_session(driver)
        if _resumable(mlflow_uri, experiment_dir):
            break
    else:
        pytest.fail("each of three kills came as the unfinished trial ended")
    client, runs = _runs(mlflow_uri, "searched")
    before = {r.data.tags["trial_id"]: r for r in runs if r.info.status == "FINISHED"}
    before_history = {t: client.get_metric_history(r.info.run_id, "train_loss") for t, r in before.items()}
    assert 2 <= len(before) < 8
    if ray_state == "emptied":
        for name in ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl"):
            for state in experiment_dir.glob(name):
                state.write_bytes(b"")

    resumed = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    both = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, both[-4000:]
    if ray_state == "restored":
        assert "cannot be read" not in both, "a sound search state was set aside"
    else:
        assert "cannot be read" in both and "told to the searcher, not run again" in both, both[-4000:]
    # the driver's progress line counts the whole search: the trials that finished before the kill too (a new
    # searcher's Tuner holds only the samples left)
    assert "robustsweep: 8/8 trials done" in resumed.stderr, resumed.stderr[-3000:]

    client, runs = _runs(mlflow_uri, "searched")
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["trial_id"], []).append(run)
    assert len(by_trial) == 8, sorted(by_trial)  # exactly num_samples trials, never more
    outcomes = {}
    for trial_id, mine in by_trial.items():
        assert len(mine) == 1, f"{trial_id}: {len(mine)} MLflow runs"
        (run,) = mine
        assert run.info.status == "FINISHED" and run.data.tags["group"] == "search"
        outcome = outcomes[trial_id] = run.data.tags["outcome"]
        assert outcome in ("finished", "pruned", "collapsed")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == sorted(set(steps)), (trial_id, steps)  # each epoch logged once
        if outcome == "pruned":
            assert len(steps) == int(run.data.tags["pruned_epoch"]) < 3 and "clean_acc" not in run.data.metrics
        else:
            assert steps == [1, 2, 3] and "pgd_ratio_eps0.03" in run.data.metrics
    # ASHA ran: with 8 trials and halving at epochs 1 and 2, some trial trails the others' median and is stopped
    assert "pruned" in outcomes.values(), outcomes
    for trial_id, run in before.items():
        (after,) = by_trial[trial_id]
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert after.info.start_time == run.info.start_time and "resumed_from_epoch" not in after.data.tags \
            and after.data.tags["outcome"] == run.data.tags["outcome"] \
            and history == [(m.step, m.value) for m in before_history[trial_id]], "a finished trial was run again"
        if run.data.tags["outcome"] != "pruned":
            # (a pruned run's end may be written twice: by the trial as Tune stops it and by the driver's safety
            # net, the later one by a trial process that outlived the driver's kill by a moment)
            assert after.info.end_time == run.info.end_time, "a finished trial was run again"
    # the trial Ray had a checkpoint of went on from it, into its own run
    assert any(int(mine[0].data.tags.get("resumed_from_epoch", 0)) >= 1 for mine in by_trial.values()), \
        both[-4000:] + str({t: mine[0].data.tags for t, mine in by_trial.items() if t not in before})

    audit = subprocess.run([BIN / "robustsweep", "audit", "searched", "--storage-path", str(tmp_path / "ray_results"),
                            "--complete"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0 and "audit: OK" in audit.stdout, audit.stdout + audit.stderr
    assert "search search: 8 of num_samples 8 trials sampled" in audit.stdout

    from robustsweep.runs import status

    st = status("searched", str(tmp_path / "ray_results"))
    assert st.total == 8 and st.counts["pending"] == st.counts["running"] == st.counts["interrupted"] == 0
    assert st.counts["finished"] + st.counts["pruned"] + st.counts["collapsed"] == 8

    from robustsweep.report import make_report

    report = make_report("searched", tmp_path / "report", storage_path=str(tmp_path / "ray_results"))
    page = report.index.read_text()
    assert "Search search: the best trial" in page and "Best trial (meets the constraints)" in page
    summary = search_summary(load_sweep(path).search, {t: r for t, r in by_trial.items()})
    assert sum(summary["trials"].values()) == 8 and len(summary["best"]) <= 1
    _check_parent(client, "searched", summary, by_trial)
    # the parent followed the search as its trials ended (the driver's callback), not only at the driver's end:
    # the launch was killed, so one summary is the resume's end, the others came as trials ended
    (parent,) = _parents(client, "searched")
    history = client.get_metric_history(parent.info.run_id, "trials_total")
    assert len(history) >= 3 and {m.value for m in history} == {8}, history
    best = client.get_metric_history(parent.info.run_id, "best_pgd_ratio_eps0.03")
    if summary["best"]:  # logged as each trial ended once there was one, and at the end
        assert len(best) >= 2 and [m.step for m in best] == sorted(m.step for m in best), best


def _parents(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.kind = 'sweep'")


def _check_parent(client, experiment, summary, by_trial):
    """The sweep's parent run counts the search's samples, records its space and best trial(s) (issue 24), and
    every trial's run is nested under it."""
    (parent,) = _parents(client, experiment)
    metrics, total = parent.data.metrics, sum(summary["trials"].values())
    assert parent.info.status == "FINISHED" and metrics["trials_total"] == total and metrics["trials_pending"] == 0
    assert sum(metrics.get(f"trials_{o}", 0) for o in ("finished", "pruned", "collapsed", "diverged")) == total
    assert all(mine[0].data.tags["mlflow.parentRunId"] == parent.info.run_id for mine in by_trial.values())
    folder = client.download_artifacts(parent.info.run_id, "sweep/search.json")
    recorded = json.loads(Path(folder).read_text())
    assert recorded["search"]["space"] == summary["search"]["space"] and recorded["best"] == summary["best"]
    assert parent.data.tags["search_best"] == (", ".join(b["trial_id"] for b in summary["best"]) or "none yet")


@pytest.mark.slow
def test_a_random_two_objective_search_runs_and_its_report_draws_the_front(tmp_path, mnist_root, mlflow_uri):
    search = """  algorithm: random
  num_samples: 3
  searcher_seed: 1
  space:
    lr: {loguniform: [0.01, 0.3]}
  objective: [{metric: clean_acc, mode: max}, {metric: pgd_ratio_eps0.03, mode: max}]"""
    path = _file(tmp_path, search, root=mnist_root, name="pareto", uri=mlflow_uri, epochs=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    launched = subprocess.run([BIN / "robustsweep", "launch", str(path), "--verbose", "0"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, (launched.stdout + launched.stderr)[-3000:]
    client, runs = _runs(mlflow_uri, "pareto")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.params["lr"] for r in runs}) == 3
    report = subprocess.run([BIN / "robustsweep", "report", str(path), "--out", str(tmp_path / "report")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "search_pareto.png").stat().st_size > 1000
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Non-dominated trials (the Pareto front" in page
    assert "](search_pareto.png)" in (tmp_path / "report" / "tables.md").read_text()  # tables.md shows it too
    by_trial = {r.data.tags["trial_id"]: [r] for r in runs}
    summary = search_summary(load_sweep(path).search, by_trial)
    assert summary["best"], "no trial on the front"
    _check_parent(client, "pareto", summary, by_trial)


def test_asha_never_stops_a_trial_at_its_last_epoch_but_still_prunes_before_it(tmp_path):
    # After a resume ASHA's rungs are empty (Ray saves the scheduler as it was at launch), so it may first hear
    # of a trial restored from its checkpoint at the trial's last epoch: Ray's ASHA would compare it at a rung
    # and stop it with only its measurements left. A trial that stops early (stop_train_acc) says so too.
    from ray.tune.schedulers import TrialScheduler

    from robustsweep.search import PLANNED_EPOCHS, make_scheduler

    search = load_sweep(_file(tmp_path, GOOD)).search  # 3 epochs, grace period 1, reduction factor 2
    scheduler = make_scheduler(search)

    class FakeTrial:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    good, restored, poor = FakeTrial("good"), FakeTrial("restored"), FakeTrial("poor")
    for trial in (good, restored, poor):
        scheduler.on_trial_add(None, trial)
    for epoch in (1, 2):
        assert scheduler.on_trial_result(None, good, {"epoch": epoch, "test_acc": 0.9, PLANNED_EPOCHS: 3}) \
            == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, restored, {"epoch": 3, "test_acc": 0.1, PLANNED_EPOCHS: 3}) \
        == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, poor, {"epoch": 2, "test_acc": 0.1, PLANNED_EPOCHS: 3}) \
        == TrialScheduler.STOP
    early = FakeTrial("early")  # its training ends at epoch 2, below the search's 3
    scheduler.on_trial_add(None, early)
    assert scheduler.on_trial_result(None, early, {"epoch": 2, "test_acc": 0.1, PLANNED_EPOCHS: 2}) \
        == TrialScheduler.CONTINUE


def test_the_searchs_tune_callbacks_and_scheduler_pickle_by_name(tmp_path):
    # Ray saves them with the Tuner: by name (plain pickle can), a resumed search runs today's code, not the
    # launch's copy
    from robustsweep.search import make_scheduler
    from robustsweep.tune_extensions import PrunedRuns, SearchProgress

    search = load_sweep(_file(tmp_path, GOOD)).search
    progress = SearchProgress("sqlite:///x.db", "e", "s", search, every_s=5)
    for thing in (PrunedRuns(), progress, make_scheduler(search)):
        data = pickle.dumps(thing)
        assert type(pickle.loads(data)) is type(thing) and b"robustsweep.tune_extensions" in data
    assert pickle.loads(pickle.dumps(progress)).search == search
